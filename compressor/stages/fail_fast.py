"""A verdict that stops once the SNR floor is out of reach (by a margin).

Used for the gentlest rung's early verdict (stages/gentlest_first.py), stopped once it misses
by more than the slack that decides the skip: the same skips, fewer samples run.  Not for the
ladder's own verdicts: the misses they report feed the skip rules (share's beyond_reach) and
the retry without pruning, which a bound would change (benchmarks/README.md, branch dnsfast2).

A verdict runs the candidate over every verdict sample, but a rung that misses the SNR floor
by several dB usually shows it after a few: the output noise of the samples run so far only
grows with the others (each sample adds its squared error), while the signal power it is
compared with is the reference's, known for all the samples before the run (a regressor's
noise is taken at its upper confidence bound over the samples, at least the sum plus the
spread the samples run so far already show).  So after each
batch the SNR the full run can reach at most is known; once that bound is below the floor
(by `margin_db`), the rung fails whatever the other samples give, and they are not run.  The
rejected rung's row then says how many samples were run and its SNR is that bound (its true
SNR is lower: the miss it reports is a lower bound of the true miss).  A rung that fits, or one
whose bound stays above the floor until the end, is run on every sample and judged exactly as
``Measure.__call__`` judges it (the same outputs and metrics).

Only where the verdict is an SNR floor over sums of squared errors of the samples: fidelity
mode, non-recurrent data, every gated output a regressor, values or probabilities with one row
per verdict sample (a detection's box SNR or a recurrent model's sequences are not such sums).
Counts only, never the clock.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from scipy import special

from ..decision_risk import CONFIDENCE
from ..evaluate import make_session, run_batch_size, run_batches
from ..measure import RUN_KEYS, Measure
from ..output_kinds import SNR_KINDS

# The gated output kinds whose SNR is their reference power over the summed squared errors
# of the samples (a regressor's noise at its upper confidence bound is at least that sum).
SUMMED_KINDS = ("regressor", "values", "probability")


def gated_outputs(measure: Measure) -> list[int] | None:
    """The indices of the outputs the SNR floor gates, or None when a verdict on them cannot
    stop early (see the module's doc)."""
    data = getattr(measure, "data", None)
    if data is None or data.recurrent or not getattr(measure, "snr_gated", False):
        return None
    refs = measure.references
    gated = [i for i, r in enumerate(refs) if r.kind in SNR_KINDS or (measure.explicit_snr and r.kind != "exact")]
    outputs = measure.reference_outputs or []
    if not gated or any(refs[i].kind not in SUMMED_KINDS for i in gated):
        return None
    if any(np.ndim(outputs[i]) == 0 or np.shape(outputs[i])[0] != data.size for i in gated):
        return None
    return gated


def snr_bound_db(power: float, noise: float) -> float:
    """10 log10(power / noise), +inf without noise, -inf for an infinite noise or no power."""
    if not math.isfinite(noise):
        return -math.inf
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(power / noise) if power > 0 else -math.inf


def noise_lower_bound(per_row: np.ndarray, rows: int, regressor: bool) -> float:
    """The least noise power the full run of `rows` samples can have, from the per-sample noise
    powers `per_row` of the samples run so far: their sum; for a regressor (its noise at the
    upper confidence bound of the mean, ``output_kinds.regressor_noise_bound``) also the sum
    plus t·sqrt(rows)·sd, the sd of all the samples at least sqrt(k·var_k / (rows - 1)) (the
    known k samples' spread, ddof 0: the others can only add to it)."""
    total = float(per_row.sum())
    k = per_row.size
    if not regressor or rows < 2 or k < 2 or not math.isfinite(total):
        return total
    t = float(special.stdtrit(rows - 1, CONFIDENCE))
    return total + t * math.sqrt(rows * k * float(per_row.var()) / (rows - 1))


def verdict(measure: Measure, model: onnx.ModelProto, margin_db: float = 0.0) -> tuple[dict, list[np.ndarray] | None]:
    """The run's metrics of `model` and its outputs, as ``measure(model)``; or, once the SNR
    the full run can reach is under the floor by more than `margin_db`, the metrics of a
    rejected rung (``snr_db`` that bound, ``stopped_after`` the samples run) and no outputs."""
    gated = gated_outputs(measure)
    if gated is None:
        return measure(model)
    data = measure.data
    batch = measure.batch_size or run_batch_size(model, data)
    if batch >= data.size:
        return measure(model)  # one batch: nothing to stop early
    refs = measure.references
    powers = [refs[i].centred_power if refs[i].centred_power > 0 else refs[i].raw_power for i in gated]
    regressor = [refs[i].kind == "regressor" for i in gated]
    per_row: list[list[np.ndarray]] = [[] for _ in gated]  # each gated output's noise per sample
    floor = measure.min_snr_db - margin_db
    chunks: list[list[np.ndarray]] = []
    rows = 0
    for outs in run_batches(make_session(model), data, batch):
        chunks.append(outs)
        n = int(np.shape(outs[gated[0]])[0])
        for j, i in enumerate(gated):
            ref = np.asarray(measure.reference_outputs[i][rows : rows + n], dtype=np.float64)
            diff = np.asarray(outs[i], dtype=np.float64) - ref
            per_row[j].append(np.square(diff).reshape(n, -1).sum(axis=1))
        rows += n
        noise = [noise_lower_bound(np.concatenate(p), data.size, r) for p, r in zip(per_row, regressor)]
        bound = min(snr_bound_db(p, e) for p, e in zip(powers, noise))
        if rows < data.size and not bound >= floor:
            metrics = {key: None for key in RUN_KEYS}
            metrics.update(snr_db=bound, stopped_after={"samples": rows, "of": data.size})
            return metrics, None
    outputs = [
        np.concatenate([c[i] for c in chunks], axis=0) if chunks[0][i].ndim else np.stack([c[i] for c in chunks])
        for i in range(len(chunks[0]))
    ]
    scores = measure.scores(outputs)
    return {key: scores[key] for key in RUN_KEYS}, outputs
