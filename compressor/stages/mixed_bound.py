"""A mixed-precision rung not built when keeping layers float only adds bytes (objective size).

Quantize's ladder tries, after the plain static rungs (every layer int8, activations too),
the mixed-precision rungs: the noisiest layers kept float until the output SNR on the
calibration data reaches a floor.  Their full build is the stage's costliest step: group
testing with whole-model runs over every calibration sample.  With objective "size" a rung
is only kept when it packs smaller than int8 weights only (``quantize.WeightOnlyPacked``).

When a plain static rung packed no smaller than weight-only (it was rejected unmeasured),
and the rung's probe (``static_probe``: the same group testing on a few calibration samples)
kept layers float and packs no smaller than that plain rung, keeping layers float adds bytes
here: the full build keeps float either no layer (the plain build, dominated) or the layers
the same ranking puts first, which add bytes as the probe's did.  The rung is then recorded
as not built (an estimate, as the probe's other verdicts are: the full build's float layers
are chosen on more samples).  Counts and packed sizes only, never the clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..passes.quantize import QuantizeSettings
from .gentlest_first import SkipRule
from .ladder import StageContext
from .static_probe import PROBE_SAMPLES, StaticProbe


class PlainSizes:
    """The packed sizes of the plain static builds (no layer kept float) that packed no smaller
    than weight-only (``WeightOnlyPacked.dominates`` records them here)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def add(self, size: int) -> None:
        self.sizes.append(size)


def dominated_mixed(
    ctx: StageContext, probe: StaticProbe, mixed: QuantizeSettings, plain: PlainSizes, weight_only: int | None
) -> SkipRule:
    """The skip rule of the mixed-precision rung `mixed`: its reason when a plain static build
    packed to at least `weight_only` bytes and the rung's probe model packs to at least that
    build's size (see the module docstring); None otherwise (build it)."""

    def rule(_tried: Sequence[dict]) -> str | None:
        if weight_only is None or not plain.sizes:
            return None
        model, floats = probe.model_of(mixed)
        if model is None or not floats:
            return None  # no float layer on the probe: nothing says what one costs
        smallest = min(plain.sizes)
        size = ctx.packed_size(model)
        if size < smallest:
            return None
        return (
            f"not built: keeping layers float adds bytes here: its probe ({len(floats)} layers float on "
            f"{PROBE_SAMPLES} samples) packs to {size:,} bytes, no smaller than every layer int8 "
            f"({smallest:,}), itself no smaller than int8 weights only's {weight_only:,} (objective size)"
        )

    return rule
