"""The pruning budget search: per-tensor ratios that maximise the zeros within a measured loss.

Sensitivity curves (``search.sensitivity``) estimate what each tensor costs pruned alone; the
allocation (``allocate_ratios``) turns them into per-tensor ratios for an allowance, and every
candidate is measured by the judge (``compressor.measure``) with the pruned tensors fed to one
session.  The pass itself (``passes.prune``) only applies the ratios found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from ..data import Dataset, load_dataset
from ..errors import UsageError
from ..measure import DEFAULT_MIN_SNR_DB, Judge, Trials, VariantRunner, search_allowance
from ..passes.compensate import Compensator
from ..passes.magnitude import CutApplier, find_cut, layer_pruned, magnitudes, target_zeros
from ..passes.prune import prune, prune_with_ratios
from ..passes.selection import DEFAULT_MIN_PARAMS, prunable_weights, unique_names
from .sensitivity import BUDGET_RATIOS, sensitivity


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


def _interpolated_drop(curve: dict, ratio: float) -> float:
    costs = _monotone_costs([d for _, d in sorted(zip(curve["ratios"], curve["drops"]))])
    return float(np.interp(ratio, [0.0] + sorted(curve["ratios"]), [0.0] + costs))


# Search constants: the largest ratio any search may give a tensor, the refinement's first
# and last step (a fraction of the tensor's remaining density), how many tensors each
# refinement step tries, and below which drop difference (points) a move counts as free.
MAX_RATIO = 0.99
FIRST_STEP = 0.15
MIN_STEP = 0.02
MOVES_PER_STEP = 4
DROP_NOISE = 0.05


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

    def pruned(self, name: str, ratio: float) -> np.ndarray:
        values = self.originals[name]
        k = target_zeros(ratio, values.size)
        key = (name, k)
        if key not in self.cache:
            if k == 0:
                self.cache[key] = values
            else:
                pruned = layer_pruned(values, ratio)
                self.cache[key] = self.compensate(name, pruned) if self.compensate is not None else pruned
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
        # Keep the cache to the arrays of this candidate and its neighbours (bounded memory).
        if len(self.cache) > 4 * len(selected):
            keep = {(n, target_zeros(ratios.get(n, 0.0), self.originals[n].size)) for n in self.originals}
            self.cache = {k: v for k, v in self.cache.items() if k in keep}
        return self.runner.measure_arrays(feed)

    def global_zero_counts(self, sparsity: float) -> dict[str, int]:
        """Per-tensor zeros of a global magnitude cut at `sparsity` over the selected tensors."""
        selected = self.runner.selected
        total = sum(v.size for v in self.originals.values())
        buffer = np.empty(total, dtype=np.float32)
        offset = 0
        for w in selected:
            magnitudes(self.originals[w.name], out=buffer[offset : offset + w.size])
            offset += w.size
        applier = CutApplier(find_cut(buffer, target_zeros(sparsity, total)))
        del buffer
        counts = {}
        for w in selected:
            values = self.originals[w.name]
            counts[w.name] = int(np.count_nonzero(applier.mask(magnitudes(values)) | (values.reshape(-1) == 0)))
        return counts

    def close(self) -> None:
        self.cache.clear()
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
        self.candidates: list[tuple[int, dict[str, float], dict]] = []  # (zeros, ratios, metrics)
        self.attempts: list[dict] = []

    def key(self, ratios: dict[str, float]) -> tuple:
        # Candidates are identified by their zero counts (all the masks depend on).
        return tuple(target_zeros(min(ratios.get(n, 0.0), 1.0), p) for n, p in self.params.items())

    @property
    def exhausted(self) -> bool:
        return self.trials.exhausted

    def measure(self, ratios: dict[str, float], phase: str) -> dict | None:
        """Metrics (with "within_budget") of a candidate; None once the evaluations are spent."""
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
                    "ratios": {n: round(r, 4) for n, r in ratios.items()},
                }
            )

        return self.trials.measure(key, lambda: self.variants.measure(ratios), record)

    def ranked(self) -> list[tuple[int, dict[str, float], dict]]:
        """Candidates within the budget, most zeros first (first found wins ties)."""
        ok = [c for c in self.candidates if c[2]["within_budget"]]
        return sorted(ok, key=lambda c: -c[0])


def _fits(metrics: dict | None) -> bool | None:
    return None if metrics is None else metrics["within_budget"]


def _search_global(search: _BudgetSearch, global_ratios, evals: int) -> None:
    """Bisection on one global-threshold sparsity (Deep Compression's setting)."""
    lo, hi = 0.0, MAX_RATIO
    for _ in range(evals):
        mid = (lo + hi) / 2.0
        fits = _fits(search.measure(global_ratios(mid), "global"))
        if fits is None:
            return
        if fits:
            lo = mid
        else:
            hi = mid


def _search_allowance(
    search: _BudgetSearch, curves: list[dict], start: float, evals: int, phase: str, geometric: bool, resolution: float
) -> None:
    """The largest allowance whose ``allocate_ratios`` allocation measures within the budget:
    grow (x2) while feasible, shrink (/2, or /4 on the linear scale) while not, then bisect."""
    total_cost = sum(max(_monotone_costs(c["drops"]), default=0.0) for c in curves)
    search_allowance(
        lambda allowance: _fits(search.measure(allocate_ratios(curves, allowance), phase)),
        start,
        # every tensor at the top of its curve already: nothing more to gain
        grow=lambda allowance: None if allowance > total_cost else max(allowance * 2.0, resolution),
        # even (almost) free ratios do not fit
        shrink=lambda allowance: None if allowance <= resolution else allowance / (2.0 if geometric else 4.0),
        geometric=geometric,
        resolution=resolution,
        max_steps=evals,
    )


def _refine(search: _BudgetSearch, start: dict[str, float]) -> None:
    """Measured greedy ascent.  From the best candidate, try raising the ratio of the few
    tensors the curves say are cheapest by a step of their remaining density; keep the move
    with the most zeros per measured point of drop that stays within the budget; halve the
    step when none does."""
    current = dict(start)
    current_metrics = search.measure(current, "refine")
    if current_metrics is None or not current_metrics["within_budget"]:
        return
    step = FIRST_STEP
    while step >= MIN_STEP and not search.exhausted:
        proposals = []
        for name, curve in search.curves.items():
            r = current.get(name, 0.0)
            if r >= MAX_RATIO:
                continue
            new = min(MAX_RATIO, 1.0 - (1.0 - r) * (1.0 - step))
            gain = target_zeros(new, curve["params"]) - target_zeros(r, curve["params"])
            if gain <= 0:
                continue
            estimate = max(_interpolated_drop(curve, new) - _interpolated_drop(curve, r), 0.0)
            proposals.append((gain / max(estimate, DROP_NOISE), name, new, gain))
        proposals.sort(key=lambda p: (-p[0], p[1]))
        best = None
        for _, name, new, gain in proposals[:MOVES_PER_STEP]:
            candidate = {**current, name: new}
            metrics = search.measure(candidate, "refine")
            if metrics is None:
                break
            if not metrics["within_budget"]:
                continue
            score = gain / max(metrics["drop"] - current_metrics["drop"], DROP_NOISE)
            if best is None or score > best[0]:
                best = (score, candidate, metrics)
        if best is None:
            step /= 2.0
            continue
        _, current, current_metrics = best


def prune_to_budget(
    model: onnx.ModelProto,
    data: Dataset | str,
    budget_points: float,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    seed: int = 0,
    include_embeddings: bool = False,
    ratios: Sequence[float] | None = None,
    max_evals: int = 40,
    min_snr_db: float | None = None,
    sensitivity_stats: dict | None = None,
    batch_size: int | None = None,
    progress=None,
    reference_outputs: list[np.ndarray] | None = None,
    compensate=None,
    judge: Judge | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Sensitivity-guided per-tensor ratios within a measured accuracy budget; returns (model, stats).

    The loss is the accuracy drop in points on `data` (with labels) or 100 - top-1 agreement
    with the original model (without labels; plus an output SNR floor `min_snr_db` when
    given, or ``measure.DEFAULT_MIN_SNR_DB`` when the output has no top-1).  Every candidate below is *measured*
    (one ORT pass over `data`, the pruned tensors fed as inputs of one session):

    1. Sensitivity curves: each tensor pruned alone on a ladder of ratios (``sensitivity()``,
       accuracy drop and relative output noise), unless passed in as `sensitivity_stats`.
    2. Global threshold: bisection on one global sparsity (the Deep Compression setting and
       the reference the per-tensor ratios must beat).
    3. Output-noise allocation: ``allocate_ratios`` on the relative output noise curves
       (noise powers of independent small perturbations add up, accuracy drops do not), with
       the total noise allowance searched (geometrically) on the measured drop.
    4. Accuracy-drop allocation: the same on the accuracy-drop curves, allowance starting at
       the budget and scaled down (or up) until the measured drop fits.
    5. Refinement from the best candidate so far (``_refine``).
    6. The winner is rebuilt as a real model and measured again with a fresh ORT session;
       if it exceeds the budget there (weights as inputs vs constants can round
       differently), the next best is taken.  The unpruned model (loss 0) is the fallback.

    `compensate`: calibration inputs (a Dataset) or a ``compensate.Compensator`` built on them,
    for the data-aware error compensation (see compensate.py): every pruned candidate, from the curves on, has its kept weights refit,
    so the search measures (and spends its budget on) what the refit leaves.
    `reference_outputs`: the model's outputs on `data`, when the caller has them (not run again).
    `judge`: the ``measure.Judge`` to measure with (its reference: the model's outputs on `data`);
    by default ``Judge.of_model(model, data, batch_size, reference_outputs)``.
    At most `max_evals` candidates are measured in steps 2-5.  The data is used both to
    choose and to verify, so the drop reported is the drop on that data.  `seed` is accepted
    for symmetry with ``prune`` (nothing here is random).
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
    compensator = compensate
    if isinstance(compensate, Dataset):
        compensator = Compensator(model, selected, compensate)
    if sensitivity_stats is None:
        sensitivity_stats = sensitivity(
            model,
            data,
            ratios=ratios or BUDGET_RATIOS,
            exclude=exclude,
            min_params=min_params,
            include_embeddings=include_embeddings,
            evaluator=judge,
            progress=progress,
            compensate=compensator,
        )
    if min_snr_db is None and judge.mode == "fidelity" and judge.baseline.get("top1_agreement") is None:
        min_snr_db = DEFAULT_MIN_SNR_DB  # no top-1 to count: keep the outputs close instead
    by_name = {t["name"]: t for t in sensitivity_stats["tensors"]}
    selected = [w for w in selected if w.name in by_name]
    drop_curves = [
        {
            "name": w.name,
            "params": w.size,
            "ratios": [p["ratio"] for p in by_name[w.name]["curve"]],
            "drops": [p["drop"] for p in by_name[w.name]["curve"]],
        }
        for w in selected
    ]
    noise_curves = [{**c, "drops": [p.get("rel_noise") for p in by_name[c["name"]]["curve"]]} for c in drop_curves]
    has_noise = all(d is not None and math.isfinite(d) for c in noise_curves for d in c["drops"])
    variants = _PrunedVariants(VariantRunner(model, judge, selected), compensator)
    search = _BudgetSearch(variants, judge, drop_curves, budget, min_snr_db, max_evals)

    def global_ratios(sparsity: float) -> dict[str, float]:
        # A global cut expressed as per-tensor ratios: its per-tensor zero counts.
        zeros = variants.global_zero_counts(sparsity)
        return {w.name: zeros[w.name] / w.size for w in selected}

    phase_evals = max(1, max_evals // 5)
    _search_global(search, global_ratios, phase_evals)
    if has_noise:
        best = search.ranked()
        start = best[0][2].get("rel_noise") if best else None
        start = start if start and math.isfinite(start) and start > 0 else 0.01
        _search_allowance(search, noise_curves, start, phase_evals, "noise allocation", geometric=True, resolution=0.05)
    _search_allowance(
        search,
        drop_curves,
        budget,
        phase_evals,
        "drop allocation",
        geometric=False,
        resolution=max(0.02 * budget, 1e-3),
    )
    best = search.ranked()
    if best:
        _refine(search, best[0][1])
    variants.close()

    warnings: list[str] = []
    for zeros, candidate, _ in search.ranked():
        final, stats = prune_with_ratios(
            model, candidate, exclude, min_params, include_embeddings, compensate=compensator
        )
        final_metrics = judge.measure_model(final)
        if judge.fits(final_metrics, budget, min_snr_db):
            break
        warnings.append(
            f"candidate with {zeros} zeros measured {final_metrics['drop']:.2f} points as a real model; "
            "taking the next one"
        )
    else:
        final, stats = prune_with_ratios(model, {}, exclude, min_params, include_embeddings)
        final_metrics = judge.measure_model(final)
        warnings.append(f"no pruned candidate stayed within {budget:g} points; the model is unchanged")
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
        "attempts": search.attempts,
        "compensated": sorted(compensator.layers) if compensator is not None else [],
        "not_compensated": dict(sorted(compensator.skipped.items())) if compensator is not None else {},
    }
    stats["sensitivity"] = sensitivity_stats
    return final, stats


def _public_metrics(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in ("accuracy", "top1_agreement", "snr_db", "rel_noise", "drop")}
