"""The prune stage: a fixed sparsity as asked, or the sensitivity-guided search within a share
of the budget, backing off to half and a quarter of it (or, when the search ran on a subset of
the data, to the ratios it found scaled down)."""

from __future__ import annotations

import re

import numpy as np
import onnx

from ..data import Dataset
from ..measure import Measure
from ..options import PruneOptions
from ..passes.compensate import Compensator
from ..passes.prune import prunable_weights, prune, prune_with_ratios
from ..search.prune_budget import prune_to_budget
from ..search.sensitivity import BUDGET_RATIOS
from .ladder import MIN_SEARCH_SAMPLES, Attempt, Ladder, StageContext, StageResult, run_ladder

NAME = "prune"

# Share of the accuracy budget that pruning may spend on its own; share and quantize get the
# rest.  Below half: the k-means search buys more bytes per point than the last tenths of
# pruning do (see benchmarks/README.md).
PRUNE_BUDGET_SHARE = 0.45
# Evaluations the budget search may make with the full and with the coarse sensitivity ladder.
FULL_SEARCH_EVALS = 40
COARSE_SEARCH_EVALS = 20
# Coarser sensitivity ladder for models where the full one would take too long.
COARSE_RATIOS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
# When a search on a subset overshoots on all the data: the same per-tensor ratios, scaled down.
SUBSET_FALLBACK_SCALES = (0.75, 0.5, 0.25)


def run(opts: PruneOptions, ctx: StageContext) -> StageResult:
    model = ctx.model
    common = dict(exclude=opts.exclude, min_params=opts.min_params, seed=opts.seed)
    if opts.sparsity is not None:
        fixed = Attempt(
            f"{opts.scope} sparsity {opts.sparsity:g}",
            lambda: prune(model, opts.sparsity, scope=opts.scope, **common),
        )
        return run_ladder(Ladder(NAME, [fixed], adaptive=False), ctx)
    if ctx.eval_data is None:
        return ctx.skipped(NAME, "skipped: pruning needs data to choose ratios")
    return run_ladder(Ladder(NAME, _search_attempts(opts, ctx), adaptive=True), ctx)


def _search_attempts(opts: PruneOptions, ctx: StageContext) -> list[Attempt]:
    model, measure, eval_data, log = ctx.model, ctx.measure, ctx.eval_data, ctx.log
    prune_budget = opts.budget if opts.budget is not None else measure.budget * PRUNE_BUDGET_SHARE
    # Noise powers of independent stages add up: giving pruning the same share of the noise
    # allowance raises its SNR floor by 10*log10(1/share) dB.
    prune_snr = measure.min_snr_db + 10 * np.log10(1 / PRUNE_BUDGET_SHARE) if measure.snr_gated else None
    search_data, ratios, max_evals, plan_note, search_exclude = search_plan(model, opts, measure, eval_data)
    if plan_note:
        log(f"prune: {plan_note}")
    # The search runs on `search_data`; the ladder then measures the result on all the data.
    # If that overshoots (a subset, or noise), the search is rerun with a smaller budget,
    # reusing the sensitivity curves, which are the expensive part.
    curves: dict = {}
    # Data-aware error compensation (recipe prune.compensate): the kept weights refit on the
    # calibration inputs, in the search and in the result (see passes/compensate.py).
    compensator = None
    calib_data = ctx.calib_data
    if opts.compensate and calib_data is not None:
        compensator = Compensator(model, prunable_weights(model, search_exclude, opts.min_params)[0], calib_data)
        if compensator.layers:
            log(
                f"prune: kept weights refit on {calib_data.size} calibration samples ({len(compensator.layers)} tensors)"
            )
    # A log that can draw a bar (the CLI's, on a terminal) gets the curves' progress.
    step = getattr(log, "step", None)
    progress = (lambda done, total: step("prune: sensitivity curves", done, total)) if step else None

    def searched(points: float) -> tuple[onnx.ModelProto, dict]:
        # The input's outputs, measured already, when the search runs on the verdict's data.
        reference = ctx.outputs if search_data is measure.data else None
        pruned, stats = prune_to_budget(
            model,
            search_data,
            points,
            min_snr_db=prune_snr,
            ratios=ratios,
            max_evals=max_evals,
            sensitivity_stats=curves.get("stats"),
            exclude=search_exclude,
            min_params=opts.min_params,
            seed=opts.seed,
            progress=progress,
            reference_outputs=reference,
            compensate=compensator,
        )
        curves["stats"] = stats.get("sensitivity")
        if plan_note:
            stats["search_plan"] = plan_note
        return pruned, stats

    if search_data is measure.data:
        return [
            Attempt(f"sensitivity-guided, budget {b:g} points", lambda b=b: searched(b))
            for b in (prune_budget, prune_budget / 2, prune_budget / 4)
        ]
    # On a subset (or on samples held out from the verdict) one sample is worth 100/n points, so
    # a halved budget usually allows the same number of errors and finds the same ratios.  The
    # fallbacks scale the ratios found instead: less pruning everywhere, with no further search.
    found: dict = {}

    def first() -> tuple[onnx.ModelProto, dict]:
        pruned, stats = searched(prune_budget)
        found["ratios"] = stats.get("budget", {}).get("ratios", {})
        return pruned, stats

    def scaled(factor: float) -> tuple[onnx.ModelProto, dict]:
        if "ratios" not in found:
            return searched(prune_budget / 4)
        ratios_scaled = {name: ratio * factor for name, ratio in found["ratios"].items()}
        pruned, stats = prune_with_ratios(model, ratios_scaled, search_exclude, opts.min_params, compensate=compensator)
        stats["search_plan"] = plan_note
        return pruned, stats

    attempts = [Attempt(f"sensitivity-guided, budget {prune_budget:g} points", first)]
    attempts += [Attempt(f"the ratios found x {f:g}", lambda f=f: scaled(f)) for f in SUBSET_FALLBACK_SCALES]
    return attempts


