"""The pruning budget search: per-tensor ratios that maximise the zeros within a measured loss.

Layer-local error curves (``search.layer_error``: each tensor's relative layer output error per
ratio, from its layer's input covariance, no model run) estimate what each tensor costs; the
allocation (``allocate_ratios``) turns them into per-tensor ratios for an allowance, and a few
candidates along that allowance are measured by the judge (``compressor.measure``) with the
pruned tensors fed to one session: the whole-model runs do not grow with the tensors.  The
pass itself (``passes.prune``) only applies the ratios found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from ..data import Dataset, load_dataset
from ..errors import UsageError
from ..measure import BUDGET_SLACK, DEFAULT_MIN_SNR_DB, Judge, Trials, VariantRunner, search_allowance
from ..passes.compensate import Compensator
from ..passes.magnitude import layer_pruned, target_zeros
from ..passes.prune import prune, prune_with_ratios
from ..passes.selection import DEFAULT_MIN_PARAMS, prunable_weights, unique_names
from .layer_error import layer_errors as measure_layer_errors
from .layer_gains import DEFAULT_RUNS as GAIN_RUNS
from .layer_gains import runner_gains, weigh
from .margin_search import margin_allowance
from .sensitivity import BUDGET_RATIOS


def _monotone_costs(drops: Sequence[float]) -> list[float]:
    """Measured drops made non-negative and non-decreasing in the ratio (noise would otherwise
    make a higher ratio look cheaper than a lower one)."""
    out, best = [], 0.0
    for d in drops:
        best = max(best, 0.0 if d is None or not math.isfinite(d) else float(d))
        out.append(best)
    return out


def _hull(ratios: Sequence[float], drops: Sequence[float]) -> list[tuple[float, float]]:
    """Upper concave hull of (drop, ratio) from (0, 0): the best ratio reachable for each drop,
    linearly interpolated (any ratio is realisable, so the chords are real options)."""
    points = [(0.0, 0.0)] + sorted(zip(_monotone_costs([d for _, d in sorted(zip(ratios, drops))]), sorted(ratios)))
    best: dict[float, float] = {}
    for d, r in points:  # for equal drops keep the highest ratio
        best[d] = max(best.get(d, 0.0), r)
    hull: list[tuple[float, float]] = []
    for d, r in sorted(best.items()):
        if hull and r <= hull[-1][1]:
            continue  # costs more, prunes no more
        while len(hull) >= 2:
            (d1, r1), (d2, r2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord from (d1, r1) to (d, r)
            if (r2 - r1) * (d - d1) <= (r - r1) * (d2 - d1):
                hull.pop()
            else:
                break
        hull.append((d, r))
    return hull


def allocate_ratios(curves: list[dict], allowance: float) -> dict[str, float]:
    """Per-tensor ratios maximising the zeros for a total estimated drop <= allowance.

    `curves`: per tensor ``{"name", "params", "ratios": [...], "drops": [...]}`` (drops in
    points, one per probed ratio).  The estimated drop of a combination is the sum of the
    single-tensor drops, each curve replaced by its concave hull (drops clipped to >= 0 and
    made monotone).  Then the greedy on zeros per point of drop — segments by decreasing
    slope, the last one taken fractionally — is optimal for that estimate (a fractional
    knapsack).  Free segments (no drop) are always taken.
    """
    ratios = {c["name"]: 0.0 for c in curves}
    segments = []  # (zeros per point, order, name, d0, r0, d1, r1)
    for order, c in enumerate(curves):
        hull = _hull(c["ratios"], c["drops"])
        for (d0, r0), (d1, r1) in zip(hull, hull[1:]):
            if d1 <= d0:
                ratios[c["name"]] = max(ratios[c["name"]], r1)
                continue
            segments.append((c["params"] * (r1 - r0) / (d1 - d0), order, c["name"], d0, r0, d1, r1))
        # Free ratios: the top of the hull's zero-drop part.
        free = max((r for d, r in hull if d <= 0.0), default=0.0)
        ratios[c["name"]] = max(ratios[c["name"]], free)
    left = max(0.0, float(allowance))
    for _slope, _, name, d0, r0, d1, r1 in sorted(segments, key=lambda s: (-s[0], s[1])):
        if left <= 0:
            break
        cost = d1 - d0
        if cost <= left:
            ratios[name] = r1
            left -= cost
        else:
            ratios[name] = r0 + (r1 - r0) * left / cost
            left = 0.0
    return ratios


# The search: relative layer errors (allocation units) at which it starts, per tensor; the factor
# it grows or shrinks by until the verdict changes; the ratio at which the bisection stops; the
# smallest allowance tried; and how many candidates it measures at most.
START_ALLOWANCE_PER_TENSOR = 0.05
ALLOWANCE_STEP = 4.0
ALLOWANCE_RESOLUTION = 0.1
MIN_ALLOWANCE = 1e-5
MAX_SEARCH_RUNS = 8
# Candidates rebuilt as real models and measured again when the best one overshoots there.
MAX_FINAL_CHECKS = 3
# The fewest zeros, as a share of the selected weights, that a candidate must bring to be worth
# a whole-model run when the start overshoots: if that floor candidate overshoots too, nothing
# worth pruning fits, and the search stops instead of shrinking towards zero (each step a run).
MIN_PRUNED_SHARE = 0.05
# When the verdict has an SNR floor, the allowances are stepped by the measured margin
# (``margin_search``) instead of the fixed factors: fewer candidates for the same edge.
MARGIN_STEPS = True


class _PrunedVariants:
    """The budget search's candidates: the selected tensors layer-pruned to given ratios,
    measured by the judge's ``VariantRunner`` (one session, the tensors as inputs).

    The pruned arrays are cached per (tensor, zero count), so a candidate that changes one
    tensor prunes only that one; `compensate` is applied to every pruned array."""

    def __init__(self, runner: VariantRunner, compensate=None):
        self.runner = runner
        self.compensate = compensate
        self.originals = runner.originals
        self.cache: dict[tuple[str, int], np.ndarray] = {}
        # Each tensor's last pruned array, by its zero count: a candidate usually changes a few
        # tensors' ratios, and pruning a large tensor again costs a pass over its values.
        self.last: dict[str, tuple[int, np.ndarray]] = {}

    def pruned(self, name: str, ratio: float) -> np.ndarray:
        values = self.originals[name]
        zeros = target_zeros(ratio, values.size)
        if zeros == 0:
            return values
        kept = self.last.get(name)
        if kept is None or kept[0] != zeros:
            kept = self.last[name] = (zeros, layer_pruned(values, ratio))
        return self.compensated(name, kept[1])

    def __contains__(self, name: str) -> bool:
        return self.compensate is not None and name in self.compensate

    def __call__(self, name: str, pruned: np.ndarray) -> np.ndarray:
        """As a ``Compensator``: `pruned` with its kept weights refit (once per tensor and zero count)."""
        return self.compensated(name, pruned)

    def compensated(self, name: str, pruned: np.ndarray) -> np.ndarray:
        """`pruned` with its kept weights refit (once per tensor and zero count)."""
        if self.compensate is None or name not in self.compensate:
            # nothing to refit: not cached (a large tensor at every ratio tried would stay in memory)
            return pruned
        key = (name, int(np.count_nonzero(pruned == 0)))
        if key not in self.cache:
            self.cache[key] = self.compensate(name, pruned)
        return self.cache[key]

    def measure(self, ratios: dict[str, float]) -> dict:
        selected = self.runner.selected
        if self.runner.session is None:
            # Only the tensors pruned at all are set in the rebuilt model.
            return self.runner.measure_arrays(
                {
                    w.name: self.pruned(w.name, ratios.get(w.name, 0.0))
                    for w in selected
                    if target_zeros(ratios.get(w.name, 0.0), w.size)
                }
            )
        feed = {w.name: self.pruned(w.name, ratios.get(w.name, 0.0)) for w in selected}
        return self.runner.measure_arrays(feed)

    def close(self) -> None:
        self.cache.clear()
        self.last.clear()
        self.runner.close()


class _BudgetSearch:
    """Measured candidates of the budget search (the judge's ``Trials``, keyed by zero
    counts), with their ratios and the attempts as the stats report them."""

    def __init__(self, variants: _PrunedVariants, judge: Judge, curves, budget, min_snr_db, max_evals):
        self.variants = variants
        self.curves = {c["name"]: c for c in curves}
        self.params = {c["name"]: c["params"] for c in curves}
        self.total = sum(self.params.values())
        self.trials = Trials(lambda metrics: judge.fits(metrics, budget, min_snr_db), max_evals)
        self.budget = budget
        # The verdict has a distance to its edge when the output SNR floor gates it.
        self.min_snr_db = min_snr_db if min_snr_db is not None and judge.gates_snr else None
        self.candidates: list[tuple[int, dict[str, float], dict]] = []  # (zeros, ratios, metrics)
        self.attempts: list[dict] = []

    def key(self, ratios: dict[str, float]) -> tuple:
        # Candidates are identified by their zero counts (all the masks depend on).
        return tuple(target_zeros(min(ratios.get(n, 0.0), 1.0), p) for n, p in self.params.items())

    @property
    def exhausted(self) -> bool:
        return self.trials.exhausted

    def measure(self, ratios: dict[str, float], phase: str, allowance: float | None = None) -> dict | None:
        """Metrics (with "within_budget") of a candidate; None once the evaluations are spent.
        `allowance`: the sum of layer errors it was allocated for (reported)."""
        key = self.key(ratios)

        def record(metrics: dict) -> None:
            zeros = sum(key)
            self.candidates.append((zeros, dict(ratios), metrics))
            self.attempts.append(
                {
                    "phase": phase,
                    "zeros": zeros,
                    "sparsity": zeros / self.total if self.total else 0.0,
                    **_public_metrics(metrics),
                    "within_budget": metrics["within_budget"],
                    "allowance": allowance,
                    "ratios": {n: round(r, 4) for n, r in ratios.items()},
                }
            )

        return self.trials.measure(key, lambda: self.variants.measure(ratios), record)

    def margin_db(self, metrics: dict) -> float | None:
        """How far (dB) a candidate's output SNR is above the floor, or None when the verdict
        has no such distance (no floor, or the loss in points is over the budget)."""
        snr = metrics.get("snr_db")
        if self.min_snr_db is None or snr is None or not metrics["drop"] <= self.budget + BUDGET_SLACK:
            return None
        return float(snr) - self.min_snr_db

    def ranked(self) -> list[tuple[int, dict[str, float], dict]]:
        """Candidates within the budget, most zeros first (first found wins ties)."""
        ok = [c for c in self.candidates if c[2]["within_budget"]]
        return sorted(ok, key=lambda c: -c[0])


def _fits(metrics: dict | None) -> bool | None:
    # A Python bool (the judge's verdict may be numpy's): the search tests it with `is False`.
    return None if metrics is None else bool(metrics["within_budget"])


def _search_allowance(search: _BudgetSearch, curves: list[dict], evals: int) -> tuple[float | None, float | None]:
    """The largest allowance (sum of layer errors) whose ``allocate_ratios`` allocation the
    judge accepts: grow (x ALLOWANCE_STEP) while it does, shrink while it does not, then bisect
    geometrically.  When the start overshoots, the floor allowance (``floor_allowance``: the
    allocation zeroing ``MIN_PRUNED_SHARE`` of the weights) is measured next: if it overshoots
    too the search ends there (nothing worth pruning fits), else it goes on as it would have,
    the floor one more candidate.  (Bisecting between the floor and the start instead took
    fewer runs on smooth measures but visited other candidates: on a labeled 400-sample set,
    whose accuracy drop is not monotone in the allowance, it pruned less.)  Returns (largest
    accepted, smallest rejected)."""
    total = sum(max(c["drops"], default=0.0) for c in curves)
    start = START_ALLOWANCE_PER_TENSOR * len(curves)
    if MARGIN_STEPS and search.min_snr_db is not None:
        return _margin_search(search, curves, evals, start, total)

    def fits(allowance: float) -> bool | None:
        return _fits(search.measure(allocate_ratios(curves, allowance), "allocation", allowance))

    if fits(start) is False:
        floor = floor_allowance(curves, MIN_PRUNED_SHARE)
        if floor < start:
            # One run more than the plan, spent only when the start overshoots: when the floor
            # fits, the search below goes on exactly as without it.
            search.trials.max_evals += 1
            if fits(floor) is False:
                return None, floor
    # The start (and the floor) are measured already: the search reuses them, no run again.
    return search_allowance(
        fits,
        start,
        # every tensor at the top of its curve already: nothing more to gain
        grow=lambda allowance: None if allowance >= total else min(allowance * ALLOWANCE_STEP, total),
        # even (almost) error-free ratios do not fit
        shrink=lambda allowance: None if allowance <= MIN_ALLOWANCE else allowance / ALLOWANCE_STEP,
        geometric=True,
        resolution=ALLOWANCE_RESOLUTION,
        max_steps=evals,
    )


def _margin_search(
    search: _BudgetSearch, curves: list[dict], evals: int, start: float, total: float
) -> tuple[float | None, float | None]:
    """``_search_allowance`` stepped by the measured SNR margin (``search.margin_search``):
    never below the floor allowance (``floor_allowance``: nothing worth pruning below it), so
    when a candidate clamped to the floor overshoots, the search ends there."""

    def measured(allowance: float) -> tuple[bool, float | None] | None:
        metrics = search.measure(allocate_ratios(curves, allowance), "allocation", allowance)
        if metrics is None:
            return None
        return bool(metrics["within_budget"]), search.margin_db(metrics)

    lower = max(min(floor_allowance(curves, MIN_PRUNED_SHARE), start), MIN_ALLOWANCE)
    upper = max(total, start)
    return margin_allowance(measured, start, upper, lower, ALLOWANCE_STEP, ALLOWANCE_RESOLUTION, evals)


def allocated_zeros(curves: list[dict], allowance: float) -> int:
    """The zeros of the ``allocate_ratios`` allocation for `allowance` (no model run)."""
    ratios = allocate_ratios(curves, allowance)
    return sum(target_zeros(min(ratios[c["name"]], 1.0), c["params"]) for c in curves)


def floor_allowance(curves: list[dict], share: float) -> float:
    """The smallest allowance (within ``ALLOWANCE_RESOLUTION``, at least ``MIN_ALLOWANCE``)
    whose allocation zeros `share` of the curves' weights: found on the curves alone (the
    allocation's zeros grow with the allowance), by geometric bisection."""
    want = share * sum(c["params"] for c in curves)
    lo, hi = MIN_ALLOWANCE, max(sum(max(c["drops"], default=0.0) for c in curves), MIN_ALLOWANCE)
    if allocated_zeros(curves, lo) >= want:
        return lo
    if allocated_zeros(curves, hi) < want:
        return hi
    while hi / lo > 1.0 + ALLOWANCE_RESOLUTION:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if allocated_zeros(curves, mid) >= want else (mid, hi)
    return hi


