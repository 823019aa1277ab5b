"""The quantize stage: int8 QDQ.  Its ladder goes from the recipe's activations to gentler
modes (static -> weight-only), giving back int8 small constants first and trying mixed
precision (sensitive layers kept float) before giving up on static activations."""

from __future__ import annotations

import math
from dataclasses import replace

from ..errors import CompressorError
from ..options import QuantizeOptions
from ..passes.quantize import QuantizeSettings, Shared, quantize
from ..passes.quantize.ops_tables import SMALL_ROLES
from .ladder import Attempt, Ladder, MustShrink, StageContext, StageResult, model_bytes, run_ladder

NAME = "quantize"

# Output-SNR floors (on the calibration data) of the mixed-precision rungs: each quantizes the
# layers it can, least noisy first, keeping its floor.  The layers are ranked once without running
# the model; each rung is a group testing along that ranking (O(log layers) runs, measurements
# shared by the rungs).  Still whole-model runs: only up to this size.
# When the judge gates the output SNR, the floors are its own floor plus these margins, less what
# the stages before spent (noise powers add).
MIXED_OUTPUT_SNR_FLOORS_DB = (30.0, 40.0)
MIXED_SNR_MARGINS_DB = (3.0, 8.0)
MIXED_PRECISION_MAX_BYTES = 64 << 20

LABELS = {
    "static": "int8 weights + static int8 activations",
    "dynamic": "int8 weights + dynamic activations",
    "none": "int8 weights only",
}
# Everything stayed float (subgraphs, sensitive layers): Q/DQ pairs would only add bytes.
NOTHING_QUANTIZED = MustShrink("no size gain: nothing was quantized", "quantized nothing, trying the next setting")


def mixed_floors(ctx: StageContext) -> list[float]:
    """Output-SNR floors (dB, against the stage's input) of the mixed-precision rungs."""
    judge = ctx.measure
    if not getattr(judge, "snr_gated", False):
        return list(MIXED_OUTPUT_SNR_FLOORS_DB)
    spent = ctx.previous.metrics.get("snr_db") if ctx.rows else None
    spent_noise = 10.0 ** (-spent / 10.0) if spent is not None and math.isfinite(spent) else 0.0
    floors = []
    for margin in MIXED_SNR_MARGINS_DB:
        left = 10.0 ** (-(judge.min_snr_db + margin) / 10.0) - spent_noise
        if left > 0:
            floors.append(round(-10.0 * math.log10(left), 1))
    return floors


def run(opts: QuantizeOptions, ctx: StageContext) -> StageResult:
    model, calib_data = ctx.model, ctx.calib_data
    adaptive = opts.adaptive
    shared = any(r.stage == "share" and r.applied for r in ctx.rows)
    activations = opts.activations
    if activations == "static" and calib_data is None:
        activations = "none"
    # After share, 7-bit weights: with 8 bits the shared tensors are more accurate on a
    # per-channel grid than on their codebook's, so quantize would drop the codebooks and the
    # container would grow.  Without codebooks, quantize measures which range is better here.
    settings = QuantizeSettings(
        per_channel=opts.per_channel,
        symmetric=opts.symmetric,
        calibration=opts.calibration,
        exclude=opts.exclude,
        small_constants=opts.small_constants,
        reduce_range=True if shared else None,
    )
    modes = [activations]
    if adaptive:
        modes += [a for a in ("static", "none") if a != activations and (a != "static" or calib_data is not None)]
        # weight-only is the gentlest; never try a harsher mode after a gentler one
        modes = modes[: modes.index("none") + 1] if "none" in modes else modes
    first: dict = {}
    shared = Shared()  # calibration ranges, reference outputs and measured candidates, for every rung

    def build(mode: str, settings: QuantizeSettings):
        return quantize(model, calib_data if mode == "static" else None, replace(settings, activations=mode), shared)

    def first_attempt(mode: str, settings: QuantizeSettings):
        quantized, stats = build(mode, settings)
        first["small"] = any(w.get("role") in SMALL_ROLES + ("elementwise",) for w in stats["weights"])
        return quantized, stats

    def without_small_constants(mode: str, settings: QuantizeSettings):
        if not first.get("small", True):
            raise CompressorError("no small constants were quantized: nothing to give back")
        return build(mode, settings)

    attempts = []
    for i, mode in enumerate(modes):
        attempts.append(
            Attempt(
                LABELS[mode],
                (lambda m=mode, s=settings: first_attempt(m, s))
                if i == 0
                else (lambda m=mode, s=settings: build(m, s)),
            )
        )
        if adaptive and i == 0 and settings.small_constants:
            # int8 biases and norm parameters are the first thing to give back: the same
            # setting with them in float, then the rest of the ladder without them.
            settings = replace(settings, small_constants=False)
            attempts.append(
                Attempt(
                    f"{LABELS[mode]}, small constants float",
                    lambda m=mode, s=settings: without_small_constants(m, s),
                )
            )
        if adaptive and mode == "static" and model_bytes(model) <= MIXED_PRECISION_MAX_BYTES:
            # Mixed precision before giving up on activations: a few layers usually carry most
            # of the error, so keep the noisiest ones in float, as few as reach the floor.
            for floor in mixed_floors(ctx):
                mixed = replace(settings, min_output_snr=floor)
                attempts.append(
                    Attempt(
                        f"{LABELS[mode]}, noisy layers float for {floor:g} dB output SNR",
                        lambda s=mixed: build("static", s),
                    )
                )
    return run_ladder(Ladder(NAME, attempts, adaptive, must_shrink=NOTHING_QUANTIZED), ctx)
