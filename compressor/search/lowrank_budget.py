"""The low-rank budget search: a rank per layer that removes the most values within a measured loss.

One capture run over the calibration data gives every factorable layer's input covariance;
every layer is then factorised once at every rank (``lowrank_math.factorize``: the whitened
SVD, whose output-error curve e(r) costs no model run).  One number, the weight λ of values
against error, steers every layer at once (``lowrank_math.choose_ranks``: each layer takes the
rank minimising e(r) + λ·values(r)/values(all), or stays dense), and a geometric bisection on
λ with the judge (``compressor.measure``) finds the largest λ within the budget in a few
whole-model runs.  The pass itself (``passes.lowrank``) only writes the ranks found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..data import Dataset
from ..lowrank_math import choose_ranks, sparse_values
from ..measure import DEFAULT_MIN_SNR_DB, Judge, Trials, search_allowance
from ..passes.layers import Layer
from ..passes.lowrank import apply_ranks, factorable_weights, factorize_weights, layer_covariances
from ..passes.selection import DEFAULT_MIN_PARAMS, Skipped

# The search on λ: where it starts, the factor it grows or shrinks by until the verdict
# changes, the ratio at which the bisection stops, its ends, and the candidates it measures.
START_WEIGHT = 0.1
WEIGHT_STEP = 4.0
WEIGHT_RESOLUTION = 0.15
MIN_WEIGHT = 1e-4
MAX_WEIGHT = 1e3
MAX_SEARCH_RUNS = 8


@dataclass
class Prepared:
    """What the search needs of a model, computed once (the stage's fallbacks reuse it)."""

    weights: list
    skipped: list[Skipped]
    layers: dict[str, Layer]
    factorizations: dict
    capture_runs: int
    dense_values: dict[str, float]  # what each weight costs as it is (lowrank_math.sparse_values)
    candidates: dict = field(default_factory=dict)  # ranks key -> measured metrics, across searches


def prepare(
    model: onnx.ModelProto,
    calib: Dataset | None,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
) -> Prepared:
    weights, skipped = factorable_weights(model, exclude, min_params)
    layers = layer_covariances(model, weights, calib) if calib is not None and weights else {}
    dense = {w.name: sparse_values(int(np.count_nonzero(w.array())), w.size) for w in weights}
    return Prepared(weights, skipped, layers, factorize_weights(weights, layers), 1 if layers else 0, dense)


def _key(ranks: dict[str, int]) -> tuple:
    return tuple(sorted((k, v) for k, v in ranks.items() if v > 0))


def lowrank_to_budget(
    model: onnx.ModelProto,
    data: Dataset,
    budget_points: float,
    calib: Dataset | None = None,
    min_snr_db: float | None = DEFAULT_MIN_SNR_DB,
    max_evals: int = MAX_SEARCH_RUNS,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    refit: bool = False,
    reference_outputs: list | None = None,
    prepared: Prepared | None = None,
    sparse_cost: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """The model with per-layer ranks chosen within `budget_points` of loss on `data` (the
    covariances from `calib`, default `data`; outputs that are not class scores also held to
    `min_snr_db`); returns (model, stats with "budget").
    `sparse_cost`: a pruned layer costs its nonzeros and their positions in the allocation
    (``lowrank_math.sparse_values``), else all its values."""
    if prepared is None:
        prepared = prepare(model, calib if calib is not None else data, exclude, min_params)
    facs, layers = prepared.factorizations, prepared.layers
    dense_values = prepared.dense_values if sparse_cost else None
    judge = Judge.of_model(model, data, reference=reference_outputs)
    trials = Trials(lambda m: judge.fits(m, budget_points, min_snr_db), max_evals)
    measured: list[dict] = []

    def build(ranks: dict[str, int]) -> tuple[onnx.ModelProto, dict]:
        return apply_ranks(model, facs, ranks, layers, refit)

    def fits(weight: float) -> bool | None:
        ranks = choose_ranks(facs, weight, dense_values=dense_values)
        key = _key(ranks)
        if not key:
            return True  # nothing factorised: the model itself
        if key in prepared.candidates:
            metrics = prepared.candidates[key]
        else:

            def run() -> dict:
                candidate, stats = build(ranks)
                return {**judge.measure_model(candidate), "params_after": stats["totals"]["params_after"]}

            metrics = trials.measure(key, run)
            if metrics is None:
                return None
            prepared.candidates[key] = metrics
        ok = judge.fits(metrics, budget_points, min_snr_db)
        measured.append({"weight": weight, "drop": metrics["drop"], "snr_db": metrics.get("snr_db"), "fits": ok})
        if log is not None:
            log(f"lowrank: weight {weight:.3g}: loss {metrics['drop']:.2f} points, {'fits' if ok else 'exceeds'}")
        return ok

    best, _ = search_allowance(
        fits,
        START_WEIGHT,
        lambda w: w * WEIGHT_STEP if w < MAX_WEIGHT else None,
        lambda w: w / WEIGHT_STEP if w > MIN_WEIGHT else None,
        geometric=True,
        resolution=WEIGHT_RESOLUTION,
        max_steps=max_evals + 4,
    )
    ranks = choose_ranks(facs, best, dense_values=dense_values) if best is not None else {}
    new_model, stats = build(ranks)
    final = prepared.candidates.get(_key(ranks), judge.baseline) if _key(ranks) else judge.baseline
    stats["skipped"] = [s.as_dict() for s in prepared.skipped]
    stats["capture_runs"] = prepared.capture_runs
    stats["budget"] = {
        "budget_points": budget_points,
        "weight": best,
        "sparse_cost": sparse_cost,
        "whole_model_runs": len(trials.seen),
        "candidates": measured,
        "final": {k: final.get(k) for k in ("drop", "accuracy", "top1_agreement", "snr_db")},
        "baseline_accuracy": judge.reference_accuracy,
        "metric": judge.mode,
    }
    return new_model, stats
