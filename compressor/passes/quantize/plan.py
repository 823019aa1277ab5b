"""Planning: walk the main graph in order and ask each op's handler what to do.

The context a handler sees (``PlanContext``): the constant weights by (node, input), the
consumers of each value, which values are already quantized upstream, attributes and
options.  Weights used inside subgraphs are not touched (the subgraphs stay float).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import numpy_helper

from ... import graph
from . import ops_conv, ops_elementwise, ops_matmul, ops_passthrough, ops_rnn, ops_tables  # noqa: F401  (register handlers)
from .names import read_in_subgraphs
from .registry import Plan, Skip, handler_for

FLOAT32 = onnx.TensorProto.FLOAT


class PlanContext:
    def __init__(self, model: onnx.ModelProto, mode: str, per_channel: bool, options: dict):
        self.model = model
        self.mode = mode
        self.per_channel = per_channel
        self.options = options
        self.opset = graph.opset_version(model)
        g = model.graph
        self._consumers = graph.consumers_of(g)
        self._outputs = {o.name for o in g.output}
        self._quantized: set[str] = set()
        self._constants = {t.name: t for t in g.initializer}
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        self._constants[node.output[0]] = a.t
        self._inner_names = read_in_subgraphs(g)
        self._by_use: dict[tuple[int, int], graph.Weight] = {}
        for w in graph.weights(model):
            if w.ref.graph_path != "" or w.proto.data_type != FLOAT32:
                continue
            if any(c.graph_path != "" for c in w.consumers) or w.name in self._inner_names:
                continue
            if not np.isfinite(w.array()).all():  # NaN/inf has no int8 code: left float, as computed
                continue
            for c in w.consumers:
                self._by_use[(id(c.node), c.input_index)] = w
        self._types = _elem_types(model)

    # ---- what handlers ask
    def weight_at(self, node: onnx.NodeProto, index: int):
        return self._by_use.get((id(node), index))

    def is_constant(self, name: str) -> bool:
        return name in self._constants

    def is_float(self, name: str) -> bool:
        t = self._types.get(name)
        return t is None or t == FLOAT32

    def is_quantized(self, name: str) -> bool:
        return name in self._quantized

    def consumers(self, name: str):
        return self._consumers.get(name, [])

    def is_graph_output(self, name: str) -> bool:
        return name in self._outputs

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def clip_bound(self, node: onnx.NodeProto, index: int, attr_name: str) -> float | None:
        """A Clip bound from its input (opset >= 11) or attribute; None when not constant, inf when absent."""
        if len(node.input) > index and node.input[index]:
            t = self._constants.get(node.input[index])
            return None if t is None else float(numpy_helper.to_array(t).reshape(-1)[0])
        value = self.attr(node, attr_name)
        if value is not None:
            return float(value)
        return -np.inf if attr_name == "min" else np.inf

    def mark_quantized(self, names) -> None:
        self._quantized.update(n for n in names if n)


_INTEGER_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {}
    # Element types do not depend on the float weights' values: inferred on the graph without
    # them (the integer initializers kept, for shapes), not on a copy of the whole model.
    weights = {t.name for t in model.graph.initializer if t.data_type not in _INTEGER_TYPES}
    try:
        inferred = onnx.shape_inference.infer_shapes(graph.skeleton(model, weights))
    except Exception:
        inferred = model
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    return types


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or (node.output[0] if node.output else f"{node.op_type}_{index}")


def make_plans(
    model: onnx.ModelProto,
    mode: str,
    per_channel: bool,
    options: dict,
    exclude: re.Pattern | None = None,
    skip_names: set[str] = frozenset(),
) -> tuple[list[Plan], list[dict]]:
    """Plans for the nodes that will be quantized, and a report row for every node looked at."""
    ctx = PlanContext(model, mode, per_channel, options)
    plans: list[Plan] = []
    rows: list[dict] = []
    for i, node in enumerate(model.graph.node):
        label = node_label(node, i)
        handler = handler_for(node)
        if handler is None:
            continue
        if label in skip_names:
            rows.append(
                {"node": label, "op": node.op_type, "status": "float", "reason": "kept in float (mixed precision)"}
            )
            continue
        if exclude is not None and (exclude.search(label) or any(exclude.search(o) for o in node.output if o)):
            rows.append({"node": label, "op": node.op_type, "status": "float", "reason": "excluded by --exclude"})
            continue
        result = handler(node, ctx)
        if isinstance(result, Skip):
            if not result.reason.startswith("input is not quantized") and not result.reason.startswith(
                "not all inputs"
            ):
                rows.append({"node": label, "op": node.op_type, "status": "float", "reason": result.reason})
            continue
        plan = result
        plan.label = label
        if mode != "static":
            if plan.kind in ("passthrough", "activation"):
                continue
            if plan.kind == "integer" and not plan.weights:  # activation-only ops: nothing to do without static mode
                continue
        if mode == "static":
            ctx.mark_quantized(node.output[j] for j in plan.outputs)
        plans.append(plan)
        rows.append({"node": label, "op": node.op_type, "status": plan.kind, "reason": plan.note})
    if mode == "static":
        _float_outputs(plans, ctx, rows)
    return plans, rows


FLOAT_OUTPUT_OPS = ("Gemm", "MatMul")  # QGemm / MatMulIntegerToFloat have float outputs


def _float_outputs(plans: list[Plan], ctx: PlanContext, rows: list[dict]) -> None:
    """Gemm / MatMul (constant weight) outputs that no quantized op reads stay float."""
    planned = {id(p.node) for p in plans if p.kind != "weight_only"}  # weight-only ops read float
    notes = {r["node"]: r for r in rows}
    for plan in plans:
        if plan.node.op_type not in FLOAT_OUTPUT_OPS or not plan.weights or not plan.outputs:
            continue
        out = plan.node.output[0]
        if any(id(n) in planned for n, _ in ctx.consumers(out)):
            continue
        plan.outputs = []
        row = notes.get(plan.name)
        if row is not None:
            row["reason"] = "float output (no quantized consumer)"
