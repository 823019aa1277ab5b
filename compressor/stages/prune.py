"""The prune stage: a fixed sparsity as asked, or the layer-error search (``prune_budget``)
within a share of the budget, backing off to half and a quarter of it."""

from __future__ import annotations

import numpy as np
import onnx

from ..data import Dataset
from ..measure import Judge, Measure
from ..options import PruneOptions
from ..passes.compensate import Compensator, one_blas_thread
from ..passes.prune import prunable_weights, prune, prune_with_ratios
from ..passes.selection import unique_names
from ..search.capture_reference import reference_from_capture
from ..search.layer_error import capture_layers, layer_curves
from ..search.prune_budget import MAX_SEARCH_RUNS, prune_to_budget
from ..search.sensitivity import BUDGET_RATIOS
from .ladder import Attempt, Ladder, StageContext, StageResult, run_ladder

NAME = "prune"

# When the search ran on samples held out from the verdict and overshoots on the verdict's: the
# same per-tensor ratios, scaled down.
SUBSET_FALLBACK_SCALES = (0.75, 0.5, 0.25)

# Share of the accuracy budget that pruning may spend on its own; share and quantize get the
# rest.  Below half: the k-means search buys more bytes per point than the last tenths of
# pruning do (see benchmarks/README.md).
PRUNE_BUDGET_SHARE = 0.45
# Fewest candidates the search measures whatever its allowance (below, no bisection is left).
MIN_SEARCH_RUNS = 3


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
    # The search's numpy work (covariances, error curves, refits) is many small or tall-skinny
    # products: on one BLAS thread it does not wait at OpenBLAS's barriers on a busy machine.
    with one_blas_thread():
        return run_ladder(Ladder(NAME, _search_attempts(opts, ctx), adaptive=True), ctx)


def _search_attempts(opts: PruneOptions, ctx: StageContext) -> list[Attempt]:
    model, measure, eval_data, log = ctx.model, ctx.measure, ctx.eval_data, ctx.log
    prune_budget = opts.budget if opts.budget is not None else measure.budget * PRUNE_BUDGET_SHARE
    # Noise powers of independent stages add up: giving pruning the same share of the noise
    # allowance raises its SNR floor by 10*log10(1/share) dB.
    prune_snr = measure.min_snr_db + 10 * np.log10(1 / PRUNE_BUDGET_SHARE) if measure.snr_gated else None
    max_evals, plan_note = search_plan(opts, measure)
    if plan_note:
        log(f"prune: {plan_note}")
    # The layer inputs' covariances come from the calibration data (the evaluation data without
    # it); the judge's verdicts from the evaluation data.
    calib_data = ctx.calib_data if ctx.calib_data is not None else eval_data
    # The ladder's fallbacks (smaller budgets) reuse the curves: no model run for them.
    cached: dict = {}

    def curves() -> dict:
        # In the first attempt (its time is the stage's): one capture run gives every layer's
        # input covariance, for the error curves and the refit.
        if "layer_errors" not in cached:
            selected = unique_names(*prunable_weights(model, opts.exclude, opts.min_params))
            kept = ctx.layer_inputs.layers(model, calib_data) if ctx.layer_inputs is not None else None
            # The search's reference on its samples, when they are calibration samples: from this run.
            reuse = ctx.layer_inputs is not None and eval_data is not measure.data
            outputs: list[list[np.ndarray]] | None = [] if reuse else None
            layers, reasons, captures = capture_layers(
                model, selected, calib_data, len(BUDGET_RATIOS), shared=kept, outputs=outputs
            )
            reference = reference_from_capture(model, outputs, calib_data, eval_data) if outputs else None
            if reference is not None:
                ctx.layer_inputs.keep_reference(model, eval_data, reference)
            if ctx.layer_inputs is not None:
                # for the share stage: the same covariances when pruning leaves the weights as they are
                ctx.layer_inputs.keep(model, calib_data, layers)
            # Data-aware error compensation (recipe prune.compensate): the kept weights refit on
            # the calibration inputs, in the search and in the result (see passes/compensate.py).
            compensator = None
            if opts.compensate and ctx.calib_data is not None:
                compensator = Compensator(model, selected, ctx.calib_data, captured=layers)
                if compensator.layers:
                    log(
                        f"prune: kept weights refit on {ctx.calib_data.size} calibration samples "
                        f"({len(compensator.layers)} tensors)"
                    )
            # A log that can draw a bar (the CLI's, on a terminal) gets the curves' progress.
            step = getattr(log, "step", None)
            progress = (lambda done, total: step("prune: layer errors", done, total)) if step else None
            found = layer_curves(selected, layers, reasons, BUDGET_RATIOS, compensator, progress)
            cached["compensator"] = compensator
            cached["layer_errors"] = {"ratios": list(BUDGET_RATIOS), "curves": found, "capture_runs": captures}
        return cached["layer_errors"]

    def searched(points: float) -> tuple[onnx.ModelProto, dict]:
        layer_errors = curves()
        # The input's outputs, measured already, when the search runs on the verdict's data.
        reference = ctx.outputs if eval_data is measure.data else None
        if reference is None and unique_names(*prunable_weights(model, opts.exclude, opts.min_params)):
            reference = search_reference(ctx, eval_data)  # what the search's judge would run (none: no search)
        pruned, stats = prune_to_budget(
            model,
            eval_data,
            points,
            min_snr_db=prune_snr,
            max_evals=max_evals,
            layer_errors=layer_errors,
            exclude=opts.exclude,
            min_params=opts.min_params,
            seed=opts.seed,
            reference_outputs=reference,
            compensate=cached["compensator"],
            calib=calib_data,
            gain_runs=opts.gain_runs,
            # Held out: the ladder's verdict measures the result on its own samples.
            verify=eval_data is measure.data,
        )
        stats["search_plan"] = "; ".join(filter(None, [_search_summary(stats), plan_note]))
        return _unless_unchanged(ctx, pruned, stats), stats

    if eval_data is measure.data:
        return [
            Attempt(f"layer-error allocation, budget {b:g} points", lambda b=b: searched(b))
            for b in (prune_budget, prune_budget / 2, prune_budget / 4)
        ]
    # On samples held out from the verdict one sample is worth 100/n points, so a halved budget
    # usually allows the same number of errors and finds the same ratios.  The fallbacks scale
    # the ratios found instead: less pruning everywhere, with no further search.
    found: dict = {}

    def first() -> tuple[onnx.ModelProto, dict]:
        pruned, stats = searched(prune_budget)
        found["ratios"] = stats.get("budget", {}).get("ratios", {})
        return pruned, stats

    def scaled(factor: float) -> tuple[onnx.ModelProto, dict]:
        if "ratios" not in found:
            return searched(prune_budget / 4)
        ratios_scaled = {name: ratio * factor for name, ratio in found["ratios"].items()}
        pruned, stats = prune_with_ratios(
            model, ratios_scaled, opts.exclude, opts.min_params, compensate=cached.get("compensator")
        )
        stats["search_plan"] = plan_note
        return _unless_unchanged(ctx, pruned, stats), stats

    attempts = [Attempt(f"layer-error allocation, budget {prune_budget:g} points", first)]
    attempts += [Attempt(f"the ratios found x {f:g}", lambda f=f: scaled(f)) for f in SUBSET_FALLBACK_SCALES]
    return attempts


