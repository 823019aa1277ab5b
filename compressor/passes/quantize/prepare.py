"""Before planning: refuse or pass through what cannot be quantized, upgrade old opsets,
fold BatchNormalization into the Conv before it.

* Already quantized models (QuantizeLinear, DequantizeLinear, QLinear*, *Integer ops) are
  left as they are.
* Per-channel DequantizeLinear needs opset >= 13 (and QuantizeLinear itself opset >= 10,
  DynamicQuantizeLinear >= 11): lower opsets are converted with onnx.version_converter;
  when that fails, per-channel falls back to per-tensor (opset >= 10) and the report says so.
* ``Conv -> BatchNormalization`` (constant parameters, the Conv output read only by the
  BatchNorm): the BatchNorm goes, W' = W * f, B' = (B - mean) * f + beta with
  f = gamma / sqrt(var + eps) per output channel.  The factor and the unfolded filter are
  remembered, so a shared (codebook) filter can keep its codebook (see weights.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from ... import graph
from .names import read_in_subgraphs

QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "DynamicQuantizeLSTM",
    "MatMulNBits",
}
PER_CHANNEL_OPSET = 13


def quantized_ops(model: onnx.ModelProto) -> list[str]:
    return sorted({n.op_type for _, g in graph.iter_graphs(model.graph) for n in g.node if n.op_type in QUANTIZED_OPS})


def upgrade_opset(model: onnx.ModelProto, target: int = PER_CHANNEL_OPSET) -> tuple[onnx.ModelProto | None, str]:
    """(converted model, '') or (None, reason)."""
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
        _keep_value_info_of(model, converted)
        return converted, ""
    except Exception as e:  # the converter raises many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, msg[:200]


def _keep_value_info_of(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """The converter records an inferred shape for every value; that is optional metadata the
    original did not carry and the packed graph would (a few KB on a small model).  Keep only
    the original's entries."""
    known = {vi.name for vi in original.graph.value_info}
    kept = [vi for vi in converted.graph.value_info if vi.name in known]
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(kept)


def fold_batchnorm(model: onnx.ModelProto) -> tuple[int, dict]:
    """Fold Conv -> BatchNormalization in place. Returns (count, {filter name: (unfolded, factor)})."""
    g = model.graph
    consts = _constant_tensors(g)
    consumers = graph.consumers_of(g)
    producers = graph.producers(g)
    outputs = {o.name for o in g.output}
    inner = read_in_subgraphs(g)
    factors: dict = {}
    count = 0
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        x = bn.input[0]
        if len(consumers.get(x, [])) != 1 or x in outputs or x in inner:
            continue
        params = [_constant_through_identity(n, consts, producers) for n in bn.input[1:5]]
        w_name = conv.input[1]
        w_t = consts.get(w_name)
        if w_t is None or any(p is None for p in params) or w_t.data_type != onnx.TensorProto.FLOAT:
            continue
        if len(consumers.get(w_name, [])) != 1 or w_name in inner:
            continue
        b_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else ""
        b_t = consts.get(b_name) if b_name else None
        if b_t is not None and len(consumers.get(b_name, [])) != 1:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(w_t).astype(np.float32)
        if factor.shape != (w.shape[0],):
            continue
        bias = numpy_helper.to_array(b_t).astype(np.float64) if b_t is not None else np.zeros(w.shape[0])
        folded_w = (w.astype(np.float64) * factor.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        folded_b = ((bias - mean) * factor + beta).astype(np.float32)
        factors[w_name] = (w, factor)
        graph.set_tensor_values(w_t, folded_w)
        if b_t is not None:
            graph.set_tensor_values(b_t, folded_b)
        else:
            name = _unique(g, w_name + "_bn_bias")
            g.initializer.append(numpy_helper.from_array(folded_b, name))
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = name
        conv.output[0] = bn.output[0]
        g.node.remove(bn)
        count += 1
    return count, factors


def _constant_tensors(g: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The graph's constant tensors by the name nodes read them under: initializers and the
    values of Constant nodes (exporters such as Paddle's keep every weight in one)."""
    consts = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if value is not None:
            consts[node.output[0]] = value
    return consts


def _constant_through_identity(name: str, consts: dict, producers: dict):
    """The initializer `name` is, or is an Identity (chain) of: exporters deduplicate equal
    parameters that way (a residual branch's BatchNorm bias equal to the main branch's)."""
    for _ in range(16):
        if name in consts:
            return consts[name]
        node = producers.get(name)
        if node is None or node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            return None
        name = node.input[0]
    return None


def _unique(g: onnx.GraphProto, base: str) -> str:
    names = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    name, i = base, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    return name
