"""Where a `compressor run` spends its time and its ONNX Runtime work, per stage.

    PYTHONPATH=$PWD python benchmarks/bench_runspeed.py NAME [NAME ...] [--out DIR]

For each real model (benchmarks/real.py's, /work/real or $REAL_DIR) one `run` with the options
real.py gives it, in this process, with every stage wrapped to count the ORT sessions built,
the ORT runs (batches) executed, the layer-input captures made (runs over the data that
accumulate covariances) and the seconds.  Writes DIR/NAME.runspeed.json (the counts, the
container's bytes) and prints a table; DIR/NAME.cmpz + .report.json are the run's own.
Score the container with `benchmarks/real.py score NAME unpacked.onnx` after `compressor unpack`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from compressor import evaluate
from compressor.passes import compensate, lowrank, share
from compressor.passes import layers as layers_module
from compressor.pipeline import run_pipeline
from compressor.search import layer_error
from compressor.stages import STAGES
from compressor.stages import share as share_stage

REAL_DIR = Path(os.environ.get("REAL_DIR", "/work/real"))
COUNTS = {"captures": 0}


def _counting_captures():
    original = layers_module.accumulate_inputs

    def counted(*args, **kwargs):
        COUNTS["captures"] += 1
        return original(*args, **kwargs)

    # The callers import the function by name: patch where they look it up.
    for module in (layers_module, layer_error, compensate, lowrank, share):
        if getattr(module, "accumulate_inputs", None) is original:
            module.accumulate_inputs = counted


def _snapshot() -> dict:
    return {**evaluate.ort_counts(), **COUNTS, "t": time.perf_counter()}


def _delta(before: dict, after: dict) -> dict:
    return {
        "seconds": round(after["t"] - before["t"], 2),
        "sessions": after["sessions"] - before["sessions"],
        "ort_runs": after["runs"] - before["runs"],
        "captures": after["captures"] - before["captures"],
    }


def measure(name: str, out: Path) -> dict:
    per_stage: dict[str, dict] = {}
    for stage in STAGES:
        if getattr(stage, "_runspeed_wrapped", False):
            continue
        original = stage.run

        def wrapped(opts, ctx, original=original, stage=stage):
            before = _snapshot()
            try:
                return original(opts, ctx)
            finally:
                row = per_stage.setdefault(stage.NAME, {"seconds": 0.0, "sessions": 0, "ort_runs": 0, "captures": 0})
                for k, v in _delta(before, _snapshot()).items():
                    row[k] = round(row[k] + v, 2)

        stage.run = wrapped
        stage._runspeed_wrapped = True
    per_stage.clear()
    container, report_path = out / f"{name}.cmpz", out / f"{name}.report.json"
    start = _snapshot()
    report = run_pipeline(
        str(REAL_DIR / f"{name}.onnx"),
        str(container),
        calib_path=str(REAL_DIR / "data" / f"{name}_calib.npz"),
        report_path=str(report_path),
    )
    total = _delta(start, _snapshot())
    result = {
        "model": name,
        "total": total,
        "stages": per_stage,
        "report_stage_seconds": {r["stage"]: r["seconds"] for r in report["stages"]},
        "container_bytes": report["container"]["bytes"],
        "prune_search": report.get("prune_search"),
        "share_search": report.get("share_search"),
        "applied": report.get("applied"),
        "packs": report.get("packs"),
        # the process's peak so far (one model per process for a clean number)
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    (out / f"{name}.runspeed.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--out", default="/tmp/runspeed")
    ap.add_argument(
        "--reuse-pruned-inputs",
        action="store_true",
        help="share's search takes prune's covariances even after pruning (stages.share.REUSE_PRUNED_INPUTS)",
    )
    args = ap.parse_args(argv)
    if args.reuse_pruned_inputs:
        share_stage.REUSE_PRUNED_INPUTS = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _counting_captures()
    for name in args.names:
        r = measure(name, out)
        t = r["total"]
        print(
            f"{name}: {t['seconds']:.1f} s, {t['sessions']} sessions, {t['ort_runs']} ORT runs, "
            f"{t['captures']} captures, {r['container_bytes']:,} bytes, peak RSS {r['peak_rss_mb']} MB"
        )
        for stage, row in r["stages"].items():
            print(
                f"  {stage:10s} {row['seconds']:7.1f} s  {row['sessions']:4d} sessions  "
                f"{row['ort_runs']:5d} runs  {row['captures']} captures"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
