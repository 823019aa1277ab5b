"""Partial sharing: a shared candidate's tensors kept where they cost least, the rest left as they were.

The share ladder backs off every tensor together (fewer bits, finer steps); when even its
gentlest setting misses the budget, one or a few tensors may carry the whole loss while the
others cost nothing.  This search keeps the candidate's arrays for a prefix of the tensors
ranked by estimated cost and leaves the rest unshared:

1. Ranking, without running the model: first the tensors every use of which sits in an If
   branch the calibration data never takes (``branch_use``: no cost on that data), then the
   others by their layer's relative output error (``layer_error.variant_errors``: the
   covariance measure where one was captured, else the weight proxy) per value shared, the
   greedy order of the knapsack of error against the values that get a codebook.
2. The longest prefix that fits, by bisection on whole-model verdicts between the unused
   tensors (free) and all of them (the candidate, rejected already): at most
   ceil(log2(n)) verdicts for n ranked tensors, capped at ``MAX_VERDICTS``.

Deterministic: the ranking comes from the arrays and the data, ties by size then name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from .layer_error import curve_method, variant_errors

# Whole-model verdicts the bisection makes at most (2^8 = 256 tensors resolved to one).
MAX_VERDICTS = 8


def ranking(
    originals: Mapping[str, np.ndarray],
    candidates: Mapping[str, np.ndarray],
    layers: Mapping[str, object],
    unused: Mapping[str, str],
) -> list[dict]:
    """The tensors the candidate changed, in the order they are kept shared: ``{"name", "params",
    "error", "method", "unused"}`` (``unused``: the untaken branch, or None).  Tensors the
    candidate left as they were are not listed."""
    rows = []
    for name, values in originals.items():
        cand = candidates.get(name)
        if cand is None or np.array_equal(cand, values):
            continue
        layer = layers.get(name)
        error = float(variant_errors(values, [cand], layer)[0])
        rows.append(
            {
                "name": name,
                "params": int(np.size(values)),
                "error": error if math.isfinite(error) else None,  # None: the layer's output was all zero
                "method": curve_method(layer),
                "unused": unused.get(name),
            }
        )

    def key(row: dict) -> tuple:
        error = math.inf if row["error"] is None else max(row["error"], 0.0)
        cost = 0.0 if row["unused"] else error / max(row["params"], 1)
        return (row["unused"] is None, cost, -row["params"], row["name"])

    return sorted(rows, key=key)


def longest_prefix(low: int, high: int, fits: Callable[[int], bool], max_verdicts: int = MAX_VERDICTS) -> list[dict]:
    """Bisection for the longest prefix that fits, `low` taken to fit and `high` not: returns the
    verdicts made, ``{"tensors": k, "fits": bool}`` in order (the answer is the largest k that
    fit, else `low`)."""
    verdicts: list[dict] = []
    while high - low > 1 and len(verdicts) < max_verdicts:
        mid = (low + high) // 2
        ok = bool(fits(mid))
        verdicts.append({"tensors": mid, "fits": ok})
        if ok:
            low = mid
        else:
            high = mid
    return verdicts


def chosen_count(low: int, verdicts: list[dict]) -> int:
    """How many ranked tensors stay shared: the longest prefix that fit, else `low`."""
    return max([low] + [v["tensors"] for v in verdicts if v["fits"]])
