"""Apply plans to the main graph: DequantizeLinear on weights, QuantizeLinear ->
DequantizeLinear pairs on activations, int32 biases.

Each planned node becomes a QDQ node unit: its quantized activation inputs read a
DequantizeLinear, its quantized outputs go through QuantizeLinear -> DequantizeLinear
(the node writes ``<name>_prequant`` and the DequantizeLinear writes the original name,
so every consumer and graph output sees the quantized value).  A value requested again
with the same parameters reuses its DequantizeLinear; ``fold`` then joins neighbouring
units.  Weight DequantizeLinear nodes go first (they only read initializers).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .names import NameScope
from .params import QParams
from .registry import Plan
from .weights import WeightStore

NP_TYPES = {"uint8": np.uint8, "int8": np.int8}


class Rewriter:
    def __init__(
        self, model: onnx.ModelProto, scope: NameScope, store: WeightStore, qparams: dict[str, QParams] | None
    ):
        self.model = model
        self.scope = scope
        self.store = store
        self.qparams = qparams or {}
        self.initializers: list[onnx.TensorProto] = []
        self._param_names: dict[QParams, tuple[str, str]] = {}
        self._dq_of: dict[tuple[str, QParams], str] = {}

    def _param_tensors(self, p: QParams, base: str) -> tuple[str, str]:
        if p not in self._param_names:
            s, z = self.scope.new(base + "_scale"), self.scope.new(base + "_zero_point")
            self.initializers.append(numpy_helper.from_array(np.asarray(p.scale, dtype=np.float32), s))
            self.initializers.append(numpy_helper.from_array(np.asarray(p.zero_point, dtype=NP_TYPES[p.dtype]), z))
            self._param_names[p] = (s, z)
        return self._param_names[p]

    def _pair(self, src: str, qname: str, out: str, p: QParams, base: str) -> list[onnx.NodeProto]:
        s, z = self._param_tensors(p, base)
        return [
            helper.make_node("QuantizeLinear", [src, s, z], [qname], name=self.scope.new(f"{out}_QuantizeLinear")),
            helper.make_node("DequantizeLinear", [qname, s, z], [out], name=self.scope.new(f"{out}_DequantizeLinear")),
        ]

    def input_dq(self, name: str, p: QParams, before: list) -> str:
        key = (name, p)
        if key not in self._dq_of:
            q = self.scope.new(f"{name}_quantized")
            out = self.scope.new(f"{name}_dequantized")
            before.extend(self._pair(name, q, out, p, name))
            self._dq_of[key] = out
        return self._dq_of[key]

    def apply(self, plans: list[Plan], static: bool) -> None:
        by_node = {id(p.node): p for p in plans}
        nodes: list[onnx.NodeProto] = []
        for node in self.model.graph.node:
            plan = by_node.get(id(node))
            if plan is None:
                nodes.append(node)
                continue
            before, after = [], []
            integer = static and plan.kind != "weight_only"
            for use in plan.weights:
                node.input[use.index] = self.store.dq(use.weight, use.axis, integer)
            if integer:
                act_names = [node.input[i] for i in plan.activations]
                if plan.bias is not None and plan.weights and act_names:
                    use = plan.weights[0]
                    qa = self.store.quantized(use.weight, use.axis)
                    # The output's scale bounds how finely the bias can matter (WeightStore.bias_dq).
                    out_scale = self.qparams[node.output[plan.outputs[0]]].scale if plan.outputs else None
                    name = self.store.bias_dq(plan.bias_weight, self.qparams[act_names[0]].scale, qa, out_scale)
                    if name:
                        node.input[plan.bias] = name
                for i, t in zip(plan.activations, act_names):
                    node.input[i] = self.input_dq(t, self.qparams[t], before)
                for i in plan.outputs:
                    t = node.output[i]
                    p = self.qparams[t]
                    pre = self.scope.new(f"{t}_prequant")
                    node.output[i] = pre
                    after.extend(self._pair(pre, self.scope.new(f"{t}_quantized"), t, p, t))
                    self._dq_of[(t, p)] = t
            nodes.extend(before + [node] + after)
        g = self.model.graph
        del g.node[:]
        g.node.extend(self.store.nodes + nodes)
        g.initializer.extend(self.store.initializers + self.initializers)
        self.store.nodes, self.store.initializers, self.initializers = [], [], []
