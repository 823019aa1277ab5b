"""An ONNX graph evaluated with torch, so that gradients reach its initializers.

A small interpreter over the ops the bench and sample models use (``OPS``): each node's inputs
are looked up by name among the feeds, the initializers (the tensors the caller trains, by
name) and the values computed so far, in the graph's (topological) node order.  Inputs that an
op reads as numbers (shapes, axes, indices, quantization scales) are constants of the graph;
they are read once as numpy.  QuantizeLinear / DequantizeLinear become fake-quantization with a
straight-through rounding, so a QDQ model trains through its int8 grid.

An op outside ``OPS`` (or a subgraph) is refused in one line naming it, before any training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from ...errors import CompressorError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(value) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def ste_round(x: Tensor) -> Tensor:
    """Rounds forward, passes the gradient straight through backward."""
    return x + (torch.round(x) - x).detach()


QUANT_RANGE = {
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT32: (-(2**31), 2**31 - 1),
}


def _per_axis(param: Tensor, x: Tensor, axis: int) -> Tensor:
    """A per-axis quantization parameter shaped to broadcast along `axis` of x."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = param.numel()
    return param.reshape(shape)


# ----------------------------------------------------------------------------- ops
# Each op: (node, inputs as tensors or None, constants: input name -> numpy) -> list of outputs.

Op = Callable[[Node, list, "Graph"], list]


def _const(graph: Graph, node: Node, i: int) -> np.ndarray | None:
    if i >= len(node.inputs) or not node.inputs[i]:
        return None
    name = node.inputs[i]
    if name not in graph.constants:
        raise CompressorError(f"cannot fine-tune: {node.op} node {node.name!r} needs a constant input {i} ({name!r})")
    return graph.constants[name]


def _conv(node: Node, x: list, graph: Graph) -> list:
    a = node.attrs
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise CompressorError(f"cannot fine-tune: Conv {node.name!r} uses auto_pad (not supported)")
    data, w = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    dims = w.dim() - 2
    pads = _ints(a.get("pads", [0] * 2 * dims))
    begin, end = pads[:dims], pads[dims:]
    if begin != end:
        flat = []
        for b_, e_ in zip(reversed(begin), reversed(end)):
            flat += [b_, e_]
        data, begin = F.pad(data, flat), [0] * dims
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return [
        conv(
            data,
            w,
            bias,
            stride=_ints(a.get("strides", [1] * dims)),
            padding=begin,
            dilation=_ints(a.get("dilations", [1] * dims)),
            groups=int(a.get("group", 1)),
        )
    ]


def _gemm(node: Node, x: list, graph: Graph) -> list:
    a = node.attrs
    A, B = x[0], x[1]
    if a.get("transA", 0):
        A = A.t()
    if a.get("transB", 0):
        B = B.t()
    y = float(a.get("alpha", 1.0)) * (A @ B)
    if len(x) > 2 and x[2] is not None:
        y = y + float(a.get("beta", 1.0)) * x[2]
    return [y]


def _pool(kind: str) -> Op:
    def run(node: Node, x: list, graph: Graph) -> list:
        a = node.attrs
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise CompressorError(f"cannot fine-tune: {node.op} {node.name!r} uses auto_pad (not supported)")
        kernel = _ints(a["kernel_shape"])
        dims = len(kernel)
        pads = _ints(a.get("pads", [0] * 2 * dims))
        if pads[:dims] != pads[dims:]:
            raise CompressorError(f"cannot fine-tune: {node.op} {node.name!r} has asymmetric pads")
        strides = _ints(a.get("strides", [1] * dims))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            if _ints(a.get("dilations", [1] * dims)) != [1] * dims:
                raise CompressorError(f"cannot fine-tune: MaxPool {node.name!r} uses dilations")
            pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
            return [pool(x[0], kernel, strides, pads[:dims], ceil_mode=ceil)]
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        include = bool(a.get("count_include_pad", 0))
        return [pool(x[0], kernel, strides, pads[:dims], ceil_mode=ceil, count_include_pad=include)]

    return run


def _flatten(node: Node, x: list, graph: Graph) -> list:
    axis = int(node.attrs.get("axis", 1)) % max(x[0].dim(), 1)
    lead = math.prod(x[0].shape[:axis])
    return [x[0].reshape(lead, -1)]


def _reshape(node: Node, x: list, graph: Graph) -> list:
    shape = _ints(_const(graph, node, 1))
    if not node.attrs.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x[0].reshape(shape)]


def _softmax(node: Node, x: list, graph: Graph) -> list:
    if graph.opset >= 13:
        return [torch.softmax(x[0], int(node.attrs.get("axis", -1)))]
    axis = int(node.attrs.get("axis", 1)) % x[0].dim()  # before opset 13: over the flattened tail
    flat = x[0].reshape(math.prod(x[0].shape[:axis]), -1)
    return [torch.softmax(flat, -1).reshape(x[0].shape)]