def search_plan(model: onnx.ModelProto, opts: PruneOptions, measure: Measure, eval_data: Dataset):
    """Fit the pruning search (sensitivity curves + budget search) into prune.max_seconds.

    The search costs about (tensors x ratios + evaluations) runs over the data, one run costing
    the judge's ``eval_cost`` (nominal seconds, counted from the model and the samples: the same
    plan on any machine under any load).  Only a user's prune.time_limit sizes it on the clock
    (the measured time of the original's run) instead.  When the estimate exceeds the allowance
    the ladder gets coarser, then the search uses an evenly spread subset of the data (never
    below MIN_SEARCH_SAMPLES).  Returns (search data, ratios or None for the full ladder,
    evaluations, a note for the report, the exclude pattern of the search).
    """
    selected, _ = prunable_weights(model, opts.exclude, opts.min_params)
    if opts.time_limit is not None:
        allowance, run_seconds = opts.time_limit, measure.eval_seconds
        limit, unit = f"prune.time_limit {allowance:g} s", " s (measured)"
    else:
        allowance, run_seconds = opts.max_seconds, measure.eval_cost
        limit, unit = f"max_seconds {allowance:g}", " nominal s"
    per_sample = run_seconds / max(eval_data.size, 1)

    def estimate(ratios, evals, samples):
        return (len(selected) * len(ratios) + evals) * per_sample * samples

    ratios, evals, samples = BUDGET_RATIOS, FULL_SEARCH_EVALS, eval_data.size
    if estimate(ratios, evals, samples) <= allowance:
        return eval_data, None, evals, "", opts.exclude
    ratios, evals = COARSE_RATIOS, COARSE_SEARCH_EVALS
    samples = min(eval_data.size, max(MIN_SEARCH_SAMPLES, int(allowance / max(estimate(ratios, evals, 1), 1e-9))))
    full_estimate = estimate(BUDGET_RATIOS, FULL_SEARCH_EVALS, eval_data.size)
    note = (
        f"{len(selected)} tensors; full search estimated at {full_estimate:.0f}{unit} > "
        f"{limit}: coarse ladder, {samples} of {eval_data.size} samples for the search"
    )
    exclude = opts.exclude
    if estimate(ratios, evals, samples) > allowance:
        # Still too slow: probe only the largest tensors (they hold most of the zeros to win);
        # the others are left unpruned.
        per_tensor = len(ratios) * per_sample * samples
        keep = max(1, int((allowance - evals * per_sample * samples) / per_tensor))
        by_size = sorted(selected, key=lambda w: (-w.size, w.name))
        left_out = sorted(w.name for w in by_size[keep:])
        if left_out:
            names = "|".join(re.escape(n) for n in left_out)
            exclude = f"(?:{exclude})|^(?:{names})$" if exclude else f"^(?:{names})$"
            share = sum(w.size for w in by_size[:keep]) / max(sum(w.size for w in selected), 1)
            note += f", only the {keep} largest tensors ({100 * share:.0f} % of the prunable weights)"
    note += f" (estimated {estimate(ratios, evals, samples) if exclude == opts.exclude else allowance:.3g}{unit})"
    if opts.time_limit is not None:
        note += "; cut by the user's time limit, so the plan depends on this machine's speed and load"
    if samples >= eval_data.size:
        return eval_data, ratios, evals, note, exclude
    step = eval_data.size / samples
    index = (np.arange(samples) * step).astype(np.int64)
    return eval_data.select(index), ratios, evals, note, exclude
