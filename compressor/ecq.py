"""Entropy-constrained uniform quantization (ECUQ) of one weight tensor — pure numpy.

k-means minimises the error for a given *number* of centroids; what the container pays for
is the *entropy* of the symbols.  At the rates weights are coded at, a uniform grid followed
by an entropy coder is within a fraction of a bit of the rate-distortion bound whatever the
distribution (Gish & Pierce 1968), and its integers are directly the QuantizeLinear values
of an int8 tensor with that step as scale, so "share" and "quantize" meet in one grid.

A tensor is quantized with one step Δ: each non-zero value becomes Δ·n for an integer n;
zeros (pruned weights) stay exactly zero.  Rounding is rate-distortion optimised
(``rdo_levels``): each value takes, of the two grid levels around it and zero, the one
minimising ``(w - Δ·n)² + λ·R(n)``, with ``R(n) = -log2 p(n)`` the code length of level n
in the tensor's own level distribution (zeros included), recomputed from the result a few
times; ``λ = rd_factor · Δ²``.  (For a uniform quantizer at high rate dD/dR = -2 ln2 · Δ²/12,
so factors around 0.1 trade error for bits at the quantizer's own slope.)  With
``rd_factor = 0`` it is plain rounding.

``step_ladder`` gives the steps a search tries for a tensor: geometric, from the RMS of its
non-zero values, finest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ecq_sorted import ValueBuckets, levels_array, rdo_bucket_levels, value_buckets, values_array

# Rate-distortion rounding: the default λ / Δ² and the passes over the level distribution.
RD_FACTOR = 0.05
RD_ITERATIONS = 3
# Values rounded together in one pass (cache-sized float64 blocks: the same result, far less memory).
RDO_BLOCK = 1 << 16
# Largest |level| a step may give (int8 symmetric weights: one sign bit, 7 magnitude bits).
MAX_LEVEL = 127
# Steps of the ladder, relative to the RMS of the non-zero values: 2^(-i/2) for i in this range.
LADDER_EXPONENTS = tuple(range(-2, 13))
# Tensors above this many values have their step ladder's statistics taken in chunks of it.
LADDER_CHUNK = 1 << 22
# Tensors this large are rounded on their value buckets (ecq_sorted) when no importance weighs them.
SORTED_MIN = 1 << 20


@dataclass(frozen=True)
class UniformArray:
    values: np.ndarray  # step * levels, in the input's dtype; zeros where the input had zeros
    levels: np.ndarray  # int64, same shape
    step: float


def entropy_bits(levels: np.ndarray) -> float:
    """Zero-order entropy of the levels (zeros included), in bits for the whole array."""
    flat = np.asarray(levels).ravel()
    if flat.size == 0:
        return 0.0
    _, counts = np.unique(flat, return_counts=True)
    p = counts / flat.size
    return float(-np.sum(counts * np.log2(p)))


def smallest_step(values: np.ndarray, max_level: int = MAX_LEVEL) -> float:
    """The finest step at which every value fits within ±max_level levels."""
    peak = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return peak / (max_level + 0.5) if peak > 0 else 0.0


def step_ladder(values: np.ndarray, exponents=LADDER_EXPONENTS, max_level: int = MAX_LEVEL) -> list[float]:
    """Candidate steps for a tensor, finest first: RMS of its non-zero values x 2^(-e/2) for e in
    decreasing `exponents`, none finer than ``smallest_step`` (duplicates dropped)."""
    flat = np.asarray(values).ravel()
    if flat.size > LADDER_CHUNK:
        # a large tensor in chunks (no float64 copy of it): the sum of squares chunk by chunk
        squares, count, peak = 0.0, 0, 0.0
        for s in range(0, flat.size, LADDER_CHUNK):
            part = flat[s : s + LADDER_CHUNK].astype(np.float64)
            part = part[part != 0]
            squares += float(np.add.reduce(part * part))
            count += part.size
            peak = max(peak, float(np.max(np.abs(part)))) if part.size else peak
        if count == 0:
            return []
        rms = float(np.sqrt(squares / count))
        floor = peak / (max_level + 0.5)
    else:
        nz = flat.astype(np.float64)
        nz = nz[nz != 0]
        if nz.size == 0:
            return []
        rms = float(np.sqrt(np.mean(nz * nz)))
        floor = smallest_step(nz, max_level)
    steps = []
    for e in sorted(exponents, reverse=True):
        s = max(rms * 2.0 ** (-e / 2), floor)
        if not steps or s > steps[-1] * (1 + 1e-9):
            steps.append(s)
    return steps


def _rates(levels: np.ndarray, offset: int, width: int, total: int) -> np.ndarray:
    """Code length in bits of each level offset..offset+width-1 in `levels`' distribution; a
    level that does not occur costs as much as one occurring once more than the total."""
    counts = np.bincount(levels + offset, minlength=width).astype(np.float64)
    counts[counts == 0] = 0.5
    return -np.log2(counts / max(total, 1))


def rdo_levels(
    w: np.ndarray,
    step: float,
    rd_factor: float = RD_FACTOR,
    iterations: int = RD_ITERATIONS,
    max_level: int = MAX_LEVEL,
    importance: np.ndarray | None = None,
    buckets: ValueBuckets | None = None,
) -> np.ndarray:
    """Integer levels of `w` on the grid `step` (zeros stay 0), rate-distortion rounded.

    Each non-zero value takes the level among floor(w/Δ), ceil(w/Δ) and 0 minimising
    (w - Δn)² + λ·R(n), λ = rd_factor·Δ², R from the previous pass's level counts (the
    first pass: nearest rounding).  Levels are clipped to ±max_level.

    `importance` (broadcastable to `w`, >= 0, about 1 on average): weights of the squared
    errors, e.g. the variance of the input each weight multiplies, so a weight on an input
    that never varies costs no error and goes to the cheapest level.

    `buckets`: the values' ``ecq_sorted.value_buckets`` (a search rounding one tensor at many
    steps makes them once); without importance, the passes then run on them (``ecq_sorted``:
    the same levels, each pass touching only the values near a decision boundary).  Tensors of
    at least ``SORTED_MIN`` values without importance make their own."""
    if not step > 0 or not np.isfinite(step):
        raise ValueError(f"step must be a positive finite number, got {step!r}")
    flat = np.asarray(w).ravel()
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float64)
    if importance is None and (buckets is not None or flat.size >= SORTED_MIN):
        buckets = value_buckets(flat) if buckets is None else buckets
        levels, _ = rdo_bucket_levels(flat, step, rd_factor, iterations, max_level, buckets, _rdo_choice)
        return levels_array(levels, buckets).reshape(np.shape(w))
    nz = np.flatnonzero(flat)
    x = flat[nz].astype(np.float64) / step
    levels = np.zeros(flat.size, dtype=np.int64)
    levels[nz] = np.clip(np.rint(x), -max_level, max_level)
    if rd_factor > 0 and nz.size:
        weight = None
        if importance is not None:
            weight = np.broadcast_to(np.asarray(importance, dtype=np.float64), np.shape(w)).ravel()[nz]
        width = 2 * max_level + 1
        for _ in range(max(1, iterations)):
            # λ·R(n) per level, in units of step² (λ / step² = rd_factor)
            rate_cost = rd_factor * _rates(levels, max_level, width, flat.size)
            changed = False
            for s in range(0, nz.size, RDO_BLOCK):
                block = slice(s, s + RDO_BLOCK)
                chosen = _rdo_choice(x[block], None if weight is None else weight[block], rate_cost, max_level)
                at = nz[block]
                if not changed and not np.array_equal(chosen, levels[at]):
                    changed = True
                levels[at] = chosen  # the rates of this pass were taken before: in place is the same
            if not changed:
                break
    return levels.reshape(np.shape(w))


def _rdo_choice(x: np.ndarray, weight: np.ndarray | None, rate_cost: np.ndarray, max_level: int) -> np.ndarray:
    """Of floor(x), ceil(x) (clipped to ±max_level) and 0, the level with the least
    (x - n)²·weight + rate_cost[n + max_level] (ties: that order), for each x (float64, in steps)."""
    lo = np.clip(np.floor(x), -max_level, max_level)
    hi = np.minimum(lo + 1, max_level)
    best = np.square(x - lo)
    other = np.square(x - hi)
    zero = np.square(x)
    if weight is not None:
        best *= weight
        other *= weight
        zero *= weight
    lo_i, hi_i = lo.astype(np.intp), hi.astype(np.intp)
    best += rate_cost[lo_i + max_level]
    other += rate_cost[hi_i + max_level]
    zero += rate_cost[max_level]
    chosen = np.where(other < best, hi_i, lo_i)
    np.minimum(best, other, out=best)
    chosen[zero < best] = 0
    return chosen


def uniform_quantize(
    w: np.ndarray,
    step: float,
    rd_factor: float = RD_FACTOR,
    iterations: int = RD_ITERATIONS,
    max_level: int = MAX_LEVEL,
    importance: np.ndarray | None = None,
    buckets: ValueBuckets | None = None,
) -> UniformArray:
    """`w` (a float array) on the grid `step` (``rdo_levels``); the step and the values in `w`'s dtype."""
    w = np.asarray(w)
    levels = rdo_levels(w, step, rd_factor, iterations, max_level, importance, buckets)
    # the step in the tensor's dtype, the product in it too: exactly what DequantizeLinear
    # computes from these levels and that step as its scale
    step_t = np.asarray(step, dtype=w.dtype)
    values = levels.astype(w.dtype) * step_t
    return UniformArray(values, levels, float(step_t))


