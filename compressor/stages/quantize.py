"""The quantize stage: int8 QDQ.  Its ladder goes from the recipe's activations to gentler
modes (static -> weight-only), giving back int8 small constants first and trying mixed
precision (sensitive layers kept float) before giving up on static activations."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

from ..errors import CompressorError
from ..options import QuantizeOptions
from ..passes.quantize import QuantizeSettings, Shared, quantize, size_bound
from ..passes.quantize.ops_tables import SMALL_ROLES
from ..passes.quantize.subgraph_weights import weights_left_in_subgraphs
from ..report import StageRow
from .gentlest_first import GentlestFirst, SkipRule, either_skip, floor_miss_db
from .ladder import Attempt, Ladder, MustShrink, StageContext, StageResult, model_bytes, run_ladder
from .mixed_bound import PlainSizes, dominated_mixed
from .mixed_bytes import ShrinkingLayers
from .static_probe import PROBE_SAMPLES, StaticProbe, probe_applies

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
# Objective "size" keeps a quantized model only when it packs no larger than the stage's input:
# models up to this size are packed before anything about them is measured (a larger one's
# packing is minutes of xz; it is measured first and compared after the stage, as before).
PACK_FIRST_MAX_BYTES = 64 << 20

# The rungs with quantized activations and every layer quantized, and the slack by which one may
# beat int8 weights only: a static build may take 8-bit weights where weight-only has 7-bit ones
# (6 dB less weight noise), plus share's slack for outputs that do not follow the weights.
PLAIN_ACTIVATION_LABELS = (
    LABELS["static"],
    LABELS["dynamic"],
    f"{LABELS['static']}, small constants float",
    f"{LABELS['dynamic']}, small constants float",
)
WEIGHTS_ONLY_SLACK_DB = 6.02 + 3.0

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


def packed_limit(ctx: StageContext) -> int | None:
    """The packed bytes a candidate may not exceed (its input's container), or None when the
    run keeps int8 kernels whatever they cost or the model is too large to pack early."""
    if ctx.objective != "size" or model_bytes(ctx.model) > PACK_FIRST_MAX_BYTES:
        return None
    return ctx.packed_size(ctx.model)


def cannot_shrink(ctx: StageContext, settings: QuantizeSettings, limit: int) -> StageResult | None:
    """The stage's row when no build can pack smaller than `limit` (size_bound, packed), else None."""
    t0 = time.perf_counter()
    try:
        bound_model, _ = size_bound(ctx.model, settings)
    except CompressorError:
        return None  # the ladder's first build says why, as before
    if model_bytes(bound_model) >= model_bytes(ctx.model):
        row = _not_applied(ctx, f"skipped: {NOTHING_QUANTIZED.error}", time.perf_counter() - t0)
        return StageResult(row, ctx.model, ctx.outputs)
    bound = ctx.packed_size(bound_model)
    if bound <= limit:
        return None
    note = (
        f"skipped: cannot pack smaller than its input (objective size): int8 weights alone, on the fewest "
        f"levels any setting uses, pack to {bound:,} bytes > {limit:,} (by {bound - limit:,}); nothing measured"
    )
    row = _not_applied(ctx, note, time.perf_counter() - t0)
    row.rejected_by = [{"measure": "packed_bytes", "value": bound, "limit": limit, "by": bound - limit}]
    return StageResult(row, ctx.model, ctx.outputs)


def _not_applied(ctx: StageContext, note: str, seconds: float) -> StageRow:
    return StageRow(NAME, False, model_bytes(ctx.model), ctx.previous.metrics, seconds, note=note, packed_bytes=None)


Build = Callable[[], tuple]


def packs_within(build: Build, ctx: StageContext, limit: int | None, over: list[int] | None = None) -> Build:
    """`build`, whose candidate (when smaller in ONNX bytes than the input) is packed before the
    ladder measures it: one that packs larger than `limit` could not be kept (objective size),
    so it fails here, unmeasured (its packed bytes appended to `over`)."""
    if limit is None:
        return build

    def checked():
        candidate, stats = build()
        if model_bytes(candidate) < model_bytes(ctx.model):
            size = ctx.packed_size(candidate)
            if size > limit:
                if over is not None:
                    over.append(size)
                raise CompressorError(
                    f"packs to {size:,} bytes > the input's {limit:,} (by {size - limit:,}): not measured (objective size)"
                )
        return candidate, stats

    return checked


def weights_only_first(
    attempts: list[Attempt],
    ctx: StageContext,
    probe: StaticProbe | None = None,
    mixed_rungs: dict[str, QuantizeSettings] | None = None,
) -> list[Attempt]:
    """Int8 weights only (the ladder's last, gentlest rung) judged early once a plain rung with
    quantized activations failed (stages/gentlest_first.py): activations only add noise to the
    weights', so when weight-only misses the floor by more than WEIGHTS_ONLY_SLACK_DB, the plain
    activation rungs left are not built (no full calibration).  A mixed-precision rung keeps
    whole layers float, weights too: bounded only when its probe (static_probe) kept no layer
    float on its samples, i.e. built the plain rung."""
    gentlest = attempts[-1]
    assert gentlest.label == LABELS["none"]
    chain = [a.label for a in attempts if a.label in PLAIN_ACTIVATION_LABELS]
    early = GentlestFirst(
        ctx,
        gentlest.label,
        gentlest.build,
        chain,
        lambda m: floor_miss_db(m, ctx.measure),
        WEIGHTS_ONLY_SLACK_DB,
        any_failure=True,
    )
    mixed_rungs = mixed_rungs if probe is not None and mixed_rungs else {}
    out = []
    for a in attempts[:-1]:
        if a.label in chain:
            a = replace(a, skip=either_skip(a.skip, early.skip(a.label)))
        elif a.label in mixed_rungs:
            a = replace(a, skip=either_skip(a.skip, _when_plain(probe, mixed_rungs[a.label], early.skip(a.label))))
        out.append(a)
    return [*out, replace(gentlest, build=early.build, measured=early.metrics)]


def _when_plain(probe: StaticProbe, mixed: QuantizeSettings, bound: SkipRule) -> SkipRule:
    """`bound` for a mixed-precision rung whose probe kept no layer float (else no reason)."""

    def rule(tried):
        if not probe.quantizes_every_layer(mixed):
            return None
        reason = bound(tried)
        return f"{reason} (its probe kept no layer float on {PROBE_SAMPLES} samples)" if reason else None

    return rule


class WeightOnlyPacked:
    """Objective size: weight-only is the gentlest mode, so a static rung that packs no smaller
    is dominated (larger and noisier) and is not measured.  The weight-only model is built and
    packed once, before the static rungs (no calibration), and kept for its own rung."""

    def __init__(self, build: Build, ctx: StageContext):
        self.ctx = ctx
        self.model, self.stats = build()
        self.size: int | None = None
        if model_bytes(self.model) < model_bytes(ctx.model):
            self.size = ctx.packed_size(self.model)

    def built(self) -> tuple:
        return self.model, self.stats

    def dominates(self, build: Build, plain: PlainSizes | None = None) -> Build:
        """`build`, failing unmeasured when its candidate packs no smaller than weight-only
        (its size then recorded in `plain`: a plain static build's, for stages/mixed_bound.py)."""
        if self.size is None:
            return build

        def checked():
            candidate, stats = build()
            size = self.ctx.packed_size(candidate)
            if size >= self.size:
                if plain is not None:
                    plain.add(size)
                raise CompressorError(
                    f"packs to {size:,} bytes, not smaller than {LABELS['none']}'s {self.size:,}: "
                    "not measured (objective size)"
                )
            return candidate, stats

        return checked


def _mixed_skip(ctx: StageContext, probe: StaticProbe | None, mixed: QuantizeSettings, plain, gentlest, effective):
    """A mixed-precision rung's skip rule: its probe's miss, then (objective size) whether
    keeping layers float only adds bytes (stages/mixed_bound.py), probed with the settings the
    rung builds with (`effective`: the layers whose int8 form grows excluded, stages/mixed_bytes.py)."""
    if probe is None:
        return None
    if gentlest is None:
        return probe.skip(mixed)

    def bound(tried: Sequence[dict]) -> str | None:
        try:
            settings = effective(mixed)
        except CompressorError:
            return None  # the build itself says why it is not built
        return dominated_mixed(ctx, probe, settings, plain, gentlest.size)(tried)

    return either_skip(probe.skip(mixed), bound)


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
    limit = packed_limit(ctx)
    if limit is not None:
        skipped = cannot_shrink(ctx, settings, limit)
        if skipped is not None:
            ctx.log(f"{NAME}: {skipped.row.note}")
            return skipped
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
    over: list[int] = []  # packed bytes of the candidates that packed larger than the input
    mixed_rungs: dict[str, QuantizeSettings] = {}  # the mixed-precision rungs' labels and settings
    gentlest = None
    if limit is not None and adaptive and modes[0] == "static" and "none" in modes:
        last = replace(settings, small_constants=False) if settings.small_constants else settings
        gentlest = WeightOnlyPacked(lambda: build("none", last), ctx)
    # The static rungs (plain and mixed precision), tried on a few samples first (static_probe).
    probe = StaticProbe(ctx) if adaptive and "static" in modes and probe_applies(ctx) else None

    plain = PlainSizes()  # plain static builds that packed no smaller than weight-only

    def dominated(build: Build, mode: str | None = None) -> Build:
        return gentlest.dominates(build, plain if mode == "static" else None) if gentlest is not None else build

    # Objective size: which layers' int8 form packs smaller, from the first plain static
    # candidate packed (stages/mixed_bytes.py); the mixed rungs quantize only those.
    shrinking = None
    if limit is not None and ctx.packing is not None:
        input_packing = ctx.packing(model)
        shrinking = ShrinkingLayers(model, input_packing[1] if input_packing else None, settings.exclude)

    def noted(build: Build) -> Build:
        if shrinking is None:
            return build

        def packed():
            candidate, stats = build()
            if model_bytes(candidate) < model_bytes(model):
                ctx.packed_size(candidate)  # packed once: the size checks after this reuse it
                packing = ctx.packing(candidate)
                shrinking.note(stats, packing[1] if packing else None)
            return candidate, stats

        return packed

    def mixed_settings(mixed: QuantizeSettings) -> QuantizeSettings:
        return replace(mixed, exclude=shrinking.exclude()) if shrinking is not None else mixed

    def mixed_build(mixed: QuantizeSettings):
        return build("static", mixed_settings(mixed))

    def with_small_constants(mode: str, settings: QuantizeSettings):
        quantized, stats = build(mode, settings)
        if not any(w.get("role") in SMALL_ROLES for w in stats["weights"]):
            raise CompressorError("no small constants to quantize")
        return quantized, stats

    for i, mode in enumerate(modes):
        if adaptive and i > 0 and mode == "none" and opts.small_constants:
            # Weight-only after static: first with the small constants (biases) int8 too, as the
            # first rung had them; a Conv's or Gemm's bias is one then (ops_tables.weight_only_bias).
            small = replace(settings, small_constants=True)
            attempts.append(
                Attempt(
                    f"{LABELS[mode]}, small constants int8",
                    packs_within(lambda m=mode, s=small: with_small_constants(m, s), ctx, limit, over),
                )
            )
        if gentlest is not None and mode == "none":
            one = gentlest.built
        elif i == 0:
            first_build = partial(first_attempt, mode, settings)
            one = dominated(noted(first_build) if mode == "static" else first_build, mode)
        else:
            one = dominated(lambda m=mode, s=settings: build(m, s))
        attempts.append(
            Attempt(
                LABELS[mode],
                packs_within(one, ctx, limit, over),
                skip=probe.skip(settings) if probe is not None and mode == "static" else None,
            )
        )
        if adaptive and i == 0 and settings.small_constants:
            # int8 biases and norm parameters are the first thing to give back: the same
            # setting with them in float, then the rest of the ladder without them.
            settings = replace(settings, small_constants=False)
            attempts.append(
                Attempt(
                    f"{LABELS[mode]}, small constants float",
                    packs_within(
                        dominated(
                            noted(lambda m=mode, s=settings: without_small_constants(m, s))
                            if mode == "static"
                            else (lambda m=mode, s=settings: without_small_constants(m, s)),
                            mode,
                        ),
                        ctx,
                        limit,
                        over,
                    ),
                    skip=probe.skip(settings) if probe is not None and mode == "static" else None,
                )
            )
        if adaptive and mode == "static" and model_bytes(model) <= MIXED_PRECISION_MAX_BYTES:
            # Mixed precision before giving up on activations: a few layers usually carry most
            # of the error, so keep the noisiest ones in float, as few as reach the floor.
            for floor in mixed_floors(ctx):
                mixed = replace(settings, min_output_snr=floor)
                mixed_rungs[f"{LABELS[mode]}, noisy layers float for {floor:g} dB output SNR"] = mixed
                attempts.append(
                    Attempt(
                        f"{LABELS[mode]}, noisy layers float for {floor:g} dB output SNR",
                        packs_within(dominated(lambda s=mixed: mixed_build(s)), ctx, limit, over),
                        skip=_mixed_skip(ctx, probe, mixed, plain, gentlest, mixed_settings),
                    )
                )
    if adaptive and modes[-1] == "none" and len(modes) > 1:
        attempts = weights_only_first(attempts, ctx, probe, mixed_rungs)
    result = run_ladder(Ladder(NAME, attempts, adaptive, must_shrink=NOTHING_QUANTIZED), ctx)
    if shrinking is not None and shrinking.summary():
        result.row.note = f"{result.row.note}; {shrinking.summary()}" if result.row.note else shrinking.summary()
    if over and not result.row.applied:
        result.row.note += (
            f"; {len(over)} built, unmeasured: they pack larger than the input's {limit:,} bytes "
            f"(the smallest {min(over):,}, objective size)"
        )
    tensors, size = weights_left_in_subgraphs(model)
    if tensors:  # the planner rewrites the main graph only: say what it did not touch
        left = f"{tensors} weight tensors read inside subgraphs (If/Loop bodies) left float, {size:,} bytes"
        result.row.note = f"{result.row.note}; {left}" if result.row.note else left
        ctx.log(f"{NAME}: {left}")
    return result
