"""Benchmark of low-rank factorisation (issue 22): does it shrink the container within 1 point?

    python benchmarks/bench_lowrank.py                 # the bench zoo (mlp_pre, transformer, dwresnet) + lenet300/lenet5
    python benchmarks/bench_lowrank.py --models mlp_pre lenet300
    python benchmarks/bench_lowrank.py --no-run        # the lowrank pass alone (fast)

For each model with labeled test data and calibration inputs:

1. ``compressor lowrank --budget 1`` (the pass alone, on the original model): values of the
   matrix weights and of the model before/after, accuracy before/after, whole-model runs,
   seconds, and the ORT latency of the original and the factorised model (batch 1 and 64,
   median of repeats, one thread);
2. ``compressor run`` with the recipe's ``[lowrank] enabled = true`` against ``false``, each in
   its own process: container bytes, accuracy drop, seconds, peak RSS, and what the lowrank
   stage did (kept, or why not).

The zoo models come from benchmarks/.cache/zoo (``python benchmarks/zoo.py`` trains them; a
model missing from the cache is skipped).  Writes benchmarks/results/lowrank.json and
lowrank.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnx  # noqa: E402
from common import machine_info  # noqa: E402  (puts the repository on sys.path too)

from compressor.data import load_dataset  # noqa: E402
from compressor.evaluate import latency_ms, make_session  # noqa: E402
from compressor.search.lowrank_budget import lowrank_to_budget  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
ZOO = HERE / ".cache" / "zoo"
SAMPLES = ROOT / "sample_models"
MODELS = {
    "mlp_pre": ZOO / "mlp_pre.onnx",
    "transformer": ZOO / "transformer.onnx",
    "dwresnet": ZOO / "dwresnet.onnx",
    "lenet300": SAMPLES / "lenet300.onnx",
    "lenet5": SAMPLES / "lenet5.onnx",
}
BUDGET = 1.0
LATENCY_REPEATS = 30


def _files(model: Path) -> tuple[Path, Path]:
    stem = model.with_suffix("")
    return Path(f"{stem}_test.npz"), Path(f"{stem}_calib.npz")


def _one_thread_latency(model: onnx.ModelProto, data) -> dict:
    session = make_session(model, threads=1)
    return {
        "batch1_ms": latency_ms(session, data, 1, repeats=LATENCY_REPEATS),
        "batch64_ms": latency_ms(session, data, 64, repeats=LATENCY_REPEATS),
    }


def bench_pass(name: str, path: Path) -> dict:
    test_path, calib_path = _files(path)
    model = onnx.load(path)
    test, calib = load_dataset(str(test_path), model), load_dataset(str(calib_path), model)
    t0 = time.perf_counter()
    factored, stats = lowrank_to_budget(model, test, BUDGET, calib=calib)
    seconds = time.perf_counter() - t0
    budget = stats["budget"]
    totals = stats["totals"]
    return {
        "model": name,
        "budget_points": BUDGET,
        "matrix_params_before": totals["params_before"],
        "matrix_params_after": totals["params_after"],
        "model_params_before": totals["model_params_before"],
        "model_params_after": totals["model_params_after"],
        "accuracy_before": budget["baseline_accuracy"],
        "accuracy_after": budget["final"]["accuracy"],
        "drop_points": budget["final"]["drop"],
        "whole_model_runs": budget["whole_model_runs"],
        "capture_runs": stats["capture_runs"],
        "seconds": round(seconds, 2),
        "tensors": [{k: t[k] for k in ("name", "shape", "rank", "full_rank", "error")} for t in stats["tensors"]],
        "latency_original": _one_thread_latency(model, test),
        "latency_factored": _one_thread_latency(factored, test),
    }


def _run(path: Path, enabled: bool, folder: Path) -> dict:
    test_path, calib_path = _files(path)
    recipe = folder / f"lowrank_{enabled}.toml"
    recipe.write_text(f"[lowrank]\nenabled = {'true' if enabled else 'false'}\n")
    report = folder / f"{path.stem}_{enabled}.json"
    out = folder / f"{path.stem}_{enabled}.cmpz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "compressor", "run", str(path), "-o", str(out)]
    command += ["--data", str(test_path), "--calib", str(calib_path), "--report", str(report), "--recipe", str(recipe)]
    t0 = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, command)
    seconds = time.perf_counter() - t0
    r = json.loads(report.read_text())
    stages = r["stages"]
    row = next((s for s in stages if s["stage"] == "lowrank"), None)
    final = stages[-1]
    return {
        "container_bytes": r["container"]["bytes"] if r.get("container") else None,
        "accuracy": final.get("accuracy"),
        "drop_points": stages[0]["accuracy"] - final["accuracy"] if final.get("accuracy") is not None else None,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "lowrank_stage": None
        if row is None
        else {
            "applied": row["applied"],
            "note": row.get("note"),
            "packed_bytes": row.get("packed_bytes"),
            "setting": row.get("setting"),
        },
        "stages": [
            {"stage": s["stage"], "applied": s["applied"], "packed_bytes": s.get("packed_bytes")} for s in stages
        ],
    }


def bench_run(name: str, path: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        off = _run(path, False, Path(tmp))
        on = _run(path, True, Path(tmp))
    gain = None
    if off["container_bytes"] and on["container_bytes"]:
        gain = 1 - on["container_bytes"] / off["container_bytes"]
    return {"model": name, "disabled": off, "enabled": on, "container_gain": gain}


def _markdown(result: dict) -> str:
    lines = ["# Low-rank factorisation (benchmarks/bench_lowrank.py)", ""]
    lines += [
        f"Budget {BUDGET:g} point(s) of accuracy on each model's labeled test set; calibration inputs for the",
        "covariances.  Latency: ORT, one thread, median of 30 runs.  Generated; do not edit.",
        "",
    ]
    if result["pass"]:
        lines += ["## `compressor lowrank --budget 1` (the pass alone)", ""]
        lines += [
            "| model | model values | matrix values | accuracy % | drop | runs | s | ORT b1 ms | ORT b64 ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in result["pass"]:
            lo, lf = p["latency_original"], p["latency_factored"]
            lines.append(
                f"| {p['model']} | {p['model_params_before']:,} -> {p['model_params_after']:,} "
                f"| {p['matrix_params_before']:,} -> {p['matrix_params_after']:,} "
                f"| {p['accuracy_before']:.2f} -> {p['accuracy_after']:.2f} | {p['drop_points']:.2f} "
                f"| {p['whole_model_runs']} | {p['seconds']:.1f} "
                f"| {lo['batch1_ms']:.3f} -> {lf['batch1_ms']:.3f} | {lo['batch64_ms']:.3f} -> {lf['batch64_ms']:.3f} |"
            )
        lines.append("")
    if result["run"]:
        lines += ["## `compressor run`: the lowrank stage enabled vs disabled", ""]
        lines += [
            "| model | container off | container on | gain | drop off | drop on | s off / on | lowrank stage |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result["run"]:
            off, on = r["disabled"], r["enabled"]
            stage = on["lowrank_stage"] or {}
            what = "kept" if stage.get("applied") else f"not kept: {stage.get('note', '')}"
            gain = f"{100 * r['container_gain']:.1f} %" if r["container_gain"] is not None else "-"
            lines.append(
                f"| {r['model']} | {off['container_bytes']:,} | {on['container_bytes']:,} | {gain} "
                f"| {off['drop_points']:.2f} | {on['drop_points']:.2f} | {off['seconds']:.0f} / {on['seconds']:.0f} "
                f"| {what} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-run", action="store_true", help="Only the lowrank pass, not `run` on/off.")
    args = parser.parse_args()
    result = {"machine": machine_info(), "budget_points": BUDGET, "pass": [], "run": []}
    for name in args.models:
        path = MODELS[name]
        if not path.exists() or not all(f.exists() for f in _files(path)):
            print(f"{name}: not found ({path}); run `python benchmarks/zoo.py` first", file=sys.stderr)
            continue
        print(f"{name}: lowrank --budget {BUDGET:g}", file=sys.stderr)
        result["pass"].append(bench_pass(name, path))
        if not args.no_run:
            print(f"{name}: run, lowrank off / on", file=sys.stderr)
            result["run"].append(bench_run(name, path))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lowrank.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "lowrank.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
