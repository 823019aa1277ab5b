"""A ladder's gentlest rung measured early, once the ladder is failing: the harsher rungs of a
monotone chain are then not built when it misses the floor by far.

A ladder runs harshest first and backs off.  When every rung misses, each was built and judged
for nothing.  Where the rungs form a monotone chain (the same pass with more levels per tensor:
share's k-means widths; fewer bits never make a tensor more exact), the gentlest rung bounds
the others: a harsher one is at least as noisy, up to how far outputs stray from the weights'
error (the caller's slack).  So once a measured rung of the chain missed the floor (the SNR
floor, the KL limit: the caller's `miss_db`), the gentlest rung is built and judged before the
next harsher one; when it misses by more than the slack, the harsher rungs are recorded as
not built, with its miss.  Otherwise the ladder goes on as before, and at its own turn the
gentlest rung takes the verdict already measured (no second run).  Counts and measured values
only, never the clock.

With a `probe` (a judge of a few evenly spread verdict samples, ``verdict_probe``), the early
verdict is taken on the probe first: when the gentlest rung fits there, no rung is skipped, so
the full early verdict (a run over every verdict sample, spent for nothing whenever a middle
rung then fits) is not taken; the rung is judged at its own turn, if the ladder gets there.
When it misses on the probe, the full early verdict follows as without one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import numpy as np
import onnx

from ..errors import CompressorError
from ..evaluate import run_model
from ..measure import Judge
from . import fail_fast
from .ladder import Build, StageContext
from .static_probe import PROBE_SAMPLES, spread_index, sub_judge

# (metrics of a measured rung) -> by how many dB it missed the floor (None: it did not)
MissDb = Callable[[dict], float | None]
SkipRule = Callable[[Sequence[dict]], str | None]

# The probe is taken only when it is at most this share of the verdict's samples (below, the
# full verdict costs little more).
PROBE_SHARE = 0.25


def floor_miss_db(metrics: dict, measure) -> float | None:
    """By how many dB a measured candidate missed the SNR floor or the KL limit (the larger),
    or None when it missed neither (or the judge gates neither)."""
    misses = []
    snr = metrics.get("snr_db")
    if getattr(measure, "snr_gated", False) and snr is not None and math.isfinite(snr) and snr < measure.min_snr_db:
        misses.append(measure.min_snr_db - snr)
    kl = metrics.get("kl")
    if getattr(measure, "kl_gated", False) and kl is not None and math.isfinite(kl):
        limit = max(measure.max_kl, measure.kl_allowance)
        if limit > 0 and kl > limit:
            misses.append(10.0 * math.log10(kl / limit))
    return max(misses, default=None)


class GentlestFirst:
    """The gentlest rung of one ladder (`label`, `build`), measured at most once."""

    def __init__(
        self,
        ctx: StageContext,
        label: str,
        build: Build,
        chain: Collection[str],
        miss_db: MissDb,
        slack_db: float,
        any_failure: bool = False,
        probe: Judge | None = None,
    ):
        self.ctx, self.label, self._build, self.miss_db, self.slack_db = ctx, label, build, miss_db, slack_db
        self.chain = set(chain)  # the labels of the chain's rungs: a miss of one starts the early verdict
        # True: any failed rung of the chain (a build's error, a probe's skip) starts it too
        self.any_failure = any_failure
        self._built: tuple[onnx.ModelProto, dict] | None = None
        self._measured: tuple[dict, list | None] | None = None
        self.failed: str | None = None  # the build's error, if it raised
        self.probe = probe
        self.probe_fits: bool | None = None  # the probe's verdict, once taken

    def build(self) -> tuple[onnx.ModelProto, dict]:
        """The rung's own build (Attempt.build): the candidate built early, if it was."""
        if self._built is None:
            self._built = self._build()
        return self._built

    def metrics(self, candidate: onnx.ModelProto) -> tuple[dict, list | None] | None:
        """The verdict taken early on `candidate`, if it is the one built early (Attempt.measured)."""
        if self._measured is not None and self._built is not None and candidate is self._built[0]:
            return self._measured
        return None

    def _measure(self) -> tuple[dict, list | None] | None:
        if self._measured is None and self.failed is None:
            try:
                candidate, _ = self.build()
            except CompressorError as e:  # the rung's own turn reports it
                self.failed = str(e)
                return None
            if self.probe is not None and self.probe_fits is None:
                self.probe_fits = self.miss_db(self.probe.scores(run_model(candidate, self.probe.data))) is None
            if self.probe_fits:
                return None  # fits on the probe: no rung to skip, no full early verdict
            # Stopped once it misses by more than the slack: the rule's outcome is then known.
            self._measured = fail_fast.verdict(self.ctx.measure, candidate, self.slack_db)
        return self._measured

    def skip(self, harsher: str) -> Callable[[Sequence[dict]], str | None]:
        """The skip rule (Attempt.skip) of a rung `harsher` than the gentlest one."""

        def rule(tried: Sequence[dict]) -> str | None:
            if not any(self._failed(t) for t in tried):
                return None  # no rung of the chain failed yet: no early verdict (it would cost a run)
            measured = self._measure()
            if measured is None:
                return None
            miss = self.miss_db(measured[0])
            if miss is None or miss <= self.slack_db:
                return None
            return (
                f"not built: the gentlest setting, {self.label}, missed by {miss:.1f} dB "
                f"(more than {self.slack_db:g}), and {harsher} can only be noisier"
            )

        return rule

    def _failed(self, tried: dict) -> bool:
        if tried["option"] not in self.chain:
            return False
        if "error" in tried:
            return self.any_failure
        return bool(self.miss_db(tried))


def verdict_probe(ctx: StageContext) -> Judge | None:
    """The judge of PROBE_SAMPLES evenly spread verdict samples, for an early verdict that may
    make the full one needless; None when the judge gates no SNR (a few samples' counts say
    little), the data is recurrent, the reference rows are not one per sample, or the probe
    would be more than PROBE_SHARE of the verdict."""
    judge = ctx.measure
    data = judge.data
    if data is None or data.recurrent or not getattr(judge, "snr_gated", False):
        return None
    if data.size * PROBE_SHARE < PROBE_SAMPLES:
        return None
    refs = judge.reference_outputs or []
    if not refs or not all(np.ndim(r) and np.shape(r)[0] == data.size for r in refs):
        return None
    return sub_judge(judge, spread_index(data.size, PROBE_SAMPLES))


def either_skip(first: SkipRule | None, second: SkipRule | None) -> SkipRule:
    """A skip rule: `first`'s reason, else `second`'s (either may be None)."""

    def rule(tried: Sequence[dict]) -> str | None:
        return (first(tried) if first else None) or (second(tried) if second else None)

    return rule
