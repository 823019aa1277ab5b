"""Gemm -> QGemm, MatMul -> QLinearMatMul / MatMulIntegerToFloat (static);
DynamicQuantizeLinear + MatMulInteger (dynamic; ORT fuses it to DynamicQuantizeMatMul).

Per-channel weights along the output axis: Gemm B by transB, MatMul B its last axis.
MatMuls between two activations (attention scores, attention x values) are quantized
per tensor on both inputs unless ``quantize_attention`` is off.
"""

from __future__ import annotations

from .ops_tables import weight_only_bias
from .registry import Plan, Skip, WeightUse, register


@register("Gemm")
def gemm(node, ctx):
    if ctx.weight_at(node, 0) is not None:
        return Skip("constant first operand")
    b = ctx.weight_at(node, 1)
    if b is None:
        return Skip("B is not a constant float32 tensor")
    if b.role != "gemm_b":
        return Skip(f"B has role {b.role}")
    c = ctx.weight_at(node, 2) if len(node.input) > 2 and node.input[2] else None
    if c is not None and (c.size != b.shape[b.out_axis] or float(ctx.attr(node, "beta", 1.0)) != 1.0):
        c = None
    dynamic = int(ctx.attr(node, "transA", 0)) == 0
    return Plan(
        node,
        "integer",
        activations=[0],
        weights=[WeightUse(1, b.out_axis if ctx.per_channel else None, b), *weight_only_bias(ctx, c, 2)],
        bias=None if c is None else 2,
        bias_weight=c,
        outputs=[0],
        dynamic=dynamic,
    )


@register("MatMul")
def matmul(node, ctx):
    a, b = ctx.weight_at(node, 0), ctx.weight_at(node, 1)
    if a is not None:
        return Skip("constant first operand")
    if b is not None:
        if b.role != "matmul_const":
            return Skip(f"B has role {b.role}")
        two_d = len(b.shape) == 2
        axis = b.out_axis if ctx.per_channel and two_d else None
        return Plan(node, "integer", activations=[0], weights=[WeightUse(1, axis, b)], outputs=[0], dynamic=two_d)
    if ctx.is_constant(node.input[1]) or ctx.is_constant(node.input[0]):
        return Skip("constant operand that is not a float32 weight")
    if not ctx.options.get("quantize_attention", True):
        return Skip("MatMul of two activations left in float (quantize_attention=False)")
    return Plan(node, "integer", activations=[0, 1], outputs=[0], note="activation x activation")
