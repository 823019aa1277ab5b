"""The op -> handler registry and the plan a handler returns.

A handler looks at one node and says what quantization would do to it, as data: which
inputs are activations to quantize, which are constant weights (and along which axis),
which input is a bias to turn into int32, and whether its outputs are quantized.  It never
edits the graph: ``rewrite`` applies the plans, ``fold`` joins neighbouring node units.

Kinds of plan:

* ``integer``: an op ORT has an integer kernel for once its inputs and output are wrapped
  in DequantizeLinear / QuantizeLinear (Conv -> QLinearConv, MatMul -> QLinearMatMul,
  Gemm -> QGemm, Add -> QLinearAdd, pooling -> QLinear*Pool, ...).
* ``passthrough``: ops that do not change values (MaxPool, Reshape, Transpose, Flatten,
  Squeeze, Unsqueeze, Concat): input(s) and output share quantization parameters, so the
  fold pass can run them on the integers.
* ``activation``: Relu / Clip(0, max) right after a quantized op: with the output zero
  point at the bottom of the integer range the QuantizeLinear does the clamping, so the
  fold pass removes the op.
* ``weight_only``: float kernel, int8 weights (recurrent ops, ConvTranspose, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

KINDS = ("integer", "passthrough", "activation", "weight_only")


@dataclass
class WeightUse:
    index: int  # input index of the constant weight
    axis: int | None  # per-channel axis (None: per tensor)
    weight: object = None  # the graph.Weight


@dataclass
class Plan:
    node: onnx.NodeProto
    kind: str
    activations: list[int] = field(default_factory=list)  # input indices quantized as activations
    weights: list[WeightUse] = field(default_factory=list)
    bias: int | None = None  # input index of a bias that becomes int32 (scale = x scale * w scale)
    bias_weight: object = None  # its graph.Weight
    outputs: list[int] = field(default_factory=list)  # output indices quantized
    dynamic: bool = False  # MatMulInteger / DynamicQuantizeLinear rewrite available (dynamic mode)
    note: str = ""
    label: str = ""  # the node's name in reports (set by the planner before any rewrite)

    @property
    def name(self) -> str:
        return self.label or self.node.name or self.node.output[0]


@dataclass
class Skip:
    """The node stays float; `reason` goes into the report."""

    reason: str


Handler = Callable[[onnx.NodeProto, "object"], "Plan | Skip"]
HANDLERS: dict[str, Handler] = {}


def register(*op_types: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in op_types:
            HANDLERS[op] = fn
        return fn

    return deco


def handler_for(node: onnx.NodeProto) -> Handler | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return HANDLERS.get(node.op_type)
