"""The largest allowance that fits, stepped by the measured margin instead of fixed factors.

``measure.search_allowance`` grows or shrinks an allowance by a fixed factor until the verdict
changes, then bisects: about eight whole-model runs whatever each run said.  When the verdict
has a continuous margin — the output SNR above its floor, in dB — each run also says how far
the candidate is from the edge.  The output noise of a candidate grows about in proportion to
its allowance (the summed layer errors it was allocated for: small independent errors add), so
an allowance `a` measured `m` dB above the floor predicts the edge at a · 10^(m / 10); with
two measured allowances the slope is measured too (a secant in log-allowance vs dB).  The
search stops when a fitting candidate is within ``STOP_MARGIN_DB`` of the floor or the bracket
is `resolution` narrow: two to four runs where the fixed steps took eight.  A candidate that
misses by less than ``STOP_MARGIN_DB`` marks the edge as closely as the measure can (its SNR on
a few samples moves by as much between neighbouring allowances): the next one aims
``STOP_MARGIN_DB`` inside the floor, and the first that fits after such a near miss ends the
search, whatever its margin.  A run without a
margin (the loss in points is over its budget: a count, no distance) steps by the fixed
factor, or bisects the bracket, as ``search_allowance`` does.  Plans come from the measured
margins (counts of the data), never from the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# A fitting candidate this close to the floor (dB) ends the search: one more run could add at
# most this much noise (a quarter more allowance at slope 1, fewer zeros than that: each
# tensor's curve is concave).  Closer stops cost runs on a measure that is not monotone.
STOP_MARGIN_DB = 1.0
# The next candidate aims this far inside the floor (dB), so that it usually fits.
AIM_DB = 0.2
# Secant slopes (dB of margin per dB of allowance) are kept in this range: noise is about
# proportional to the allowance (slope 1); a flat or steep measured piece would jump too far.
MIN_SLOPE, MAX_SLOPE = 0.3, 3.0
# One prediction moves the allowance by at most this factor either way (the search's bounds
# limit it too): a miss of tens of dB is one jump, not several steps of a fixed size.
MAX_FACTOR = 1000.0

# measure(allowance) -> (fits, margin in dB or None), or None once the runs are spent.
Measured = tuple[bool, float | None]


def margin_allowance(
    measure: Callable[[float], Measured | None],
    start: float,
    upper: float,
    lower: float,
    step: float,
    resolution: float,
    max_steps: int,
) -> tuple[float | None, float | None]:
    """The largest allowance in [`lower`, `upper`] whose candidate fits, from `start`; returns
    (largest fitting, smallest failing) measured, as ``measure.search_allowance``.

    `step`: the fixed factor for a run without a margin; `resolution`: the bracket's width
    (hi / lo - 1) at which the search stops; at most `max_steps` runs."""
    points: dict[float, Measured] = {}
    lo = hi = None
    near_miss = False
    allowance: float | None = start
    for _ in range(max_steps):
        if allowance is None:
            break
        measured = measure(allowance)
        if measured is None:
            break
        points[allowance] = measured
        ok, margin = measured
        if ok:
            lo = allowance if lo is None else max(lo, allowance)
        else:
            hi = allowance if hi is None else min(hi, allowance)
        if ok and margin is not None and (margin <= STOP_MARGIN_DB or near_miss):
            break  # at the edge: nothing worth a run is left
        near_miss = near_miss or (not ok and margin is not None and -STOP_MARGIN_DB <= margin)
        aim = STOP_MARGIN_DB if near_miss else AIM_DB
        allowance = next_allowance(points, lo, hi, upper, lower, step, resolution, aim)
    return lo, hi


def next_allowance(
    points: dict[float, Measured],
    lo: float | None,
    hi: float | None,
    upper: float,
    lower: float,
    step: float,
    resolution: float,
    aim: float = AIM_DB,
) -> float | None:
    """The next allowance to measure, or None when the search is done (see module docstring);
    a prediction aims `aim` dB inside the floor."""
    if lo is not None and hi is not None and hi / lo < 1.0 + resolution:
        return None
    if hi is None and lo is not None and lo >= upper:
        return None  # every tensor at the top of its curve: nothing more to gain
    if lo is None and hi is not None and hi <= lower:
        return None  # even the smallest allowance does not fit
    anchor = lo if hi is None else hi if lo is None else _nearest_edge(points, lo, hi)
    margin = points[anchor][1]
    if margin is None or not math.isfinite(margin):
        # no distance to the edge: the fixed step, or the bracket's geometric middle
        guess = anchor * step if points[anchor][0] else anchor / step
    else:
        slope = _slope(points, lo, hi)
        guess = anchor * 10 ** ((margin - aim) / (10.0 * slope))
        guess = min(max(guess, anchor / MAX_FACTOR), anchor * MAX_FACTOR)
    guess = min(max(guess, lower), upper)
    if lo is not None and hi is not None and not lo < guess < hi:
        guess = math.sqrt(lo * hi)
    if guess in points:
        return None
    return guess


def _nearest_edge(points: dict[float, Measured], lo: float, hi: float) -> float:
    """Of the bracket's ends, the one whose margin is nearer the floor (the fitting one when
    neither has a margin)."""
    m_lo, m_hi = points[lo][1], points[hi][1]
    if m_hi is None or not math.isfinite(m_hi):
        return lo
    if m_lo is None or not math.isfinite(m_lo):
        return hi
    return lo if abs(m_lo) <= abs(m_hi) else hi


def _slope(points: dict[float, Measured], lo: float | None, hi: float | None) -> float:
    """dB of margin lost per dB of allowance between the bracket's ends (or the two measured
    allowances nearest the edge), within [MIN_SLOPE, MAX_SLOPE]; 1 with fewer than two margins."""
    known = sorted((a, m) for a, (_, m) in points.items() if m is not None and math.isfinite(m))
    pair = None
    if lo is not None and hi is not None and lo in dict(known) and hi in dict(known):
        pair = (lo, dict(known)[lo]), (hi, dict(known)[hi])
    elif len(known) >= 2:
        pair = tuple(sorted(known, key=lambda p: abs(p[1]))[:2])
    if pair is None or pair[0][0] == pair[1][0]:
        return 1.0
    (a1, m1), (a2, m2) = pair
    slope = (m1 - m2) / (10.0 * math.log10(a2 / a1))
    return min(max(slope, MIN_SLOPE), MAX_SLOPE)