def search_reference(ctx: StageContext, data: Dataset) -> list[np.ndarray]:
    """The stage input's outputs on the search's `data` (the search's judge's reference, as
    ``Judge.of_model`` runs it), kept for share's search: the same model when pruning changed nothing."""
    if ctx.layer_inputs is None:
        return Judge.of_model(ctx.model, data).reference_outputs
    kept = ctx.layer_inputs.reference(ctx.model, data)
    if kept is None:
        kept = Judge.of_model(ctx.model, data).reference_outputs
        ctx.layer_inputs.keep_reference(ctx.model, data, kept)
    return kept


def _unless_unchanged(ctx: StageContext, pruned: onnx.ModelProto, stats: dict) -> onnx.ModelProto:
    """The stage's input itself when the pass zeroed and refit nothing: the ladder then takes
    its outputs as measured, and the share stage the layers' covariances captured on it."""
    rows = stats.get("tensors", [])
    if all(r["zeros_after"] == r["zeros_before"] and not r.get("compensated") for r in rows):
        return ctx.model
    return pruned


def search_plan(opts: PruneOptions, measure: Measure) -> tuple[int, str]:
    """How many candidates the pruning search may measure within prune.max_seconds.

    One candidate costs one run over the evaluation data, the judge's ``eval_cost`` (nominal
    seconds, counted from the model and the samples: the same plan on any machine under any
    load); only a user's prune.time_limit counts the measured time of the original's run
    instead.  The layer error curves cost no model run, so neither the tensors nor the samples
    are ever cut; returns (candidates, a note for the report when the allowance cut them).
    """
    if opts.time_limit is not None:
        allowance, run_seconds = opts.time_limit, measure.eval_seconds
        limit, unit = f"prune.time_limit {allowance:g} s", " s (measured)"
    else:
        allowance, run_seconds = opts.max_seconds, measure.eval_cost
        limit, unit = f"max_seconds {allowance:g}", " nominal s"
    fits = int(allowance / max(run_seconds, 1e-12))
    evals = max(MIN_SEARCH_RUNS, min(MAX_SEARCH_RUNS, fits))
    if fits >= MAX_SEARCH_RUNS:
        return evals, ""
    note = f"one run {run_seconds:.3g}{unit}, {limit}: {evals} candidates measured (of up to {MAX_SEARCH_RUNS})"
    if opts.time_limit is not None:
        note += "; cut by the user's time limit, so the plan depends on this machine's speed and load"
    return evals, note


def _search_summary(stats: dict) -> str:
    """What the search measured, for the report: the curves' kind and the whole-model runs."""
    curves = stats.get("layer_errors", {}).get("curves", [])
    by_covariance = sum(c["method"] == "covariance" for c in curves)
    runs = stats.get("budget", {}).get("whole_model_runs", 0)
    captures = stats.get("layer_errors", {}).get("capture_runs", 0)
    others = ", the others by weight error" if by_covariance < len(curves) else ""
    return (
        f"{by_covariance} of {len(curves)} tensors by layer output error{others}; "
        f"{captures} capture run(s), {runs} whole-model runs for the candidates"
    )
