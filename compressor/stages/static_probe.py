"""A static-activation rung tried cheaply first: calibrated and judged on a few samples.

Static int8 activations need the calibration ranges of every activation: one capture of every
intermediate tensor over the whole calibration set, the costliest single step of the quantize
stage on a model with large activations (raw audio: hundreds of MB per sample, in several
passes).  When static activations are far off — the output SNR tens of dB under the judge's floor
— the ranges of a few samples say so as well as those of all.  The probe calibrates on
``PROBE_SAMPLES`` evenly spread calibration samples, runs the result on as many evenly spread
verdict samples and, when its output SNR misses the floor by more than ``PROBE_MISS_DB``, the
plain static rungs are recorded as not measured (their full calibration and verdicts skipped).
The mixed-precision rungs (noisy layers float for an output-SNR floor on the calibration data)
are probed the same way: their group testing runs on the probe's few calibration samples (ranges
shared with the plain probes), and the layers it keeps float are judged on the probe's verdict
samples; a miss by more than ``PROBE_MISS_DB`` skips the rung's full calibration, its group
testing on every calibration sample and its verdict.
Otherwise nothing changes: the rungs are built and judged on all the data as before.  Only where
the judge gates the output SNR (fidelity, regressors and other values) and the calibration set is
at least ``PROBE_MIN_CALIB`` samples; counts only, never the clock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..errors import CompressorError
from ..evaluate import run_model
from ..measure import Judge
from ..passes.quantize import QuantizeSettings, Shared, quantize
from .ladder import StageContext

# Samples the probe calibrates on and is judged on.
PROBE_SAMPLES = 4
# The probe runs only when the calibration set is at least this many samples (below, the full
# calibration costs little more than the probe).
PROBE_MIN_CALIB = 4 * PROBE_SAMPLES
# A probe this many dB under the SNR floor rejects the plain static rungs unmeasured: far more
# than a few samples' ranges and centred SNR can be off by.
PROBE_MISS_DB = 10.0


def probe_applies(ctx: StageContext) -> bool:
    """Whether a probe can judge the static rungs: an SNR-gated judge whose reference outputs
    have one row per verdict sample, and a calibration set large enough to be worth it."""
    judge, calib = ctx.measure, ctx.calib_data
    data = judge.data
    if calib is None or data is None or not getattr(judge, "snr_gated", False):
        return False
    if calib.recurrent or data.recurrent or calib.size < PROBE_MIN_CALIB or data.size < PROBE_SAMPLES:
        return False
    refs = judge.reference_outputs or []
    return bool(refs) and all(np.ndim(r) and np.shape(r)[0] == data.size for r in refs)


def sub_judge(judge: Judge, index: np.ndarray) -> Judge:
    """The judge restricted to the verdict samples at `index` (its reference rows sliced)."""
    sub = Judge(
        judge.data.select(index),
        judge.mode,
        judge.budget,
        judge.min_snr_db,
        judge.explicit_snr,
        max_kl=judge.max_kl,
    )
    sub.reference_outputs = [np.asarray(r)[index] for r in judge.reference_outputs]
    return sub


def spread_index(size: int, n: int) -> np.ndarray:
    """`n` indices evenly spread over `size` (as ``Dataset.spread``)."""
    return (np.arange(n) * (size / n)).astype(np.int64) if n < size else np.arange(size)


class StaticProbe:
    """The probes of one quantize stage, one per plain static rung's settings, each measured on
    that rung's turn; the probes share their few samples' ranges (``Shared``)."""

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.calib = ctx.calib_data.spread(PROBE_SAMPLES)
        self.judge = sub_judge(ctx.measure, spread_index(ctx.measure.data.size, PROBE_SAMPLES))
        self.shared = Shared()
        self.misses: dict[tuple, float | None] = {}
        self.snrs: dict[bytes, float | None] = {}  # a probe model's SNR by its serialization's SHA-256
        self.kept_float: dict[tuple, list] = {}  # layers a mixed-precision probe kept float
        self.models: dict[tuple, object] = {}  # the mixed-precision probes' models (stages/mixed_bound.py)
        self.builds = 0

    def miss_db(self, settings: QuantizeSettings) -> float | None:
        """By how many dB static activations with `settings` (a mixed-precision rung's
        ``min_output_snr`` included) miss the floor on the probe's samples (None: no miss, or the
        build failed: the rung's own build says why)."""
        settings = replace(settings, activations="static")
        key = tuple(sorted(vars(settings).items()))
        if key not in self.misses:
            self.misses[key] = None
            try:
                model, stats = quantize(self.ctx.model, self.calib, settings, self.shared)
            except CompressorError:
                return None
            self.builds += 1
            self.kept_float[key] = stats.get("kept_float_mixed", [])
            if settings.min_output_snr is not None:
                self.models[key] = model
            floor = self.ctx.measure.min_snr_db
            # Two settings can build the same model (no small constant to keep float, say): one run.
            digest = hashlib.sha256(model.SerializeToString()).digest()
            if digest not in self.snrs:
                self.snrs[digest] = self.judge.scores(run_model(model, self.judge.data))["snr_db"]
            snr = self.snrs[digest]
            if snr is not None and (math.isnan(snr) or snr < floor):
                self.misses[key] = math.inf if math.isnan(snr) else floor - snr
        return self.misses[key]

    def model_of(self, settings: QuantizeSettings):
        """The probe's model of a mixed-precision rung and the layers it kept float (None, []:
        not built, or its build failed)."""
        self.miss_db(settings)
        key = tuple(sorted(vars(replace(settings, activations="static")).items()))
        return self.models.get(key), self.kept_float.get(key, [])

    def quantizes_every_layer(self, settings: QuantizeSettings) -> bool:
        """Whether the probe of a mixed-precision rung kept no layer float on its samples (it
        built the plain static rung: what bounds that rung bounds it; False if not built)."""
        self.miss_db(settings)
        key = tuple(sorted(vars(replace(settings, activations="static")).items()))
        return key in self.kept_float and not self.kept_float[key]

    def skip(self, settings: QuantizeSettings):
        """The ladder's skip rule (``Attempt.skip``) for the plain static rung with `settings`."""

        def rule(_tried: Sequence[dict]) -> str | None:
            miss = self.miss_db(settings)
            if miss is None or miss <= PROBE_MISS_DB:
                return None
            return (
                f"not measured: calibrated on {PROBE_SAMPLES} samples, it missed the SNR floor by {miss:.1f} dB "
                f"on {PROBE_SAMPLES} verdict samples (more than {PROBE_MISS_DB:g})"
            )

        return rule
