"""share_to_budget: k-means bits chosen per tensor under a measured accuracy budget.

Deep Compression gives every conv layer 8 bits and every fully-connected layer 5; layers
differ far more than that (a depthwise ResNet's pointwise filters keep their accuracy at
3 bits while its stem needs 6).  This search measures it:

1. Curves: each shareable tensor clustered alone at each width of ``BITS``, the others left
   as they are, run with ONNX Runtime (one session with the tensors as inputs): accuracy
   drop and relative output noise.  A curve stops at the first width whose drop exceeds
   twice the budget (fewer bits only lose more).
2. Allocation: output noise powers of independent small perturbations add up, so the
   widths saving the most bits for a total noise allowance are a knapsack over the curves
   (``prune.allocate_ratios`` with ratio = 1 - bits / 8, snapped down to a measured width).
3. The allowance is searched geometrically on the measured drop of the whole allocation;
   the allocation within the budget that saves the most bits wins, and is built with
   ``share(model, bits_by_name=...)``, which reproduces the measured arrays exactly (each
   tensor has its own seeded generator).

Cost: about tensors x widths + ``max_evals`` runs over the data; the caller decides whether
a model is small enough for it (run: ``stages.share``).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ..data import Dataset
from ..errors import CompressorError
from ..kmeans import share_array
from ..measure import Judge, Trials, VariantRunner, search_allowance
from ..passes.selection import DEFAULT_MIN_PARAMS
from ..passes.share import share, shareable_weights, tensor_rng
from .prune_budget import allocate_ratios

# Widths probed, widest first; the widest is the reference every saving is counted from.
BITS = (8, 6, 5, 4, 3, 2)
STOP_FACTOR = 2.0  # a curve stops past this many budgets of drop
RESOLUTION = 0.05  # the allowance search stops when its bracket is this close (ratio - 1)


def share_to_budget(
    model: onnx.ModelProto,
    data: Dataset,
    budget_points: float,
    *,
    min_snr_db: float | None = None,
    init: str = "linear",
    seed: int = 0,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    max_evals: int = 12,
    progress=None,
    reference_outputs: list[np.ndarray] | None = None,
    bias_data: Dataset | None = None,
    bias_judge=None,
    judge: Judge | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Per-tensor k-means widths within `budget_points` of `model` on `data`; returns (model, stats).

    `reference_outputs`: the model's outputs on `data` if already computed.  `bias_data`: bias
    correction of the model built (the search measures without it, so it only gains).  Raises
    CompressorError when no allocation (not even every tensor at 8 bits) fits.  `judge`: the
    ``measure.Judge`` to measure with (default ``Judge.of_model(model, data, reference=...)``)."""
    selected = shareable_weights(model, exclude, min_params)
    if not selected:
        raise CompressorError("no tensor to share")
    if judge is None:
        judge = Judge.of_model(model, data, reference=reference_outputs)
    runs_before = judge.runs
    runner = VariantRunner(model, judge, selected)  # one session, the tensors as inputs
    originals = runner.originals
    params = {w.name: int(np.count_nonzero(originals[w.name])) for w in selected}
    cache: dict[tuple[str, int], np.ndarray] = {}

    def run(bits_by_name: dict[str, int]) -> dict:
        arrays = {}
        for name, bits in bits_by_name.items():
            if (name, bits) not in cache:
                cache[(name, bits)] = share_array(
                    originals[name], 2**bits, init=init, seed=tensor_rng(seed, name)
                ).values
            arrays[name] = cache[(name, bits)]
        return runner.measure_arrays(arrays)

    # 1. curves
    curves = []
    for i, w in enumerate(selected):
        points = []
        for bits in BITS:
            metrics = run({w.name: bits})
            points.append({"bits": bits, **{k: metrics.get(k) for k in ("drop", "rel_noise", "snr_db")}})
            if not (metrics["drop"] <= STOP_FACTOR * budget_points) or not _is_number(metrics.get("rel_noise")):
                break
        curves.append({"name": w.name, "role": w.role, "params": params[w.name], "points": points})
        if progress is not None:
            progress(i + 1, len(selected))

    # 2. + 3. allocation and the allowance search
    knapsack = []
    for c in curves:
        usable = [p for p in c["points"] if _is_number(p["rel_noise"])]
        base = usable[0]["rel_noise"] if usable else 0.0
        knapsack.append(
            {
                "name": c["name"],
                "params": c["params"],
                "ratios": [1 - p["bits"] / BITS[0] for p in usable],
                "drops": [max(p["rel_noise"] - base, 0.0) for p in usable],
            }
        )
    measured_bits = {
        c["name"]: [p["bits"] for p in c["points"] if _is_number(p["rel_noise"])] or [BITS[0]] for c in curves
    }

    def allocation(allowance: float) -> dict[str, int]:
        ratios = allocate_ratios(knapsack, allowance)
        out = {}
        for name, widths in measured_bits.items():
            wanted = BITS[0] * (1 - ratios.get(name, 0.0))
            out[name] = min((b for b in widths if b >= wanted - 1e-9), default=BITS[0])
        return out

    def saved(bits_by_name: dict[str, int]) -> int:
        return sum(params[n] * (BITS[0] - b) for n, b in bits_by_name.items())

    trials = Trials(lambda metrics: judge.fits(metrics, budget_points, min_snr_db), max_evals)
    tried = []

    def fits(allowance: float) -> bool | None:
        bits_by_name = allocation(allowance)

        def record(metrics: dict) -> None:
            tried.append(
                {
                    "bits": dict(bits_by_name),
                    "saved_bits": saved(bits_by_name),
                    "drop": metrics["drop"],
                    "snr_db": metrics.get("snr_db"),
                    "within_budget": metrics["within_budget"],
                }
            )

        key = tuple(bits_by_name[w.name] for w in selected)
        metrics = trials.measure(key, lambda: run(bits_by_name), record)
        return None if metrics is None else metrics["within_budget"]

    total = sum(max(d["drops"], default=0.0) for d in knapsack)
    positive = [d for k in knapsack for d in k["drops"] if d > 0]
    search_allowance(
        fits,
        max(min(positive), total / 8) if positive else 0.0,
        # every tensor at its narrowest measured width already
        grow=lambda allowance: None if allowance >= total or total == 0 else min(allowance * 2, total),
        shrink=lambda allowance: None if not positive or allowance <= min(positive) / 4 else allowance / 2,
        geometric=True,
        resolution=RESOLUTION,
    )
    feasible = [t for t in tried if t["within_budget"]]
    if not feasible:
        raise CompressorError(f"no per-tensor widths fit {budget_points:g} points (tried {len(tried)})")
    best = max(feasible, key=lambda t: t["saved_bits"])  # first found wins ties
    runner.close()
    cache.clear()
    shared, stats = share(
        model,
        bits_by_name=best["bits"],
        init=init,
        seed=seed,
        exclude=exclude,
        min_params=min_params,
        bias_data=bias_data,
        bias_judge=bias_judge,
    )
    stats["budget_search"] = {
        "budget_points": budget_points,
        "widths": list(BITS),
        "curves": curves,
        "tried": tried,
        "evaluations": judge.runs - runs_before,
        "chosen": best["bits"],
    }
    return shared, stats


def _is_number(value) -> bool:
    """A measured value that is a finite number (not None, inf or NaN)."""
    return value is not None and math.isfinite(value)