def uniform_values(
    w: np.ndarray,
    step: float,
    rd_factor: float = RD_FACTOR,
    buckets: ValueBuckets | None = None,
) -> np.ndarray:
    """``uniform_quantize(w, step, rd_factor).values`` (no importance), made on the value buckets
    without the levels array: each bucket's value from a small table (the same product in
    `w`'s dtype), then the values of the mixed buckets."""
    w = np.asarray(w)
    flat = w.ravel()
    if buckets is None and flat.size < SORTED_MIN:
        return uniform_quantize(w, step, rd_factor).values
    if not step > 0 or not np.isfinite(step):
        raise ValueError(f"step must be a positive finite number, got {step!r}")
    if flat.dtype not in (np.float32, np.float64):
        return uniform_quantize(w, step, rd_factor).values
    buckets = value_buckets(flat) if buckets is None else buckets
    levels, _ = rdo_bucket_levels(flat, step, rd_factor, RD_ITERATIONS, MAX_LEVEL, buckets, _rdo_choice)
    return values_array(levels, buckets, np.asarray(step, dtype=w.dtype)).reshape(w.shape)


def grid_step(values: np.ndarray, max_level: int = MAX_LEVEL, rtol: float = 1e-5) -> float | None:
    """The step of the uniform grid the distinct non-zero `values` lie on, or None.

    The step is the smallest |value| divided by each candidate integer up to the smallest
    level that makes every value a multiple of it within `rtol` of the step, with no level
    above `max_level`.  A k-means codebook (irregular spacing) gives None."""
    v = np.unique(np.abs(np.asarray(values, dtype=np.float64).ravel()))
    v = v[v > 0]
    if v.size == 0:
        return None
    for divisor in range(1, max_level + 1):
        step = v[0] / divisor
        n = v / step
        if n[-1] > max_level + 0.5:
            return None
        r = np.rint(n)
        if np.all(np.abs(n - r) <= rtol * np.maximum(r, 1)):
            # the least-squares step of those levels, so float32 rounding of the values
            # does not bias it
            return float(np.dot(r, v) / np.dot(r, r))
    return None