def _batchnorm(node: Node, x: list, graph: Graph) -> list:
    eps = float(node.attrs.get("epsilon", 1e-5))
    return [F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=False, eps=eps)]


def _transpose(node: Node, x: list, graph: Graph) -> list:
    perm = node.attrs.get("perm")
    return [x[0].permute(*(_ints(perm) if perm is not None else reversed(range(x[0].dim()))))]


def _layernorm(node: Node, x: list, graph: Graph) -> list:
    axis = int(node.attrs.get("axis", -1)) % x[0].dim()
    eps = float(node.attrs.get("epsilon", 1e-5))
    shape = tuple(x[0].shape[axis:])
    scale = x[1].expand(shape) if x[1] is not None else None
    bias = x[2].expand(shape) if len(x) > 2 and x[2] is not None else None
    return [F.layer_norm(x[0], shape, scale, bias, eps)]


def _reduce_mean(node: Node, x: list, graph: Graph) -> list:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = _const(graph, node, 1)
    keep = bool(node.attrs.get("keepdims", 1))
    if axes is None or len(_ints(axes)) == 0:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [x[0]]
        return [x[0].mean(dim=tuple(range(x[0].dim())), keepdim=keep)]
    return [x[0].mean(dim=tuple(_ints(axes)), keepdim=keep)]


def _concat(node: Node, x: list, graph: Graph) -> list:
    return [torch.cat([t for t in x if t is not None], dim=int(node.attrs["axis"]))]


def _gather(node: Node, x: list, graph: Graph) -> list:
    data = x[0]
    axis = int(node.attrs.get("axis", 0)) % data.dim()
    index = x[1].long() if node.inputs[1] not in graph.constants else torch.from_numpy(_const(graph, node, 1))
    index = index.long() % data.shape[axis]
    picked = data.index_select(axis, index.reshape(-1))
    return [picked.reshape(tuple(data.shape[:axis]) + tuple(index.shape) + tuple(data.shape[axis + 1 :]))]


def _quant_params(node: Node, x: list, graph: Graph, value: Tensor) -> tuple[Tensor, Tensor, int, int]:
    axis = int(node.attrs.get("axis", 1))
    scale = _per_axis(x[1], value, axis)
    zp_array = _const(graph, node, 2)
    elem = onnx.TensorProto.UINT8 if zp_array is None else graph.elem_types[node.inputs[2]]
    if elem not in QUANT_RANGE:
        raise CompressorError(f"cannot fine-tune: {node.op} {node.name!r} has an unsupported zero-point type")
    zero = torch.zeros(()) if zp_array is None else torch.from_numpy(zp_array.astype(np.float32))
    low, high = QUANT_RANGE[elem]
    return scale, _per_axis(zero, value, axis), low, high


def _quantize(node: Node, x: list, graph: Graph) -> list:
    # The integer tensor is carried as float holding integers; rounding is straight-through.
    scale, zero, low, high = _quant_params(node, x, graph, x[0])
    return [torch.clamp(ste_round(x[0] / scale) + zero, low, high)]


def _dequantize(node: Node, x: list, graph: Graph) -> list:
    scale, zero, low, high = _quant_params(node, x, graph, x[0])
    q = x[0]
    if node.inputs[0] in graph.trained_integers:  # a trained int weight: snapped to its grid
        q = torch.clamp(ste_round(q), low, high)
    return [(q - zero) * scale]


def _unary(fn: Callable[[Tensor], Tensor]) -> Op:
    return lambda node, x, graph: [fn(x[0])]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    return lambda node, x, graph: [fn(x[0], x[1])]


