"""The structured pruning budget search: the largest global channel ratio within a measured loss.

The importance ranking (``passes.structured``) orders the channels once; the only free number
is the global ratio.  A bisection over it builds each candidate (channels removed) and has the
judge (``compressor.measure``) measure it: at most ``max_evals`` whole-model runs, each
candidate a different number of removed channels.  The largest ratio that fits is kept.
"""

from __future__ import annotations

import onnx

from ..data import Dataset
from ..measure import Judge
from ..passes.channel_plan import DEFAULT_ALIGN, DEFAULT_MAX_RATIO, group_cap
from ..passes.structured import Pruner, check_structured_options

DEFAULT_MAX_EVALS = 8


def _metrics_row(ratio: float, removed: int, metrics: dict) -> dict:
    return {
        "ratio": round(ratio, 6),
        "removed_channels": removed,
        "drop": metrics["drop"],
        "accuracy": metrics.get("accuracy"),
        "top1_agreement": metrics.get("top1_agreement"),
        "within_budget": metrics["within_budget"],
    }


def structured_to_budget(
    model: onnx.ModelProto,
    data: Dataset,
    budget: float,
    norm: str = "l2",
    max_ratio: float = DEFAULT_MAX_RATIO,
    exclude: str | None = None,
    max_evals: int = DEFAULT_MAX_EVALS,
    judge: Judge | None = None,
    calib: Dataset | None = None,
    align: int = DEFAULT_ALIGN,
    refit: bool = True,
    heads: bool = False,
    min_snr_db: float | None = None,
    pruner: Pruner | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Remove as many channels as the judge allows within `budget` points (bisection over the
    global ratio, at most `max_evals` candidates measured).  The channel statistics (ranking,
    means folded into biases) come from `calib`, else from `data`.  `min_snr_db`: an SNR floor
    as well (``Judge.fits``).  `pruner`: one built before for this model (the run's stage
    searches several budgets with one analysis and one capture)."""
    check_structured_options(0.0, max_ratio, norm)
    if judge is None:
        judge = Judge.of_model(model, data)
    runs_before = judge.runs
    if pruner is None:
        pruner = Pruner(
            model, calib if calib is not None else data, norm, max_ratio, exclude, align, refit=refit, heads=heads
        )
    groups = pruner.groups
    total = sum(g.size for g in groups)
    reachable = sum(group_cap(g.size, g.blocks, max_ratio) for g in groups) / total if total else 0.0
    trials: list[dict] = []
    seen: dict[int, tuple[dict, onnx.ModelProto, dict]] = {}

    def measure(ratio: float):
        keep = pruner.keep(ratio)
        removed = int(sum(pruner.analysis.groups[gid].size - len(k) for gid, k in keep.items()))
        if removed not in seen:
            candidate = pruner.build(keep)
            metrics = judge.measure_model(candidate)
            metrics["within_budget"] = judge.fits(metrics, budget, min_snr_db)
            seen[removed] = (metrics, candidate, keep)
            trials.append(_metrics_row(ratio, removed, metrics))
        return seen[removed]

    lo, hi = 0.0, reachable
    best_ratio, best = 0.0, None
    resolution = 1.0 / max(total, 1)
    evaluations = 0
    while groups and evaluations < max_evals and hi - lo > resolution:
        ratio = hi if evaluations == 0 else (lo + hi) / 2.0  # the cap first: often everything fits
        before = len(seen)
        metrics, candidate, keep = measure(ratio)
        evaluations += len(seen) - before
        if metrics["within_budget"]:
            lo, best_ratio, best = ratio, ratio, (metrics, candidate, keep)
            if ratio == hi:
                break
        else:
            hi = ratio
    if best is None:
        final_metrics, pruned, keep = dict(judge.baseline), pruner.build({}), {}
    else:
        final_metrics, pruned, keep = best
    stats = pruner.report(pruned, keep)
    stats["sparsity"] = round(best_ratio, 6)
    if best is not None and best_ratio >= reachable:
        stats["warnings"].append(
            f"every channel group is at its cap (--max-ratio {max_ratio:g}) within the budget: "
            "a larger --max-ratio may remove more"
        )
    stats["budget"] = {
        "budget_points": budget,
        "metric": judge.mode,
        "baseline": judge.baseline,
        "final": {k: final_metrics.get(k) for k in ("accuracy", "top1_agreement", "snr_db", "drop")},
        "evaluations": judge.runs - runs_before,
        "trials": sorted(trials, key=lambda t: t["ratio"]),
    }
    return pruned, stats
