"""``ecq.rdo_levels`` on a tensor's value buckets: each rounding pass rounds only the values near
a decision boundary one by one.

Without per-weight importance the level ``rdo_levels`` gives a value depends on x = value / step
alone, through comparisons of (x - n)² + rate[n] between floor(x), ceil(x) and 0.  Their
differences are linear in x, so the levels are piecewise constant in x, with a few breakpoints
per grid level: the integers (floor changes), k + 1/2 + (rate[k+1] - rate[k]) / 2 (ceil against
floor) and (n² + rate[n] - rate[0]) / 2n (n against zero).

The non-zero values get a 16-bit bucket key once per tensor (``ValueBuckets``: BUCKETS - 1 equal
value intervals, bucket 0 for the zeros; reused for every step a search tries).  In a pass, a
bucket whose interval (widened by far more than float rounding) holds no breakpoint takes the
level of any point of it; the values of the few buckets a breakpoint falls in are rounded one
by one with ``rdo_levels``'s own function.  So the levels are exactly ``rdo_levels``'s, and a
pass costs a table lookup per value instead of the rounding arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Buckets of the values (bucket 0 holds the zeros): a 16-bit key per value.
BUCKETS = 1 << 16
# Half-width of the margin around a breakpoint, relative to the largest magnitude the
# comparisons see (float64 rounding there is ~1e-16 of it), and of a bucket's interval, in
# buckets (the key's own rounding is ~1e-16 of the range).
WINDOW = 1e-9
BUCKET_MARGIN = 1e-6
# Values keyed at a time (bounded float64 temporaries).
CHUNK = 1 << 22
MIXED = np.iinfo(np.int64).min  # a bucket whose values take several levels


@dataclass(frozen=True)
class ValueBuckets:
    """Each value's bucket: 0 for a zero, else 1 + floor((value - lo) * scale) (at most BUCKETS - 1)."""

    key: np.ndarray  # uint16, one per value (flat)
    counts: np.ndarray  # int64, BUCKETS
    lo: float
    scale: float  # buckets per unit of value (0: every non-zero value is in bucket 1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each bucket's value interval, widened by BUCKET_MARGIN buckets."""
        b = np.arange(BUCKETS, dtype=np.float64) - 1
        if self.scale == 0:
            return np.full(BUCKETS, self.lo), np.full(BUCKETS, self.lo)
        return self.lo + (b - BUCKET_MARGIN) / self.scale, self.lo + (b + 1 + BUCKET_MARGIN) / self.scale


def value_buckets(flat: np.ndarray) -> ValueBuckets:
    """The buckets of a flat float array (finite values): made once per tensor, O(n)."""
    flat = np.asarray(flat).ravel()
    lo = float(flat.min()) if flat.size else 0.0
    hi = float(flat.max()) if flat.size else 0.0
    scale = (BUCKETS - 1) / (hi - lo) if hi > lo else 0.0
    key = np.empty(flat.size, np.uint16)
    for s in range(0, flat.size, CHUNK):
        part = flat[s : s + CHUNK]
        scaled = np.subtract(part, lo, dtype=np.float64)
        scaled *= scale
        np.minimum(scaled, BUCKETS - 2, out=scaled)
        scaled += 1
        k = scaled.astype(np.uint16)
        k[part == 0] = 0
        key[s : s + CHUNK] = k
    # counted a chunk at a time: bincount copies uint16 keys to intp, eight bytes per value
    counts = np.zeros(BUCKETS, np.int64)
    for s in range(0, key.size, CHUNK):
        counts += np.bincount(key[s : s + CHUNK], minlength=BUCKETS)
    return ValueBuckets(key, counts, lo, scale)


@dataclass(frozen=True)
class Levels:
    """The levels of the non-zero values: one per bucket, MIXED for a bucket whose values differ
    (the positions of those buckets' values, ascending, and their levels)."""

    by_bucket: np.ndarray  # int64, BUCKETS
    positions: np.ndarray  # int64
    mixed: np.ndarray  # int64

    def same(self, other: Levels) -> bool:
        return np.array_equal(self.by_bucket, other.by_bucket) and np.array_equal(self.mixed, other.mixed)


