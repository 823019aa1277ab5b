"""Conv -> QLinearConv (static), weight-only otherwise; ConvTranspose: weight-only.

Depthwise and grouped convolutions are quantized like any other Conv: ORT has u8s8
depthwise kernels and per-channel scales are per output channel (axis 0) whatever the
group.  Dynamic mode keeps Conv in float with int8 weights: ORT's ConvInteger path
(DynamicQuantizeLinear + ConvInteger + Cast + Mul) is slower than its float Conv on CPU.
"""

from __future__ import annotations

from .ops_tables import weight_only_bias
from .registry import Plan, Skip, WeightUse, register


@register("Conv")
def conv(node, ctx):
    w = ctx.weight_at(node, 1)
    if w is None:
        return Skip("filter is not a constant float32 tensor")
    if w.role != "conv_filter" or len(w.shape) < 3:
        return Skip(f"filter has role {w.role}")
    if ctx.weight_at(node, 0) is not None:
        return Skip("input is a constant")
    group = int(ctx.attr(node, "group", 1))
    note = ""
    if group > 1:
        note = "depthwise" if group == w.shape[0] and w.shape[1] == 1 else f"grouped ({group} groups)"
    bias = ctx.weight_at(node, 2) if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias.shape != (w.shape[0],):
        bias = None
    return Plan(
        node,
        "integer",
        activations=[0],
        weights=[WeightUse(1, 0 if ctx.per_channel else None, w), *weight_only_bias(ctx, bias, 2)],
        bias=None if bias is None else 2,
        bias_weight=bias,
        outputs=[0],
        note=note,
    )


@register("ConvTranspose")
def conv_transpose(node, ctx):
    w = ctx.weight_at(node, 1)
    if w is None or w.role != "convtranspose_filter":
        return Skip("filter is not a constant float32 tensor")
    return Plan(
        node,
        "weight_only",
        weights=[WeightUse(1, w.out_axis if ctx.per_channel else None, w)],
        note="float ConvTranspose with int8 weights",
    )