def _squeeze_axes(node: Node, graph: Graph) -> list[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = _const(graph, node, 1)
    return None if axes is None else _ints(axes)


def _unsqueeze(node: Node, x: list, graph: Graph) -> list:
    y = x[0]
    axes = _squeeze_axes(node, graph) or []
    rank = y.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        y = y.unsqueeze(axis)
    return [y]


def _squeeze(node: Node, x: list, graph: Graph) -> list:
    axes = _squeeze_axes(node, graph)
    if axes is None:
        return [x[0].squeeze()]
    return [x[0].squeeze(tuple(a % x[0].dim() for a in axes))]


def _clip(node: Node, x: list, graph: Graph) -> list:
    low = node.attrs.get("min", _const(graph, node, 1))
    high = node.attrs.get("max", _const(graph, node, 2))
    return [torch.clamp(x[0], None if low is None else float(low), None if high is None else float(high))]


def _cast(node: Node, x: list, graph: Graph) -> list:
    to = helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    if to.kind == "f":
        return [x[0].float()]
    return [x[0].detach().round() if x[0].is_floating_point() else x[0]]


OPS: dict[str, Op] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Pow": _binary(torch.pow),
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Sqrt": _unary(torch.sqrt),
    "Exp": _unary(torch.exp),
    "Neg": _unary(torch.neg),
    "Identity": _unary(lambda t: t),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("average"),
    "GlobalAveragePool": _unary(lambda t: t.mean(dim=tuple(range(2, t.dim())), keepdim=True)),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Softmax": _softmax,
    "BatchNormalization": _batchnorm,
    "Transpose": _transpose,
    "LayerNormalization": _layernorm,
    "ReduceMean": _reduce_mean,
    "Concat": _concat,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Clip": _clip,
    "Cast": _cast,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
}
# Inputs an op reads as numbers, never trained: (op, input position).
NUMERIC_INPUTS = {
    ("Reshape", 1),
    ("Gather", 1),
    ("ReduceMean", 1),
    ("Unsqueeze", 1),
    ("Squeeze", 1),
    ("Clip", 1),
    ("Clip", 2),
    ("QuantizeLinear", 1),
    ("QuantizeLinear", 2),
    ("DequantizeLinear", 1),
    ("DequantizeLinear", 2),
    ("BatchNormalization", 3),  # running statistics stay what the model measured
    ("BatchNormalization", 4),
}


class Graph:
    """A model's main graph, ready to run with torch: `run(feeds, tensors)` -> the graph outputs.

    `tensors` maps initializer names to the torch tensors to use (the trained ones); the other
    initializers and Constant nodes are the model's own values."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.elem_types: dict[str, int] = {}
        self.trained_integers: set[str] = set()
        for t in g.initializer:
            self.constants[t.name] = numpy_helper.to_array(t)
            self.elem_types[t.name] = t.data_type
        unsupported = []
        for n in g.node:
            if n.op_type == "Constant":
                value = next((a for a in n.attribute if a.name == "value"), None)
                if value is None:
                    unsupported.append("Constant (not a tensor value)")
                    continue
                self.constants[n.output[0]] = numpy_helper.to_array(value.t)
                self.elem_types[n.output[0]] = value.t.data_type
                continue
            if n.domain not in ("", "ai.onnx") or n.op_type not in OPS:
                unsupported.append(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}")
                continue
            self.nodes.append(Node(n.op_type, n.name, tuple(n.input), tuple(n.output), _attrs(n)))
        if unsupported:
            names = ", ".join(sorted(set(unsupported)))
            raise CompressorError(f"cannot fine-tune through op {names}: not supported by the torch interpreter")
        self.input_names = [i.name for i in g.input if i.name not in self.constants]
        self.output_names = [o.name for o in g.output]

    def numeric_names(self) -> set[str]:
        """Names read as numbers by some op (never trained)."""
        return {n.inputs[i] for n in self.nodes for op, i in NUMERIC_INPUTS if n.op == op and i < len(n.inputs)}

    def consumers(self, name: str) -> list[tuple[Node, int]]:
        return [(n, i) for n in self.nodes for i, inp in enumerate(n.inputs) if inp == name]

    def run(self, feeds: Mapping[str, Tensor], tensors: Mapping[str, Tensor]) -> list[Tensor]:
        values: dict[str, Tensor] = dict(feeds)
        values.update(tensors)
        for node in self.nodes:
            args = [self._value(name, values) for name in node.inputs]
            for name, out in zip(node.outputs, OPS[node.op](node, args, self)):
                if name:
                    values[name] = out
        return [values[name] for name in self.output_names]

    def _value(self, name: str, values: dict[str, Tensor]) -> Tensor | None:
        if not name:
            return None
        if name not in values:
            array = self.constants[name]
            values[name] = torch.from_numpy(
                np.array(array, dtype=np.float32 if array.dtype.kind == "f" else array.dtype)
            )
            if values[name].dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
                values[name] = values[name].float()  # quantized values travel as float
        return values[name]


def as_torch_feeds(feed: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    return {
        k: torch.from_numpy(
            np.ascontiguousarray(v, dtype=np.float32) if v.dtype.kind == "f" else np.ascontiguousarray(v)
        )
        for k, v in feed.items()
    }


def run_numpy(
    graph: Graph, feed: Mapping[str, np.ndarray], tensors: Mapping[str, Tensor] | None = None
) -> list[np.ndarray]:
    """The graph's outputs for one feed, without gradients (for checks against ONNX Runtime)."""
    with torch.no_grad():
        return [t.detach().numpy() for t in graph.run(as_torch_feeds(feed), tensors or {})]