def prune_to_budget(
    model: onnx.ModelProto,
    data: Dataset | str,
    budget_points: float,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    seed: int = 0,
    include_embeddings: bool = False,
    ratios: Sequence[float] | None = None,
    max_evals: int = MAX_SEARCH_RUNS,
    min_snr_db: float | None = None,
    layer_errors: dict | None = None,
    batch_size: int | None = None,
    reference_outputs: list[np.ndarray] | None = None,
    compensate=None,
    judge: Judge | None = None,
    calib: Dataset | None = None,
    gain_runs: int = GAIN_RUNS,
    verify: bool = True,
) -> tuple[onnx.ModelProto, dict]:
    """Per-tensor ratios within a measured accuracy budget: layer-local errors, whole-model verdicts.

    The loss is the accuracy drop in points on `data` (with labels) or 100 - top-1 agreement
    with the original model (without labels; plus an output SNR floor `min_snr_db` when
    given, or ``measure.DEFAULT_MIN_SNR_DB`` when the output has no top-1).

    1. Layer errors (``search.layer_error``): each tensor's relative layer output error at each
       ratio of the ladder (`ratios`, default ``BUDGET_RATIOS``) from its layer's input
       covariance, captured in one run over `calib` (default `data`); the weight-space proxy
       for tensors without one.  Passed in as `layer_errors` (the ``stats["layer_errors"]`` of
       an earlier call), nothing is captured again.
    2. Allocation: ``allocate_ratios`` on those curves, the most zeros for a total error
       allowance; the largest allowance the judge accepts is searched (grow/shrink, then
       geometric bisection), each candidate measured on `data` with the pruned tensors fed to
       one session: at most `max_evals` (capped at ``MAX_SEARCH_RUNS``) whole-model runs.
    3. The candidate with the most zeros within the budget is rebuilt as a real model and
       measured again; if it overshoots there, the next one (at most ``MAX_FINAL_CHECKS``);
       the unpruned model is the fallback.  `verify` False: the best candidate is rebuilt and
       returned unmeasured (the caller's verdict, on samples held out from `data`, measures
       it: a run here on `data` would only repeat the search's own measurement).

    `compensate`: calibration inputs (a Dataset) or a ``compensate.Compensator`` built on them:
    the kept weights refit, in the error curves and the candidates (each tensor refit once per
    zero count, the final model reusing the candidate's refit).
    `reference_outputs`: the model's outputs on `data`, when the caller has them (not run again).
    `judge`: the ``measure.Judge`` to measure with (its reference: the model's outputs on `data`);
    by default ``Judge.of_model(model, data, batch_size, reference_outputs)``.
    `gain_runs`: whole-model runs that measure each layer's gain (``search.layer_gains``; the
    errors are weighted by it; 0: unweighted), once per `layer_errors` (kept there as "gains").
    The data is used both to choose and to verify, so the drop reported is the drop on that
    data.  `seed` is accepted for symmetry with ``prune`` (nothing here is random).
    """
    if (
        isinstance(budget_points, bool)
        or not isinstance(budget_points, (int, float, np.integer, np.floating))
        or not math.isfinite(float(budget_points))
        or budget_points < 0
    ):
        raise UsageError(f"budget must be a non-negative number of points, got {budget_points!r}")
    budget = float(budget_points)
    if isinstance(max_evals, bool) or not isinstance(max_evals, (int, np.integer)) or max_evals < 1:
        raise UsageError(f"max_evals must be a positive integer, got {max_evals!r}")
    if not isinstance(data, Dataset):
        data = load_dataset(data, model)
    selected, skipped = prunable_weights(model, exclude, min_params, include_embeddings)
    selected = unique_names(selected, skipped)
    if not selected:
        pruned, stats = prune(model, 0.0, exclude=exclude, min_params=min_params, include_embeddings=include_embeddings)
        stats["scope"] = "budget"
        return pruned, stats
    if judge is None:
        judge = Judge.of_model(model, data, batch_size=batch_size, reference=reference_outputs)
    runs_before = judge.runs
    compensator = compensate
    if isinstance(compensate, Dataset):
        compensator = Compensator(model, selected, compensate)
    if layer_errors is None:
        layer_errors = measure_layer_errors(model, selected, calib or data, ratios or BUDGET_RATIOS, compensator)
    if min_snr_db is None and judge.mode == "fidelity" and judge.baseline.get("top1_agreement") is None:
        min_snr_db = DEFAULT_MIN_SNR_DB  # no top-1 to count: keep the outputs close instead
    by_name = {c["name"]: c for c in layer_errors["curves"]}
    selected = [w for w in selected if w.name in by_name]
    curves = [{**by_name[w.name], "drops": by_name[w.name]["errors"]} for w in selected]
    evals = min(int(max_evals), MAX_SEARCH_RUNS)
    variants = _PrunedVariants(VariantRunner(model, judge, selected), compensator)
    if gain_runs > 0:
        if "gains" not in layer_errors:
            errors = {c["name"]: c["errors"] for c in curves}
            layer_errors["gains"] = runner_gains(
                variants.runner, errors, lambda n, i: variants.pruned(n, by_name[n]["ratios"][i]), gain_runs
            )
        curves = weigh(curves, layer_errors["gains"]["gains"])
    search = _BudgetSearch(variants, judge, curves, budget, min_snr_db, evals)
    accepted, rejected = _search_allowance(search, curves, evals)
    variants.runner.close()

    warnings: list[str] = []
    final = None
    for zeros, candidate, searched_metrics in search.ranked()[: MAX_FINAL_CHECKS if verify else 1]:
        # The candidate's refit arrays are reused: the refit runs once per tensor and zero count.
        built, built_stats = prune_with_ratios(
            model,
            candidate,
            exclude,
            min_params,
            include_embeddings,
            compensate=variants if compensator is not None else None,
        )
        built_metrics = judge.measure_model(built) if verify else searched_metrics
        if judge.fits(built_metrics, budget, min_snr_db):
            final, stats, final_metrics = built, built_stats, built_metrics
            break
        warnings.append(
            f"candidate with {zeros} zeros measured {built_metrics['drop']:.2f} points as a real model; "
            "taking the next one"
        )
    if final is None:
        final, stats = prune_with_ratios(model, {}, exclude, min_params, include_embeddings)
        final_metrics = dict(judge.baseline)  # the model itself: nothing to measure
        warnings.append(f"no pruned candidate stayed within {budget:g} points; the model is unchanged")
    variants.close()
    stats["scope"] = "budget"
    stats["warnings"] = stats.get("warnings", []) + warnings
    stats["budget"] = {
        "budget_points": budget,
        "metric": judge.mode,
        "min_snr_db": min_snr_db,
        "baseline": judge.baseline,
        "final": _public_metrics(final_metrics),
        "ratios": {r["name"]: r["sparsity"] for r in stats["tensors"]},
        "evaluations": len(search.trials.seen),
        # Whole-model runs of this search: candidates and final checks (the covariance
        # capture, when this call made it: layer_errors' capture_runs).
        "whole_model_runs": judge.runs - runs_before,
        "allowance": {"accepted": accepted, "rejected": rejected},
        "attempts": search.attempts,
        "compensated": sorted(compensator.layers) if compensator is not None else [],
        "not_compensated": dict(sorted(compensator.skipped.items())) if compensator is not None else {},
    }
    stats["layer_errors"] = layer_errors
    return final, stats


def _public_metrics(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in ("accuracy", "top1_agreement", "snr_db", "rel_noise", "drop")}
