"""``ecq.rdo_levels`` on a tensor's value buckets: each rounding pass touches the values near a
decision boundary only, not all of them.

Without per-weight importance the level ``rdo_levels`` gives a value depends on x = value / step
alone, through comparisons of (x - n)² + rate[n] between floor(x), ceil(x) and 0.  Their
differences are linear in x, so the levels are piecewise constant in x, with a few breakpoints
per grid level: the integers (floor changes), k + 1/2 + (rate[k+1] - rate[k]) / 2 (ceil against
floor) and (n² + rate[n] - rate[0]) / 2n (n against zero).

The non-zero values are grouped once per tensor into ``BUCKETS`` value buckets (a counting sort:
``ValueBuckets``, reused for every step a search tries).  In a pass, a bucket whose values
[min, max] hold no breakpoint (widened by far more than float rounding) takes the level of its
smallest value; only the values of the few buckets a breakpoint falls in are rounded one by one,
with ``rdo_levels``'s own function.  So the levels are exactly ``rdo_levels``'s, each pass costs
about (breakpoints x values per bucket), and the levels are written out once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Buckets of the non-zero values (bucket 0 holds the zeros): a 16-bit key sorts in one radix pass.
BUCKETS = 1 << 16
# Half-width of the margin around a breakpoint, relative to the largest magnitude the
# comparisons see (float64 rounding there is ~1e-16 of it).
WINDOW = 1e-9
MIXED = np.iinfo(np.int64).min  # a bucket whose values take several levels


@dataclass(frozen=True)
class ValueBuckets:
    """A tensor's flat indices grouped by value bucket (bucket 0: its zeros, then ascending values)."""

    key: np.ndarray  # uint16 per value: its bucket
    order: np.ndarray  # flat indices, bucket by bucket (int32 below 2**31 elements)
    starts: np.ndarray  # int64, BUCKETS + 1: bucket b is order[starts[b]:starts[b + 1]]
    low: np.ndarray  # float64 per bucket: its smallest value (0 for an empty bucket)
    high: np.ndarray  # float64 per bucket: its largest value

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.starts)


def value_buckets(flat: np.ndarray) -> ValueBuckets:
    """The buckets of a flat float array (finite values): made once per tensor, O(n)."""
    flat = np.asarray(flat).ravel()
    nonzero = flat != 0
    lo = float(flat.min()) if flat.size else 0.0
    hi = float(flat.max()) if flat.size else 0.0
    key = np.zeros(flat.size, np.uint16)
    if hi > lo:
        scaled = np.subtract(flat, lo, dtype=np.float64)
        scaled *= (BUCKETS - 2) / (hi - lo)
        np.minimum(scaled, BUCKETS - 2, out=scaled)
        key[nonzero] = scaled[nonzero].astype(np.uint16) + 1
        del scaled
    else:
        key[nonzero] = 1
    del nonzero
    order = np.argsort(key, kind="stable")  # radix sort of 16-bit keys: O(n)
    counts = np.bincount(key, minlength=BUCKETS)
    if flat.size < 1 << 31:
        order = order.astype(np.int32)
    starts = np.zeros(BUCKETS + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    low = np.zeros(BUCKETS)
    high = np.zeros(BUCKETS)
    used = np.flatnonzero(counts[1:]) + 1
    if used.size:
        grouped = flat[order[starts[1] :]].astype(np.float64)
        at = starts[used] - starts[1]
        low[used] = np.minimum.reduceat(grouped, at)
        high[used] = np.maximum.reduceat(grouped, at)
    return ValueBuckets(key, order, starts, low, high)


@dataclass(frozen=True)
class Levels:
    """The levels of the non-zero values: one per bucket, MIXED for a bucket whose values differ
    (their levels in `mixed`, bucket by bucket)."""

    by_bucket: np.ndarray  # int64, BUCKETS
    mixed: np.ndarray  # int64

    def same(self, other: Levels) -> bool:
        return np.array_equal(self.by_bucket, other.by_bucket) and np.array_equal(self.mixed, other.mixed)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The indices of [starts[i], ends[i]) for every i, concatenated."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def _levels(
    flat: np.ndarray, vb: ValueBuckets, step: float, breakpoints: np.ndarray, choose: Callable, scale: float
) -> Levels:
    """The levels `choose` (exact, vectorised over x) gives the non-zero values; `choose` is
    constant in x between `breakpoints` except within WINDOW x `scale` of them."""
    counts = vb.counts
    used = counts > 0
    used[0] = False  # the zeros
    eps = WINDOW * scale
    b = np.sort(breakpoints)
    x_low, x_high = vb.low / step, vb.high / step  # as rdo_levels computes x: float64(value) / step
    inside = np.searchsorted(b, x_high + eps, side="right") - np.searchsorted(b, x_low - eps, side="left")
    mixed_candidates = used & (inside > 0)
    pure = used & ~mixed_candidates
    by_bucket = np.zeros(BUCKETS, np.int64)
    if pure.any():
        by_bucket[pure] = np.asarray(choose(x_low[pure]), np.int64)
    candidates = np.flatnonzero(mixed_candidates)
    mixed = np.zeros(0, np.int64)
    if candidates.size:
        idx = _ranges(vb.starts[candidates], vb.starts[candidates + 1])
        chosen = np.asarray(choose(flat[vb.order[idx]].astype(np.float64) / step), np.int64)
        # a candidate bucket whose values all took one level is a plain bucket
        seg = np.repeat(np.arange(candidates.size), counts[candidates])
        first = np.concatenate([[0], np.cumsum(counts[candidates])[:-1]])
        uniform = np.ones(candidates.size, bool)
        differs = chosen != chosen[first][seg]
        np.logical_and.at(uniform, seg[differs], False)
        by_bucket[candidates[uniform]] = chosen[first[uniform]]
        by_bucket[candidates[~uniform]] = MIXED
        keep = ~uniform[seg]
        mixed = chosen[keep]
    return Levels(by_bucket, mixed)


def _counts(vb: ValueBuckets, levels: Levels, max_level: int) -> np.ndarray:
    """How many values each level -max_level..max_level has (the tensor's zeros included)."""
    counts = vb.counts
    plain = (levels.by_bucket != MIXED) & (counts > 0)
    plain[0] = False
    width = 2 * max_level + 1
    out = np.bincount(levels.by_bucket[plain] + max_level, weights=counts[plain], minlength=width)
    out = np.rint(out).astype(np.int64)
    out += np.bincount(levels.mixed + max_level, minlength=width)
    out[max_level] += int(counts[0])
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
    counts = vb.counts
    used = np.flatnonzero(counts[1:]) + 1
    peak = float(max(np.max(np.abs(vb.low[used])), np.max(np.abs(vb.high[used])))) / step if used.size else 0.0
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
    mixed_buckets = np.flatnonzero(levels.by_bucket == MIXED)
    if mixed_buckets.size:
        out[vb.order[_ranges(vb.starts[mixed_buckets], vb.starts[mixed_buckets + 1])]] = levels.mixed
    return out