def _levels(
    flat: np.ndarray, vb: ValueBuckets, step: float, breakpoints: np.ndarray, choose: Callable, scale: float
) -> Levels:
    """The levels `choose` (exact, vectorised over x) gives the non-zero values; `choose` is
    constant in x between `breakpoints` except within WINDOW x `scale` of them."""
    used = vb.counts > 0
    used[0] = False  # the zeros
    eps = WINDOW * scale
    b = np.sort(breakpoints)
    low, high = vb.bounds()
    x_low, x_high = low / step, high / step
    inside = np.searchsorted(b, x_high + eps, side="right") - np.searchsorted(b, x_low - eps, side="left")
    candidate = used & (inside > 0)
    pure = used & ~candidate
    by_bucket = np.zeros(BUCKETS, np.int64)
    if pure.any():
        # no breakpoint within eps of the bucket: every point of it has the same level
        by_bucket[pure] = np.asarray(choose((x_low[pure] + x_high[pure]) / 2), np.int64)
    positions = np.zeros(0, np.int64)
    mixed = np.zeros(0, np.int64)
    if candidate.any():
        positions = np.flatnonzero(candidate[vb.key])
        keys = vb.key[positions]
        chosen = np.asarray(choose(flat[positions].astype(np.float64) / step), np.int64)
        first = np.zeros(BUCKETS, np.int64)
        first[keys[::-1]] = chosen[::-1]  # the last write wins: each bucket's first value
        differs = np.zeros(BUCKETS, bool)
        differs[keys[chosen != first[keys]]] = True
        one = candidate & ~differs
        by_bucket[one] = first[one]
        by_bucket[differs] = MIXED
        keep = differs[keys]
        positions, mixed = positions[keep], chosen[keep]
    return Levels(by_bucket, positions, mixed)


def _counts(vb: ValueBuckets, levels: Levels, max_level: int) -> np.ndarray:
    """How many values each level -max_level..max_level has (the tensor's zeros included)."""
    plain = (levels.by_bucket != MIXED) & (vb.counts > 0)
    plain[0] = False
    width = 2 * max_level + 1
    out = np.zeros(width, np.int64)
    np.add.at(out, levels.by_bucket[plain] + max_level, vb.counts[plain])
    out += np.bincount(levels.mixed + max_level, minlength=width)
    out[max_level] += int(vb.counts[0])
    return out


def rdo_bucket_levels(
    flat: np.ndarray,
    step: float,
    rd_factor: float,
    iterations: int,
    max_level: int,
    vb: ValueBuckets,
    choice: Callable,
) -> tuple[Levels, np.ndarray | None]:
    """``rdo_levels``'s passes on the buckets: the final levels and the rate costs of the last
    pass (None: plain rounding), with which `choice` (``ecq._rdo_choice``) gives any value's level."""
    used = np.flatnonzero(vb.counts[1:]) + 1
    low, high = vb.bounds()
    peak = float(max(np.max(np.abs(low[used])), np.max(np.abs(high[used])))) / step if used.size else 0.0
    integers = np.arange(-max_level, max_level + 2, dtype=np.float64)

    def plain(x):
        return np.clip(np.rint(x), -max_level, max_level)

    levels = _levels(flat, vb, step, integers - 0.5, plain, 1 + peak)
    rate_cost = None
    if rd_factor > 0 and used.size:
        k = np.arange(-max_level, max_level + 1, dtype=np.float64)
        n = k[k != 0]
        for _ in range(max(1, iterations)):
            level_counts = _counts(vb, levels, max_level).astype(np.float64)
            level_counts[level_counts == 0] = 0.5
            rc = rd_factor * -np.log2(level_counts / max(flat.size, 1))
            hi_vs_lo = k[:-1] + 0.5 + (rc[1:] - rc[:-1]) / 2
            zero_vs_n = (n * n + rc[(n + max_level).astype(np.intp)] - rc[max_level]) / (2 * n)
            scale = 1 + (peak + 1) ** 2 + float(np.max(np.abs(rc)))
            breakpoints = np.concatenate([integers, hi_vs_lo, zero_vs_n])
            new = _levels(flat, vb, step, breakpoints, lambda x, rc=rc: choice(x, None, rc, max_level), scale)
            changed = not new.same(levels)
            levels, rate_cost = new, rc
            if not changed:
                break
    return levels, rate_cost


def levels_array(levels: Levels, vb: ValueBuckets, dtype=np.int64) -> np.ndarray:
    """The flat levels array (zeros where the tensor has zeros): each value's bucket level (one
    gather from a small table), then the values of the mixed buckets."""
    table = np.where(levels.by_bucket == MIXED, 0, levels.by_bucket).astype(dtype)
    table[0] = 0
    out = table[vb.key]
    out[levels.positions] = levels.mixed
    return out


def values_array(levels: Levels, vb: ValueBuckets, step: np.ndarray) -> np.ndarray:
    """``levels_array(...).astype(step.dtype) * step`` without the levels array: each level's
    value computed once (the same product, in `step`'s dtype), gathered by bucket."""
    table = np.where(levels.by_bucket == MIXED, 0, levels.by_bucket).astype(step.dtype) * step
    table[0] = 0
    out = table[vb.key]
    out[levels.positions] = levels.mixed.astype(step.dtype) * step
    return out
