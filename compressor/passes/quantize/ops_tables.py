"""Large constant tables read by float ops: embedding tables (Gather) and positional or other
tables added or multiplied into activations (Add / Mul with a constant operand).

ORT has no integer kernel to fuse here, so these stay float ops, but the table itself is
stored as int8 behind a DequantizeLinear: 4x fewer bytes, float compute.  Without this a
transformer's token and positional embeddings are the largest float tensors left in the
model.  Small constants (biases, normalisation statistics, scalars) are left alone.
"""

from __future__ import annotations

import numpy as np

from .registry import Plan, Skip, WeightUse, register

# Tables with fewer elements stay float: their int8 copy plus scale saves too little to
# pay for a DequantizeLinear node.
MIN_TABLE_ELEMENTS = 1024


def table_use(node, ctx, index: int, roles: tuple[str, ...], axis: int | None = None):
    """A WeightUse for the constant at `index` when it is a large finite float table, else None.

    Per channel along `axis` (default: the last, the feature dimension of a [1, T, D] table)."""
    w = ctx.weight_at(node, index)
    if w is None or w.role not in roles or w.size < MIN_TABLE_ELEMENTS or len(w.shape) < 1:
        return None
    if not np.isfinite(w.array()).all():
        return None  # masks with -inf: no int8 grid holds them
    rank = len(w.shape)
    axis = (rank - 1 if axis is None else axis % rank) if ctx.per_channel and ctx.opset >= 13 else None
    return WeightUse(index, axis, w)


@register("Gather")
def gather(node, ctx):
    # One scale per gathered slice (per token of a [V, D] table): rare tokens with small
    # embeddings keep their precision.
    use = table_use(node, ctx, 0, ("embedding",), axis=int(ctx.attr(node, "axis", 0)))
    if use is None:
        return Skip("table is not a large constant float32 tensor")
    return Plan(node, "weight_only", weights=[use], note="embedding table: int8 behind DequantizeLinear, float Gather")
