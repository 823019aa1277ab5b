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
2. The longest prefix that fits, by bisection on whole-model runs (the caller's ``fits``; the
   share stage measures on the searches' data, and the ladder's verdict comes after) between
   the unused tensors (free) and all of them (the candidate, rejected already): ceil(log2(n)) runs
   for n ranked tensors; the tensor that broke it is dropped and the rest tried again, and
   when no more tensors are left than verdicts, each alone on top of the kept ones (``grow``).
   At most ``MAX_VERDICTS`` verdicts in all.

Deterministic: the ranking comes from the arrays and the data, ties by size then name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .layer_error import curve_method, variant_errors

# Whole-model verdicts the selection makes at most (a bisection alone resolves 2^8 = 256 tensors).
MAX_VERDICTS = 8


@dataclass(frozen=True)
class Selection:
    kept: list[int]  # ranks (0-based) kept shared
    verdicts: list[dict]  # {"tensors": how many shared, "ranks": [first, last] added (1-based), "fits"}
    why: dict[int, str]  # rank -> why that tensor is left unshared


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


def grow(free: int, n: int, fits: Callable[[list[int]], bool], max_verdicts: int = MAX_VERDICTS) -> Selection:
    """The ranked tensors (indices 0..n-1) kept shared: the first `free` without a verdict (they
    cost nothing on the data), then by verdicts of ``fits(indices)``, all n known not to fit:

    * bisection for the longest prefix of the pending tensors that fits with the kept ones;
      the tensor just past it broke the budget and is dropped, and the rest are tried
      together (one verdict) and bisected again if they do not fit;
    * once no more pending tensors are left than verdicts, each is tried alone on top of the
      kept ones, in rank order (exact, as ``share_budget.refine`` steps).

    At most `max_verdicts` verdicts in all, whatever n is."""
    kept, pending = list(range(min(free, n))), list(range(min(free, n), n))
    verdicts: list[dict] = []
    why: dict[int, str] = {}
    everything_fails = True  # kept + pending is still the candidate itself, rejected (nothing dropped)

    def verdict(added: list[int]) -> bool:
        ok = bool(fits(kept + added))
        verdicts.append({"tensors": len(kept) + len(added), "ranks": [added[0] + 1, added[-1] + 1], "fits": ok})
        return ok

    while pending and len(verdicts) < max_verdicts:
        if len(pending) <= max_verdicts - len(verdicts):
            i = pending.pop(0)
            if everything_fails and not pending:
                why[i] = f"with the {len(kept)} kept before it, it makes the whole candidate, which exceeded the budget"
            elif verdict([i]):
                kept.append(i)
            else:
                why[i] = f"shared with the {len(kept)} kept before it, it exceeded the budget"
                everything_fails = False
            continue
        if not everything_fails:
            if verdict(pending):
                kept += pending
                pending = []
                break
        low, high = 0, len(pending)
        while high - low > 1 and len(verdicts) < max_verdicts:
            mid = (low + high) // 2
            if verdict(pending[:mid]):
                low = mid
            else:
                high = mid
        kept += pending[:low]
        if high - low > 1:
            pending = pending[low:]
            break
        why[pending[low]] = f"shared with the {len(kept)} kept before it, it exceeded the budget (bisection)"
        pending = pending[high:]
        everything_fails = False
    for i in pending:
        why[i] = f"not tried: the {max_verdicts} verdicts were spent"
    return Selection(sorted(kept), verdicts, why)
