"""Pack / unpack of a model over 2 GB (ONNX external data): seconds and peak RSS.

Writes a chain of 4 MatMuls with 12000 x 12000 float32 weights (4 x 576 MB = 2.3 GB in
``model.onnx.data``, half the weights zero, the rest from a 256-value codebook) tensor by
tensor (tests/big_models.py), then runs, each in a child process of its own,

* ``compressor pack model.onnx -o m.cmpz``
* ``compressor unpack m.cmpz -o u.onnx --verify`` (ONNX with external data, checked by SHA-256)
* ``compressor quantize model.onnx -o q.onnx`` and ``compressor run model.onnx -o r.cmpz``
  (data-free: the model held in memory, never serialized whole; q.onnx has external data)
* with ``--calib N``: the same two with ``--calib`` of N random inputs (``quantize_calib``,
  ``run_calib``: static activations, calibrated in ORT sessions of the model)
* with ``--inspect``: ``compressor inspect model.onnx``

and reports wall seconds and the child's peak RSS (``resource.getrusage(RUSAGE_CHILDREN)``
read by a wrapper process around each command, so each step is measured alone).  Results
in benchmarks/results/big.json (with ``--only A,B``: big-A-B.json).  Needs ~5 GB of disk in
``--dir`` (deleted at the end; ~8 GB with quantize and run).

    python benchmarks/bench_big.py [--dir FOLDER] [--layers 4] [--width 12000] [--inspect] [--calib N]
                                   [--only pack,unpack]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from big_models import write_external_model  # noqa: E402


def measured(cmd: list[str]) -> dict:
    """Run cmd in a wrapper child that reports the command's own peak RSS and seconds."""
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "start = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "seconds = time.perf_counter() - start\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'rc': p.returncode, 'seconds': seconds, 'peak_rss': peak,"
        " 'stdout': p.stdout[-2000:], 'stderr': p.stderr[-2000:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.environ.get("COMPRESSOR_BIG_TMP"), help="folder for the ~5 GB of files")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=12000)
    parser.add_argument("--inspect", action="store_true", help="also time `compressor inspect` of the model")
    parser.add_argument("--calib", type=int, default=0, help="also quantize and run with N calibration inputs")
    parser.add_argument("--only", default="", help="comma-separated steps to run (pack needs to run before unpack)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-big-", dir=args.dir))
    env_python = [sys.executable, "-m", "compressor"]
    results: dict = {"layers": args.layers, "width": args.width}
    try:
        start = time.perf_counter()
        model = write_external_model(folder, args.layers, args.width)
        results["generate_seconds"] = round(time.perf_counter() - start, 1)
        results["model_bytes"] = (folder / "model.onnx").stat().st_size + (folder / "model.onnx.data").stat().st_size
        results["largest_tensor_bytes"] = 4 * args.width * args.width
        steps = {
            "pack": [*env_python, "pack", str(model), "-o", str(folder / "m.cmpz")],
            "unpack": [*env_python, "unpack", str(folder / "m.cmpz"), "-o", str(folder / "u.onnx"), "--verify"],
            "quantize": [*env_python, "quantize", str(model), "-o", str(folder / "q.onnx")],
            "run": [*env_python, "run", str(model), "-o", str(folder / "r.cmpz")],
        }
        if args.calib:
            calib = folder / "calib.npz"
            rng = np.random.default_rng(0)
            np.savez(calib, h0=rng.standard_normal((args.calib, args.width)).astype(np.float32))
            steps["quantize_calib"] = [*steps["quantize"][:-1], str(folder / "qc.onnx"), "--calib", str(calib)]
            steps["run_calib"] = [*steps["run"][:-1], str(folder / "rc.cmpz"), "--calib", str(calib)]
        if args.inspect:
            steps["inspect"] = [*env_python, "inspect", str(model)]
        if args.only:
            steps = {name: cmd for name, cmd in steps.items() if name in args.only.split(",")}
        for name, cmd in steps.items():
            r = measured(cmd)
            results[name] = {
                "rc": r["rc"],
                "seconds": round(r["seconds"], 1),
                "peak_rss_mb": round(r["peak_rss"] / 2**20),
                "peak_over_largest_tensor": round(r["peak_rss"] / results["largest_tensor_bytes"], 2),
                "message": ""
                if name == "inspect"
                else ((r["stderr"] or r["stdout"]).strip().splitlines() or [""])[-1][:300],
            }
            if name == "pack":
                results["container_bytes"] = (folder / "m.cmpz").stat().st_size
            for output, key in (("q.onnx", "quantize"), ("qc.onnx", "quantize_calib")):
                if name == key and r["rc"] == 0:  # the graph file and its external data
                    results[name]["output_bytes"] = sum(p.stat().st_size for p in folder.glob(output + "*"))
            for output, key in (("r.cmpz", "run"), ("rc.cmpz", "run_calib")):
                if name == key and r["rc"] == 0:
                    results[name]["output_bytes"] = (folder / output).stat().st_size
            print(name, json.dumps(results[name]), flush=True)
        results["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = ROOT / "benchmarks" / "results" / ("big.json" if not args.only else f"big-{args.only.replace(',', '-')}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
