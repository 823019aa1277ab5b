"""How many thresholded decisions a candidate puts at risk: a margin-aware upper bound.

A probability output (a sigmoid compared with a threshold: speech / not, per step or per
sample) was judged by the count of flipped decisions.  A count sees only the decisions that
happened to sit within the perturbation's reach on the verdict's samples: when those are easier
(fewer margins near the threshold) than the task's inputs, a candidate passes at "0.8 points" and
loses twice that on the task.  The decision risk replaces the count by two things a count lacks:

* every decision counts by how close it came: 1 when it flipped, else the chance that a
  perturbation of the size it received would have crossed its margin,
  ``Phi(-|margin| / |move|)``, the margin and the move measured in logits (the reference's
  ``logit(p) - logit(threshold)``, and the candidate's logit minus it), where a sigmoid's
  noise is comparable at every confidence;
* the rate is a one-sided upper confidence bound over the independent units the decisions
  come in, not the observed mean: ``mean + t(confidence, U - 1) * sd / sqrt(U)`` over the U
  units' mean risks.  A unit is one row of the output, or for recurrent data one sequence (its
  steps share a state and a recording: 64 decisions of one clip are not 64 independent
  samples).  Few units, or units that disagree, widen the bound.

The risk in points is 100 x the bound; it is never below the observed flip rate (each unit's
risk is at least its flip rate; the bound at least their mean).  With one unit it is the mean.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

# One-sided confidence of the bound (the usual 95 %).
CONFIDENCE = 0.95
# Probabilities are clipped here before the logit (a saturated sigmoid's 0 or 1).
EPSILON = 1e-7


def logits(values: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """float64 logit(p) - logit(threshold) of probabilities: the signed margin of each decision."""
    p = np.clip(np.asarray(values, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    t = min(max(threshold, EPSILON), 1.0 - EPSILON)
    return np.log(p / (1.0 - p)) - math.log(t / (1.0 - t))


def flip_risks(reference: np.ndarray, output: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Each decision's risk (float64, the reference's shape): 1 where the output's decision
    (value > threshold) differs from the reference's, else Phi(-|margin| / |move|) in logits
    (0 for a decision that did not move)."""
    ref, out = np.asarray(reference), np.asarray(output)
    margin = logits(ref, threshold)
    move = np.abs(logits(out, threshold) - margin)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(move > 0, np.abs(margin) / np.where(move > 0, move, 1.0), np.inf)
    risk = _normal_cdf(-ratio)
    flipped = (ref > threshold) != (out > threshold)
    risk[flipped] = 1.0
    # A non-finite output is a lost decision.
    risk[~np.isfinite(out.astype(np.float64))] = 1.0
    return risk


def unit_rates(risks: np.ndarray, units: int = 0) -> np.ndarray:
    """The mean risk of each unit: rows of `risks` (axis 0) cycle over `units` sequences (row
    j belongs to sequence j % units: the per-sample layout of recurrent data), or each row is
    its own unit (`units` 0)."""
    per_row = risks.reshape(risks.shape[0], -1).mean(axis=1) if risks.ndim else risks.reshape(1)
    if units <= 1 or len(per_row) % units:
        return per_row if units != 1 else per_row.mean(keepdims=True)
    return per_row.reshape(-1, units).mean(axis=0)


def mean_upper_bound(values: np.ndarray, confidence: float = CONFIDENCE) -> float:
    """One-sided upper confidence bound of the mean of `values` (Student's t over them); the
    mean itself with fewer than 2 values."""
    n = len(values)
    if n == 0:
        return 0.0
    mean = float(np.mean(values))
    if n < 2:
        return mean
    spread = float(np.std(values, ddof=1))
    return mean + _t_quantile(confidence, n - 1) * spread / math.sqrt(n)


def upper_bound(rates: np.ndarray, confidence: float = CONFIDENCE) -> float:
    """``mean_upper_bound`` of the units' rates, within [mean, 1]."""
    return min(1.0, mean_upper_bound(rates, confidence)) if len(rates) else 0.0


def decision_risk(
    reference: np.ndarray,
    output: np.ndarray,
    units: int = 0,
    threshold: float = 0.5,
    confidence: float = CONFIDENCE,
) -> float:
    """The decision risk in points (see the module's doc): 100 x the upper bound of the units'
    mean risks."""
    if np.size(reference) == 0:
        return 0.0
    return 100.0 * upper_bound(unit_rates(flip_risks(reference, output, threshold), units), confidence)


def unit_count(rows: int, units: int = 0) -> int:
    """How many units `rows` decisions' rows make (see ``unit_rates``)."""
    if units == 1:
        return 1
    return units if units > 1 and rows % units == 0 else rows


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    # Imported on first use, as output_kinds' regions do: scipy loads in half a second.
    from scipy import special

    return special.ndtr(x)


def _t_quantile(confidence: float, dof: int) -> float:
    return float(special.stdtrit(dof, confidence))
