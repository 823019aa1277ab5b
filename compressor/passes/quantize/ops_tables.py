"""Large constant tables read by float ops: embedding tables (Gather) and positional or other
tables added or multiplied into activations (Add / Mul with a constant operand).

ORT has no integer kernel to fuse here, so these stay float ops, but the table itself is
stored as int8 behind a DequantizeLinear: 4x fewer bytes, float compute.  Without this a
transformer's token and positional embeddings are the largest float tensors left in the
model.  Small constants (biases, normalisation statistics, scalars) are left alone, unless
the ``small_constants`` option asks for them (``run`` does, under its accuracy budget): then
the biases added after a float op and LayerNormalization's scale and bias of at least
MIN_SMALL_ELEMENTS values are stored as int8 with one scale per tensor.  On a small
transformer they are 14 % of the container once the matrices are int8.
"""

from __future__ import annotations

import numpy as np

from .registry import Plan, Skip, WeightUse, register

# Tables with fewer elements stay float: their int8 copy plus scale saves too little to
# pay for a DequantizeLinear node.
MIN_TABLE_ELEMENTS = 1024
# With small_constants: below this an int8 copy (n + 4 bytes) plus its DequantizeLinear node
# saves nothing over the n * 4 float bytes.  Packed, the node costs far less than its 60 raw
# bytes (the graph section's xz sees the same node pattern many times); float values barely compress.
MIN_SMALL_ELEMENTS = 16


def table_use(node, ctx, index: int, roles: tuple[str, ...], axis: int | None = None):
    """A WeightUse for the constant at `index` when it is a finite float table of one of `roles`
    with at least MIN_TABLE_ELEMENTS values, or (with the small_constants option) a bias or norm
    parameter with at least MIN_SMALL_ELEMENTS; else None.

    Large tables: per channel along `axis` (default: the last, the feature dimension of a
    [1, T, D] table).  Small constants: one scale."""
    w = ctx.weight_at(node, index)
    small = ctx.options.get("small_constants", False)
    if w is None or len(w.shape) < 1:
        return None
    large = w.size >= MIN_TABLE_ELEMENTS and w.role in roles
    if not large and not (small and w.size >= MIN_SMALL_ELEMENTS and w.role in roles + SMALL_ROLES):
        return None
    if not np.isfinite(w.array()).all():
        return None  # masks with -inf: no int8 grid holds them
    rank = len(w.shape)
    # A small tensor gets one scale: per channel would cost as many scales as values.
    axis = (rank - 1 if axis is None else axis % rank) if large and ctx.per_channel and ctx.opset >= 13 else None
    return WeightUse(index, axis, w)


# Roles of the small constants (biases, normalisation parameters) taken with small_constants.
SMALL_ROLES = ("bias", "norm")


def weight_only_bias(ctx, bias, index: int) -> list[WeightUse]:
    """A Conv / Gemm bias stored as int8 (one scale) in weight-only mode with small_constants:
    the op stays float and reads it in float, as it does an Add's bias.  (Static mode makes
    it int32 instead.)  [] when it stays as it is."""
    if ctx.mode != "none" or bias is None or not ctx.options.get("small_constants", False):
        return []
    if bias.size < MIN_SMALL_ELEMENTS or not np.isfinite(bias.array()).all():
        return []
    return [WeightUse(index, None, bias)]


# A table whose slices' largest values spread less than this (largest slice's over the median
# slice's) takes one scale: it loses at most log2 of it in bits of a slice's precision, and each
# slice's int8 values then sit near zero instead of spanning the range, which codes about two
# bits smaller per value (a trained token table; ORT's dynamic quantizer uses one scale too).
MAX_SLICE_SPREAD = 8.0


def slice_spread(table: np.ndarray, axis: int) -> float:
    """The largest slice's max |value| over the median slice's, slices along `axis`."""
    peaks = np.abs(np.moveaxis(table, axis, 0).reshape(table.shape[axis], -1)).max(axis=1)
    median = float(np.median(peaks))
    return float(peaks.max()) / median if median > 0 else float("inf")


@register("Gather")
def gather(node, ctx):
    # One scale per gathered slice (per token of a [V, D] table) when the slices' scales differ
    # widely: rare tokens with small embeddings keep their precision; else one scale.
    axis = int(ctx.attr(node, "axis", 0))
    use = table_use(node, ctx, 0, ("embedding",), axis=axis)
    if use is None:
        return Skip("table is not a large constant float32 tensor")
    if use.axis is not None and slice_spread(use.weight.array(), axis) <= MAX_SLICE_SPREAD:
        use = WeightUse(use.index, None, use.weight)
    return Plan(node, "weight_only", weights=[use], note="embedding table: int8 behind DequantizeLinear, float Gather")


@register("LayerNormalization")
def layer_normalization(node, ctx):
    uses = [u for u in (table_use(node, ctx, i, ("norm",)) for i in range(1, len(node.input))) if u is not None]
    if not uses or not ctx.is_float(node.input[0]):
        return Skip("normalisation parameters stay float")
    return Plan(node, "weight_only", weights=uses, note="small constants: int8 behind DequantizeLinear, float op")
