"""Add / Mul of two activations -> QLinearAdd / QLinearMul; AveragePool / GlobalAveragePool
-> QLinearAveragePool / QLinearGlobalAveragePool (com.microsoft kernels ORT fuses from QDQ).

An Add or Mul with a constant operand (a bias after a MatMul, a normalisation) stays float;
when that operand is a large table (a positional embedding) the table is stored as int8 behind
a DequantizeLinear (see ops_tables).
"""

from __future__ import annotations

from .ops_tables import table_use
from .registry import Plan, Skip, register


@register("Add", "Mul")
def binary(node, ctx):
    if any(ctx.is_constant(name) for name in node.input):
        uses = [u for u in (table_use(node, ctx, i, ("elementwise",)) for i in range(len(node.input))) if u is not None]
        if uses and all(ctx.is_float(name) for name in node.input):
            return Plan(
                node, "weight_only", weights=uses, note="constant table: int8 behind DequantizeLinear, float op"
            )
        return Skip("constant operand: left in float")
    if not all(ctx.is_float(name) for name in node.input):
        return Skip("not a float32 operation")
    return Plan(node, "integer", activations=[0, 1], outputs=[0])


@register("AveragePool", "GlobalAveragePool")
def average_pool(node, ctx):
    if not ctx.is_float(node.input[0]):
        return Skip("not a float32 operation")
    return Plan(node, "integer", activations=[0], outputs=[0])
