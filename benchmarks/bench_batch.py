"""`compressor batch` on one box (`--jobs 2`, local processes) against a Dask cluster
(`--scheduler`, a LocalCluster of 2 single-threaded worker processes) on the same small zoo.

The zoo: the two sample models, twice each (four models), each with the first `--samples` test
samples beside it.  Each batch is one `python -m compressor batch` process, timed from start to
exit; the cluster is started before it (its start-up is timed apart: a cluster is long-lived).
CPU is the user+sys time of every process that ran (getrusage of the reaped children, so the
cluster's workers count once it is closed).  The containers of the two runs must be identical.

    python benchmarks/bench_batch.py [--samples 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _zoo(folder: Path, samples: int) -> Path:
    zoo = folder / "zoo"
    zoo.mkdir()
    for sample in ("lenet300", "lenet5"):
        with np.load(SAMPLES / f"{sample}_test.npz") as full:
            subset = {key: full[key][:samples] for key in full.files}
        for copy in ("a", "b"):
            shutil.copy(SAMPLES / f"{sample}.onnx", zoo / f"{sample}_{copy}.onnx")
            np.savez(zoo / f"{sample}_{copy}_test.npz", **subset)
    return zoo


def _batch(zoo: Path, out: Path, *options: str) -> tuple[float, float]:
    cpu, start = _cpu_children(), time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run(
        [sys.executable, "-m", "compressor", "batch", str(zoo), "-o", str(out), "-q", *options], env=env, check=True
    )
    return time.perf_counter() - start, _cpu_children() - cpu


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.cmpz"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    import distributed  # the dask extra

    with tempfile.TemporaryDirectory() as folder:
        zoo = _zoo(Path(folder), args.samples)
        local_wall, local_cpu = _batch(zoo, Path(folder) / "local", "--jobs", "2")
        print(f"local --jobs 2:        {local_wall:6.1f} s wall, {local_cpu:6.1f} s CPU")
        cpu, start = _cpu_children(), time.perf_counter()
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
        print(f"LocalCluster start:    {time.perf_counter() - start:6.1f} s wall")
        with cluster:
            dask_wall, _ = _batch(zoo, Path(folder) / "dask", "--scheduler", cluster.scheduler_address)
        dask_cpu = _cpu_children() - cpu
        print(f"--scheduler (2 workers): {dask_wall:4.1f} s wall, {dask_cpu:6.1f} s CPU (with the cluster's)")
        same = _digests(Path(folder) / "local") == _digests(Path(folder) / "dask")
        print(f"containers identical: {same} ({len(_digests(Path(folder) / 'local'))} models)")


if __name__ == "__main__":
    main()
