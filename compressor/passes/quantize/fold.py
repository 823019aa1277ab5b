"""Q/DQ folding: no DequantizeLinear -> QuantizeLinear round trip between quantized ops.

Three rewrites, repeated until none applies (main graph):

1. ``DQ(a) -> Q`` with equal scale, zero point (and type, axis): both go, the Q's
   consumers read ``a`` directly.
2. ``DQ -> Relu/Clip -> Q`` where Q's zero point is the bottom of its integer range
   (and its top is within Clip's max): the QuantizeLinear already clamps, the op goes,
   leaving a pair for rule 1.
3. ``DQ -> P -> Q`` with equal parameters on every data input of P, P in {MaxPool,
   Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Identity, Concat}: P runs on the
   integers (``a -> P -> Q's output``), Q goes, and the DQ too when nothing else reads it.

Every application removes one DQ -> Q pair; the counts go into the report.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ... import graph
from ... import quant_math as qm
from .names import read_in_subgraphs

MOVABLE = {
    "MaxPool": [0],
    "Reshape": [0],
    "Transpose": [0],
    "Flatten": [0],
    "Squeeze": [0],
    "Unsqueeze": [0],
    "Identity": [0],
    "Concat": None,
}
QTYPES = {
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.UINT16: "uint16",
}


class _Graph:
    """Producer / consumer maps kept up to date while nodes are removed and rewired."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.consts = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in g.output}
        self.opset = graph.opset_version(model)
        self.inner = read_in_subgraphs(g)
        self.removed: set[int] = set()
        self._params: dict[tuple, tuple | None] = {}

    def params(self, node: onnx.NodeProto):
        """(scale bytes, zero point bytes, zero point type, axis, scale, zp) of a Q/DQ node, or None."""
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        key = (tuple(node.input[1:3]), axis)
        if key not in self._params:
            self._params[key] = self._compute_params(node, axis)
        return self._params[key]

    def _compute_params(self, node: onnx.NodeProto, axis: int):
        if len(node.input) < 2 or node.input[1] not in self.consts:
            return None
        scale = numpy_helper.to_array(self.consts[node.input[1]]).astype(np.float32)
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.consts:
                return None
            zp_t = self.consts[node.input[2]]
            zp, ztype = numpy_helper.to_array(zp_t).astype(np.int64), zp_t.data_type
        else:
            zp, ztype = np.zeros(scale.shape, dtype=np.int64), onnx.TensorProto.UINT8
        if scale.size == 1:
            axis = None
            scale, zp = scale.reshape(()), zp.reshape(())
        return scale.tobytes(), zp.tobytes(), ztype, axis, scale, zp

    def users(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.consumers.get(name, []) if id(n) not in self.removed]

    def only_consumer_is(self, name: str, node: onnx.NodeProto) -> bool:
        users = self.users(name)
        return len(users) == 1 and users[0] is node and name not in self.outputs and name not in self.inner

    def read(self, name: str) -> bool:
        return bool(self.users(name)) or name in self.outputs or name in self.inner

    def set_input(self, node: onnx.NodeProto, index: int, name: str) -> None:
        node.input[index] = name
        self.consumers.setdefault(name, []).append(node)

    def rewire(self, old: str, new: str) -> None:
        for node in self.users(old):
            for i, name in enumerate(node.input):
                if name == old:
                    self.set_input(node, i, new)
        self.consumers[old] = []

    def remove(self, node: onnx.NodeProto) -> None:
        self.removed.add(id(node))

    def drop_if_unread(self, node: onnx.NodeProto) -> None:
        if not any(self.read(o) for o in node.output if o):
            self.remove(node)


def _same(a, b) -> bool:
    return a is not None and b is not None and a[:4] == b[:4]


def fold(model: onnx.ModelProto) -> dict:
    counts = {"dq_q_pairs_removed": 0, "direct": 0, "clamps_removed": 0, "moved_to_integers": {}}
    g = _Graph(model)
    changed = True
    while changed:  # a pass over the QuantizeLinear nodes in graph order, until nothing applies
        changed = False
        for q in list(model.graph.node):
            while q.op_type == "QuantizeLinear" and id(q) not in g.removed and _fold_at(q, g, counts):
                changed = True
    kept = [n for n in model.graph.node if id(n) not in g.removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    counts["dq_q_pairs_removed"] = counts["direct"] + sum(counts["moved_to_integers"].values())
    return counts


def _fold_at(q: onnx.NodeProto, g: _Graph, counts: dict) -> bool:
    """Apply one rewrite at this QuantizeLinear; True when something changed."""
    if q.output[0] in g.outputs:
        return False
    qp = g.params(q)
    prod = g.producer.get(q.input[0])
    if qp is None or prod is None or id(prod) in g.removed:
        return False
    if prod.op_type == "DequantizeLinear" and _same(g.params(prod), qp):
        g.rewire(q.output[0], prod.input[0])
        g.remove(q)
        g.drop_if_unread(prod)
        counts["direct"] += 1
        return True
    if prod.op_type in ("Relu", "Clip") and g.only_consumer_is(prod.output[0], q) and _clamp_is_redundant(prod, qp, g):
        src = g.producer.get(prod.input[0])
        if src is not None and src.op_type == "DequantizeLinear" and _same(g.params(src), qp):
            g.set_input(q, 0, prod.input[0])
            g.remove(prod)
            counts["clamps_removed"] += 1
            return True
    if prod.op_type in MOVABLE and prod.domain in ("", "ai.onnx") and g.only_consumer_is(prod.output[0], q):
        if prod.op_type == "MaxPool" and (g.opset < 12 or len([o for o in prod.output if o]) > 1):
            return False
        data = MOVABLE[prod.op_type] if MOVABLE[prod.op_type] is not None else list(range(len(prod.input)))
        dqs = [g.producer.get(prod.input[i]) for i in data]
        if all(d is not None and d.op_type == "DequantizeLinear" and _same(g.params(d), qp) for d in dqs):
            for i, d in zip(data, dqs):
                g.set_input(prod, i, d.input[0])
            prod.output[0] = q.output[0]
            g.producer[q.output[0]] = prod
            g.remove(q)
            for d in {id(d): d for d in dqs}.values():
                g.drop_if_unread(d)
            counts["moved_to_integers"][prod.op_type] = counts["moved_to_integers"].get(prod.op_type, 0) + 1
            return True
    return False


def _clamp_is_redundant(node: onnx.NodeProto, qp, g: _Graph) -> bool:
    _, _, ztype, axis, scale, zp = qp
    if axis is not None or ztype not in QTYPES:
        return False
    qmin, qmax = qm.INT_RANGES[QTYPES[ztype]]
    if int(zp) != qmin:
        return False
    if node.op_type == "Relu":
        return True
    lo, hi = _clip_bounds(node, g)
    top = (qmax - int(zp)) * float(scale)
    return lo == 0.0 and hi is not None and top <= hi * (1 + 1e-6)


def _clip_bounds(node, g: _Graph):
    vals = []
    for idx, attr, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        if len(node.input) > idx and node.input[idx]:
            t = g.consts.get(node.input[idx])
            vals.append(None if t is None else float(numpy_helper.to_array(t).reshape(-1)[0]))
        else:
            v = next((a.f for a in node.attribute if a.name == attr), None)
            vals.append(default if v is None else float(v))
    return vals[0], vals[1]
