"""Benchmark of structured pruning (`compressor prune --structured --budget 1 --data TEST`).

    python benchmarks/bench_structured.py                 # the zoo's CNN, MLP, transformer + LeNets
    python benchmarks/bench_structured.py --zoo DIR       # where dwresnet.onnx etc. are (default
                                                          # benchmarks/.cache/zoo, built by `make bench`)

For each model: the budget search (bisection over the global channel ratio, the judge on the
model's labeled test set), then params and MACs (batch 1) before and after, ONNX Runtime
latency at batch 64 (the same intra-op thread count for both, the two sessions measured in
alternating rounds, median over all runs), the accuracy drop on the test set, and the check
that the pruned graph gives the outputs of the original with the removed channels' weight
slices zeroed (max abs difference; the compensation, folded means and refit sinks, applied to
both).  "held-out drop": the same search on the first half of the test set, the drop measured on
the second half (the main row's drop is measured on the data the search chose by).  Writes benchmarks/results/structured.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402,F401  (puts the repository on sys.path too)

from compressor.data import load_dataset  # noqa: E402
from compressor.evaluate import accuracy, make_session, ort_counts, run_model  # noqa: E402
from compressor.graph import load_model  # noqa: E402
from compressor.passes.structured import Pruner, mask_channels  # noqa: E402
from compressor.search.structured_budget import structured_to_budget  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ZOO_MODELS = ("dwresnet", "mlp_pre", "transformer")
SAMPLE_MODELS = ("lenet5", "lenet300")
LATENCY_BATCH = 64
RUNS = 40  # per session, alternating run by run (load drifts hit both alike)
WARMUP = 5


def latency_alternating(sessions: list, feed: dict, runs: int = RUNS) -> list[float]:
    """Median ms per run of each session, the sessions run in turn (A B A B ...)."""
    times: list[list[float]] = [[] for _ in sessions]
    for s in sessions:
        for _ in range(WARMUP):
            s.run(None, feed)
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append((time.perf_counter() - t0) * 1000.0)
    return [float(statistics.median(t)) for t in times]


def bench_model(
    name: str, model_path: Path, budget: float, threads: int, refit: bool = True, heads: bool = False
) -> dict:
    model = load_model(model_path)
    data = load_dataset(model_path.with_name(f"{name}_test.npz"), model)
    calib = load_dataset(model_path.with_name(f"{name}_calib.npz"), model)
    counts0 = ort_counts()
    t0 = time.perf_counter()
    pruned, stats = structured_to_budget(model, data, budget, calib=calib, refit=refit, heads=heads)
    search_seconds = time.perf_counter() - t0
    counts1 = ort_counts()
    # Accuracy before/after on the whole test set, and removal == masking on a batch.
    ref_acc = accuracy(run_model(model, data)[0], data.labels)
    new_out = run_model(pruned, data)[0]
    new_acc = accuracy(new_out, data.labels)
    masked_diff = None
    kept = {int(k): np.asarray(v) for k, v in stats["kept_channels"].items()}
    if kept:
        # The same choice as zeros, on the model with the compensation (means, refit) applied.
        pruner = Pruner(model, calib, refit=refit, heads=heads)
        masked = mask_channels(pruner.prepared(kept), pruner.analysis, kept)
        sample = data.take(LATENCY_BATCH)
        masked_diff = float(np.max(np.abs(run_model(masked, sample)[0] - run_model(pruned, sample)[0])))
    # Selection bias check: the search on one half of the test set, the drop on the other.
    half = data.size // 2
    search_half, held_half = data.select(slice(0, half)), data.select(slice(half, None))
    pruned_half, _ = structured_to_budget(model, search_half, budget, calib=calib, refit=refit, heads=heads)
    held_drop = accuracy(run_model(model, held_half)[0], held_half.labels) - accuracy(
        run_model(pruned_half, held_half)[0], held_half.labels
    )
    idx = np.arange(LATENCY_BATCH) % data.size
    feed = {**data.constants, **{k: v[idx] for k, v in data.inputs.items()}}
    sessions = [make_session(model, threads=threads), make_session(pruned, threads=threads)]
    before_ms, after_ms = latency_alternating(sessions, feed)
    t = stats["totals"]
    return {
        "model": name + (" +heads" if heads else ""),
        "budget_points": budget,
        "groups": t["prunable_groups"],
        "channels": t["channels"],
        "removed_channels": t["removed_channels"],
        "untouchable_groups": len(stats["untouchable"]),
        "params_before": t["params_before"],
        "params_after": t["params_after"],
        "macs_before": t["macs_before"],
        "macs_after": t["macs_after"],
        "latency_ms_b64_before": round(before_ms, 3),
        "latency_ms_b64_after": round(after_ms, 3),
        "speedup": round(before_ms / after_ms, 3) if after_ms > 0 else None,
        "accuracy_before": round(ref_acc, 2),
        "accuracy_after": round(new_acc, 2),
        "accuracy_drop": round(ref_acc - new_acc, 2),
        "held_out_drop": round(held_drop, 2),
        "max_abs_diff_vs_masked": masked_diff,
        "search_candidates": stats["budget"]["evaluations"],
        "search_ort_runs": counts1["runs"] - counts0["runs"],
        "search_seconds": round(search_seconds, 2),
        "trials": stats["budget"]["trials"],
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Structured pruning within a budget",
        "",
        f"`prune --structured --budget {rows[0]['budget_points'] if rows else 1:g} --data <model>_test.npz`; latency: "
        f"ORT CPU, batch {LATENCY_BATCH}, {meta['threads']} intra-op thread(s), median of "
        f"{RUNS} runs per model, the two sessions alternating run by run; channel statistics from "
        f"<model>_calib.npz.  Machine: {meta['machine']['cpu']} "
        f"({meta['machine']['cpus']} cpus, shared).",
        "",
        "| model | channels removed | params | MACs (batch 1) | latency b64 ms | speedup | accuracy | drop | "
        "held-out drop | max diff vs masked | candidates | search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "-" if r["max_abs_diff_vs_masked"] is None else f"{r['max_abs_diff_vs_masked']:.1e}"
        lines.append(
            f"| {r['model']} | {r['removed_channels']}/{r['channels']} | {r['params_before']:,} -> {r['params_after']:,} "
            f"| {r['macs_before']:,} -> {r['macs_after']:,} | {r['latency_ms_b64_before']} -> "
            f"{r['latency_ms_b64_after']} | {r['speedup']}x | {r['accuracy_before']} -> {r['accuracy_after']} | "
            f"{r['accuracy_drop']} | {r['held_out_drop']} | {diff} | "
            f"{r['search_candidates']} | {r['search_seconds']} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "benchmarks" / ".cache" / "zoo")
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(ZOO_MODELS + SAMPLE_MODELS))
    parser.add_argument("--no-refit", action="store_true", help="Fold the removed means only (no least squares).")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        folder = args.zoo if name in ZOO_MODELS else ROOT / "sample_models"
        model_path = folder / f"{name}.onnx"
        if not model_path.exists():
            print(f"skipped {name}: no {model_path} (build the zoo with `make bench` first)", file=sys.stderr)
            continue
        for heads in (False, True) if name == "transformer" else (False,):
            row = bench_model(name, model_path, args.budget, args.threads, refit=not args.no_refit, heads=heads)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "trials"}), flush=True)
    meta = {
        "machine": common.machine_info(),
        "threads": args.threads,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "structured.json").write_text(json.dumps({"meta": meta, "models": rows}, indent=1) + "\n")
    (RESULTS / "structured.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
