"""Ops that do not change values, and Relu / Clip(0, max) after a quantized op.

They only join in when their input is already quantized (an output of a quantized op):
input and output then share quantization parameters, and ``fold`` runs the op on the
integers (MaxPool, Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Concat) or removes it
(Relu / Clip whose clamping the QuantizeLinear already does).  Otherwise they stay float.
"""

from __future__ import annotations

from .registry import Plan, Skip, register

DATA_MOVEMENT = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@register(*DATA_MOVEMENT)
def data_movement(node, ctx):
    if not ctx.is_quantized(node.input[0]):
        return Skip("input is not quantized")
    return Plan(node, "passthrough", activations=[0], outputs=[0])


@register("MaxPool")
def max_pool(node, ctx):
    if len([o for o in node.output if o]) > 1:
        return Skip("MaxPool with indices output")
    if ctx.opset < 12:
        return Skip("integer MaxPool needs opset >= 12")
    if not ctx.is_quantized(node.input[0]):
        return Skip("input is not quantized")
    return Plan(node, "passthrough", activations=[0], outputs=[0])


@register("Concat")
def concat(node, ctx):
    if not all(ctx.is_quantized(name) for name in node.input):
        return Skip("not all inputs are quantized")
    return Plan(
        node,
        "passthrough",
        activations=list(range(len(node.input))),
        outputs=[0],
        note="inputs share the output's parameters",
    )


@register("Relu", "Clip")
def clamp(node, ctx):
    src = node.input[0]
    if not ctx.is_quantized(src):
        return Skip("input is not quantized")
    if ctx.options.get("activation_symmetric", False):
        return Skip("symmetric activations: the zero point cannot clamp")
    if len(ctx.consumers(src)) != 1 or ctx.is_graph_output(src):
        return Skip("input has other consumers")
    if node.op_type == "Clip":
        low = ctx.clip_bound(node, 1, "min")
        if low is None or low != 0.0:
            return Skip("Clip whose minimum is not a constant 0")
    return Plan(node, "activation", activations=[0], outputs=[0], note="folded into the QuantizeLinear")
