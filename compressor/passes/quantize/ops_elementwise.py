"""Add / Mul of two activations -> QLinearAdd / QLinearMul; AveragePool / GlobalAveragePool
-> QLinearAveragePool / QLinearGlobalAveragePool (com.microsoft kernels ORT fuses from QDQ).

An Add or Mul with a constant operand (a bias after a MatMul, a normalisation) stays float.
"""

from __future__ import annotations

from .registry import Plan, Skip, register


@register("Add", "Mul")
def binary(node, ctx):
    if any(ctx.is_constant(name) for name in node.input):
        return Skip("constant operand: left in float")
    if not all(ctx.is_float(name) for name in node.input):
        return Skip("not a float32 operation")
    return Plan(node, "integer", activations=[0, 1], outputs=[0])


@register("AveragePool", "GlobalAveragePool")
def average_pool(node, ctx):
    if not ctx.is_float(node.input[0]):
        return Skip("not a float32 operation")
    return Plan(node, "integer", activations=[0], outputs=[0])
