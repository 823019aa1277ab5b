"""The shared test-graph zoo: small, realistic ONNX graphs built with onnx.helper only.

Every builder takes no argument (except ``opset_model(opset)`` and ``external_data_model(dir)``)
and returns a checked ``onnx.ModelProto`` that runs in ONNX Runtime.  Weights are random but
deterministic (``np.random.default_rng`` with a fixed seed per builder) and scaled by
1/sqrt(fan-in), so activations stay O(1) through the layers: quantization and pruning then
behave as on trained models, not as on exploding or vanishing random nets.  Most matrix
weights have >= 1024 values so that passes with their default ``min_params`` touch them.

Inputs are float32 with a dynamic batch axis ``N`` unless a builder says otherwise.  Use
``make_inputs(model, n, seed)`` to get a matching ``compressor.data.Dataset``.

Node names are set everywhere (``<op>_<k>`` unless given) because pass reports key on them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.data import Dataset
from compressor.graph import graph_inputs

DEFAULT_OPSET = 17  # LayerNormalization needs 17; ReduceMean still takes `axes` as an attribute
OPSETS = (9, 11, 13, 17, 21)  # what opset_model is built (and tested) at

FLOAT = TensorProto.FLOAT


# --------------------------------------------------------------------------- small helpers
# Shared by the per-pass test files (test_prune.py, test_share.py) for their own small graphs.


def make_model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def laplace_weights(rng, shape, scale=0.1):
    return rng.laplace(0, scale, shape).astype(np.float32)


def constant_and_if_net(seed=0):
    """A conv filter held by a Constant node; an If whose branches use an outer weight / their own."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    const = n("Constant", [], ["cw"], value=numpy_helper.from_array(laplace_weights(rng, (16, 8, 3, 3)), "cw"))

    def branch(name, weight, inits):
        return helper.make_graph(
            [n("MatMul", ["h", weight], [f"{name}_y"])], name, [], [vi(f"{name}_y", ["N", 64])], inits
        )

    then_g = branch("then", "then_w", [numpy_helper.from_array(laplace_weights(rng, (64, 64)), "then_w")])
    else_g = branch("else", "outer_w", [])
    nodes = [
        const,
        n("Conv", ["x", "cw"], ["c"]),
        n("GlobalAveragePool", ["c"], ["g"]),
        n("Flatten", ["g"], ["f"]),
        n("MatMul", ["f", "proj"], ["h0"]),
        n("MatMul", ["h0", "outer_w"], ["h"]),
        n("ReduceSum", ["h"], ["s"], keepdims=0),
        n("Greater", ["s", "zero"], ["cond"]),
        n("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    inits = [
        numpy_helper.from_array(laplace_weights(rng, (16, 64)), "proj"),
        numpy_helper.from_array(laplace_weights(rng, (64, 64)), "outer_w"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
    ]
    return make_model(nodes, [vi("x", ["N", 8, 6, 6])], [vi("y", ["N", 64])], inits)


# --------------------------------------------------------------------------- building blocks


class _Builder:
    """Collects nodes and initializers of one graph; names nodes and draws weights.

    One builder per graph (a subgraph gets its own builder sharing the parent's rng), so
    everything is deterministic given the seed and the order of calls.
    """

    def __init__(self, seed: int = 0, rng: np.random.Generator | None = None):
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    # tensors --------------------------------------------------------------------------
    def weight(self, name: str, shape, fan_in: int, dtype=np.float32) -> str:
        """A random weight N(0, 1/fan_in): keeps activation scale roughly constant per layer."""
        values = self.rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)
        return self.const(name, values.astype(dtype))

    def bias(self, name: str, size: int, dtype=np.float32) -> str:
        return self.const(name, self.rng.normal(0.0, 0.05, size=size).astype(dtype))

    def const(self, name: str, values) -> str:
        """An initializer holding `values` (dtype kept: pass int64 for shapes/axes)."""
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def constant_node(self, name: str, values) -> str:
        """A Constant node (not an initializer) producing `name`."""
        tensor = numpy_helper.from_array(np.asarray(values), name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}", value=tensor))
        return name

    # nodes ------------------------------------------------------------------------------
    def node(self, op: str, inputs, outputs=None, name: str | None = None, **attrs):
        """Append a node; returns its single output name (or the list when it has several)."""
        k = self._counts.get(op, 0)
        self._counts[op] = k + 1
        name = name or f"{op.lower()}_{k}"
        if outputs is None:
            outputs = [name]
        elif isinstance(outputs, str):
            outputs = [outputs]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def linear(self, x: str, d_in: int, d_out: int, prefix: str, gemm: bool = False, out: str | None = None) -> str:
        """x @ W + b, as Gemm(transB=1) with its bias or as MatMul followed by a bias Add.

        `out` names the result (e.g. a graph output); by default it is named after the node.
        """
        if gemm:
            w = self.weight(f"{prefix}.weight", (d_out, d_in), d_in)  # PyTorch layout [out, in]
            return self.node("Gemm", [x, w, self.bias(f"{prefix}.bias", d_out)], out, name=prefix, transB=1)
        w = self.weight(f"{prefix}.weight", (d_in, d_out), d_in)
        h = self.node("MatMul", [x, w], name=f"{prefix}.matmul")
        return self.node("Add", [h, self.bias(f"{prefix}.bias", d_out)], out, name=f"{prefix}.add")

    def conv(self, x: str, c_in: int, c_out: int, prefix: str, k: int = 3, group: int = 1, bias: bool = True) -> str:
        w = self.weight(f"{prefix}.weight", (c_out, c_in // group, k, k), (c_in // group) * k * k)
        inputs = [x, w] + ([self.bias(f"{prefix}.bias", c_out)] if bias else [])
        return self.node("Conv", inputs, name=prefix, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)

    # graphs -----------------------------------------------------------------------------
    def graph(self, name: str, inputs, outputs) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, inputs, outputs, self.inits)

    def model(self, name: str, inputs, outputs, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
        return _finish(self.graph(name, inputs, outputs), opset)


def _vi(name: str, shape, elem: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _finish(g: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    # make_model_gen_version picks the IR version that goes with the opset (make_model would
    # stamp the newest IR, which old runtimes and opset-9 style graphs do not expect).
    model = helper.make_model_gen_version(
        g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests/graphs.py"
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------- MLPs


def mlp() -> onnx.ModelProto:
    """x[N,64] -> Gemm(128) -> Relu -> Gemm(64) -> Relu -> Gemm(10): logits, PyTorch-style Linear layers."""
    b = _Builder(seed=1)
    h = b.node("Relu", [b.linear("x", 64, 128, "fc1", gemm=True)])
    h = b.node("Relu", [b.linear(h, 128, 64, "fc2", gemm=True)])
    b.linear(h, 64, 10, "fc3", gemm=True, out="logits")
    return b.model("mlp", [_vi("x", ["N", 64])], [_vi("logits", ["N", 10])])


def mlp_matmul_shared() -> onnx.ModelProto:
    """MatMul+Add layers; `shared.weight` [64,64] feeds two MatMuls (a tied / repeated block)."""
    b = _Builder(seed=2)
    shared = b.weight("shared.weight", (64, 64), 64)
    h = "x"
    for i in range(2):
        h = b.node("MatMul", [h, shared], name=f"block{i}.matmul")
        h = b.node("Add", [h, b.bias(f"block{i}.bias", 64)], name=f"block{i}.add")
        h = b.node("Relu", [h], name=f"block{i}.relu")
    b.linear(h, 64, 16, "head", out="logits")
    return b.model("mlp_matmul_shared", [_vi("x", ["N", 64])], [_vi("logits", ["N", 16])])


def mlp_with_preprocessing() -> onnx.ModelProto:
    """Image-like x[N,8,8] -> (x - mean) / std with constant tensors -> Reshape(int64 shape) -> MatMul MLP."""
    b = _Builder(seed=3)
    # Per-column statistics: 1-D constants matching the last dim, but they act on the input,
    # not on a MatMul output, so they are "elementwise", not biases.
    mean = b.const("pre.mean", np.linspace(-0.2, 0.2, 8).astype(np.float32))
    std = b.const("pre.std", np.linspace(0.8, 1.2, 8).astype(np.float32))
    h = b.node("Sub", ["x", mean], name="pre.sub")
    h = b.node("Div", [h, std], name="pre.div")
    h = b.node("Reshape", [h, b.const("pre.shape", np.array([-1, 64], np.int64))], name="pre.flatten")
    h = b.node("Relu", [b.linear(h, 64, 128, "fc1")])
    h = b.node("Relu", [b.linear(h, 128, 64, "fc2")])
    b.linear(h, 64, 10, "fc3", out="logits")
    return b.model("mlp_with_preprocessing", [_vi("x", ["N", 8, 8])], [_vi("logits", ["N", 10])])


# --------------------------------------------------------------------------- CNNs


def conv_net() -> onnx.ModelProto:
    """LeNet-like: x[N,1,16,16] -> (Conv+Relu+MaxPool) x2 -> Flatten -> Gemm -> Relu -> Gemm: logits."""
    b = _Builder(seed=4)
    h = "x"
    for i, (c_in, c_out) in enumerate([(1, 8), (8, 16)]):
        h = b.node("Relu", [b.conv(h, c_in, c_out, f"conv{i + 1}")])
        h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Flatten", [h], axis=1)  # [N, 16*4*4]
    h = b.node("Relu", [b.linear(h, 256, 64, "fc1", gemm=True)])
    b.linear(h, 64, 10, "fc2", gemm=True, out="logits")
    return b.model("conv_net", [_vi("x", ["N", 1, 16, 16])], [_vi("logits", ["N", 10])])


def _batchnorm(b: _Builder, x: str, c: int, prefix: str) -> str:
    params = [
        b.const(f"{prefix}.{name}", values.astype(np.float32))
        for name, values in (
            ("scale", 1 + b.rng.normal(0, 0.1, c)),
            ("bias", b.rng.normal(0, 0.1, c)),
            ("mean", b.rng.normal(0, 0.1, c)),
            ("var", 1 + b.rng.random(c)),
        )
    ]
    return b.node("BatchNormalization", [x] + params, name=prefix, epsilon=1e-5)


def depthwise_resnet(c: int = 48) -> onnx.ModelProto:
    """MobileNet-style residual block: Conv stem, depthwise Conv (group=C) + BatchNorm + Relu,
    pointwise Conv, residual Add, GlobalAveragePool, Flatten, Gemm head."""
    b = _Builder(seed=5)
    stem = b.node("Relu", [b.conv("x", 3, c, "stem")])
    h = b.conv(stem, c, c, "dw", group=c, bias=False)  # BatchNorm supplies the bias
    h = b.node("Relu", [_batchnorm(b, h, c, "dw_bn")])
    h = b.conv(h, c, c, "pw", k=1)
    h = b.node("Add", [stem, h], name="residual")
    h = b.node("GlobalAveragePool", [h])
    h = b.node("Flatten", [h])
    b.linear(h, c, 10, "fc", gemm=True, out="logits")
    return b.model("depthwise_resnet", [_vi("x", ["N", 3, 12, 12])], [_vi("logits", ["N", 10])])


def constant_weights_conv() -> onnx.ModelProto:
    """Weights held in Constant nodes (as some exporters do), one reached through an Identity."""
    b = _Builder(seed=6)
    w1 = b.constant_node("c1.weight", b.rng.normal(0, 1 / np.sqrt(27), (16, 3, 3, 3)).astype(np.float32))
    b1 = b.constant_node("c1.bias", b.rng.normal(0, 0.05, 16).astype(np.float32))
    h = b.node("Relu", [b.node("Conv", ["x", w1, b1], name="c1", pads=[1, 1, 1, 1])])
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])  # [N,16,6,6]
    w2 = b.constant_node("c2.weight", b.rng.normal(0, 1 / np.sqrt(144), (16, 16, 3, 3)).astype(np.float32))
    w2_alias = b.node("Identity", [w2], ["c2.weight_identity"], name="c2.identity")
    h = b.node("Relu", [b.node("Conv", [h, w2_alias], name="c2", pads=[1, 1, 1, 1])])
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])  # [N,16,3,3]
    h = b.node("Flatten", [h])
    fc = b.constant_node("fc.weight", b.rng.normal(0, 1 / np.sqrt(144), (144, 10)).astype(np.float32))
    h = b.node("MatMul", [h, fc], name="fc.matmul")
    b.node("Add", [h, b.constant_node("fc.bias", np.zeros(10, np.float32))], ["logits"], name="fc.add")
    return b.model("constant_weights_conv", [_vi("x", ["N", 3, 12, 12])], [_vi("logits", ["N", 10])])


# --------------------------------------------------------------------------- transformer


def transformer_encoder(
    vocab: int = 100, seq: int = 8, d: int = 64, heads: int = 4, d_ff: int = 128
) -> onnx.ModelProto:
    """ids[N,8] (int64) -> token Gather + position Add -> LayerNorm -> self-attention (Q/K/V MatMuls,
    Q.K^T and P.V between activations, Softmax) -> output MatMul + residual -> LayerNorm ->
    FFN with erf-GELU -> residual -> mean over tokens -> classifier logits[N,10]."""
    b = _Builder(seed=7)
    dh = d // heads
    emb = b.const("tok_emb", b.rng.normal(0, 1.0, (vocab, d)).astype(np.float32))
    pos = b.const("pos_emb", b.rng.normal(0, 0.1, (seq, d)).astype(np.float32))  # 2-D: elementwise, not a bias
    x = b.node("Gather", [emb, "ids"], name="embed", axis=0)
    x = b.node("Add", [x, pos], name="add_pos")

    def layer_norm(h, prefix):
        g = b.const(f"{prefix}.weight", (1 + b.rng.normal(0, 0.05, d)).astype(np.float32))
        beta = b.const(f"{prefix}.bias", b.rng.normal(0, 0.05, d).astype(np.float32))
        return b.node("LayerNormalization", [h, g, beta], name=prefix, axis=-1, epsilon=1e-5)

    h = layer_norm(x, "ln1")
    split = b.const("attn.split_shape", np.array([0, 0, heads, dh], np.int64))  # 0 = copy that dim
    qkv = {}
    for t in ("q", "k", "v"):
        p = b.linear(h, d, d, f"attn.{t}")
        p = b.node("Reshape", [p, split], name=f"attn.{t}.split")
        qkv[t] = b.node("Transpose", [p], name=f"attn.{t}.heads", perm=[0, 2, 1, 3])  # [N,H,S,dh]
    kt = b.node("Transpose", [qkv["k"]], name="attn.k.t", perm=[0, 1, 3, 2])
    s = b.node("MatMul", [qkv["q"], kt], name="attn.qk")  # activation x activation
    s = b.node("Mul", [s, b.const("attn.scale", np.array(1 / np.sqrt(dh), np.float32))], name="attn.scale_mul")
    p = b.node("Softmax", [s], name="attn.softmax", axis=-1)
    a = b.node("MatMul", [p, qkv["v"]], name="attn.av")
    a = b.node("Transpose", [a], name="attn.merge_t", perm=[0, 2, 1, 3])
    a = b.node("Reshape", [a, b.const("attn.merge_shape", np.array([0, 0, d], np.int64))], name="attn.merge")
    a = b.linear(a, d, d, "attn.out")
    x = b.node("Add", [x, a], name="residual1")

    h = layer_norm(x, "ln2")
    f = b.linear(h, d, d_ff, "ffn.fc1")
    # GELU as exported before opset 20: 0.5 * f * (1 + erf(f / sqrt(2)))
    e = b.node("Erf", [b.node("Div", [f, b.const("gelu.sqrt2", np.array(np.sqrt(2), np.float32))])])
    e = b.node("Add", [e, b.const("gelu.one", np.array(1, np.float32))])
    f = b.node("Mul", [b.node("Mul", [f, e]), b.const("gelu.half", np.array(0.5, np.float32))])
    f = b.linear(f, d_ff, d, "ffn.fc2")
    x = b.node("Add", [x, f], name="residual2")

    pooled = b.node("ReduceMean", [x], name="pool", axes=[1], keepdims=0)  # [N, d]
    b.linear(pooled, d, 10, "classifier", out="logits")
    return b.model("transformer_encoder", [_vi("ids", ["N", seq], TensorProto.INT64)], [_vi("logits", ["N", 10])])


# --------------------------------------------------------------------------- recurrent


def _recurrent(op: str, seed: int, seq: int = 5, features: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """x[T=5,N,16] (sequence first, the ONNX default layout) -> GRU/LSTM -> last hidden state -> MatMul head.

    The batch axis is axis 1 here: a Dataset slices axis 0, so feed all samples as one batch.
    """
    gates = {"GRU": 3, "LSTM": 4}[op]
    b = _Builder(seed=seed)
    w = b.weight("rnn.W", (1, gates * hidden, features), features)
    r = b.weight("rnn.R", (1, gates * hidden, hidden), hidden)
    bias = b.const("rnn.B", b.rng.normal(0, 0.05, (1, 2 * gates * hidden)).astype(np.float32))
    attrs = {"hidden_size": hidden}
    if op == "GRU":
        attrs["linear_before_reset"] = 1  # what PyTorch exports
        outputs = ["", "rnn.Y_h"]  # Y omitted: an optional output left empty
    else:
        outputs = ["rnn.Y", "rnn.Y_h", ""]  # Y computed but unused, Y_c omitted
    y_h = b.node(op, ["x", w, r, bias], outputs, name="rnn", **attrs)[1]
    last = b.node("Squeeze", [y_h, b.const("rnn.squeeze_axes", np.array([0], np.int64))], name="last_state")  # [N, H]
    b.linear(last, hidden, 10, "head", out="logits")
    return b.model(f"{op.lower()}_model", [_vi("x", [seq, "N", features])], [_vi("logits", ["N", 10])])


def gru_model() -> onnx.ModelProto:
    return _recurrent("GRU", seed=8)


def lstm_model() -> onnx.ModelProto:
    return _recurrent("LSTM", seed=9)


def streaming_vad_model() -> onnx.ModelProto:
    """Shaped like a streaming voice-activity model (silero-vad): audio x[N, T] with a dynamic T,
    a recurrent state[1, N, 32] whose batch axis is 1, and a scalar int64 sample rate `sr`
    that scales the input.  Outputs prob[N, 1] and the new state.  Its data cannot be batched
    along axis 0: it takes the per-sample layout (one whole feed per sample) plus a constant.
    """
    b = _Builder(seed=12)
    scale = b.node("Cast", ["sr"], to=FLOAT)
    scale = b.node("Div", [scale, b.const("sr_ref", np.array(16000.0, np.float32))])
    x = b.node("Mul", ["x", scale])
    frames = b.node("Reshape", [x, b.const("frame_shape", np.array([0, -1, 16], np.int64))])  # [N, T/16, 16]
    seq = b.node("Transpose", [frames], perm=[1, 0, 2])  # [T/16, N, 16]
    w = b.weight("gru.W", (1, 96, 16), 16)
    r = b.weight("gru.R", (1, 96, 32), 32)
    _, h = b.node(
        "GRU", [seq, w, r, "", "", "state"], ["", "state_out"], name="gru", hidden_size=32, linear_before_reset=1
    )
    last = b.node("Squeeze", [h, b.const("squeeze_axes", np.array([0], np.int64))])
    logit = b.linear(last, 32, 1, "head")
    b.node("Sigmoid", [logit], ["prob"])
    inputs = [
        _vi("x", ["N", "T"]),
        _vi("state", [1, "N", 32]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    return b.model("streaming_vad", inputs, [_vi("prob", ["N", 1]), _vi("state_out", [1, "N", 32])])


# --------------------------------------------------------------------------- control flow


def if_subgraph_model() -> onnx.ModelProto:
    """x[N,32], flag[N] (bool) -> MatMul trunk -> If(any(flag)): each branch has its own weight
    and bias initializers and both use the outer-scope `head.weight`."""
    b = _Builder(seed=10)
    h = b.node("Relu", [b.linear("x", 32, 64, "trunk")])
    # The condition is computed from the flag input (If wants one bool element, a Dataset
    # wants every input batched): cond = max(float(flag)) > 0.5.
    f = b.node("Cast", ["flag"], to=FLOAT)
    f = b.node("ReduceMax", [f], keepdims=0)
    cond = b.node("Greater", [f, b.const("half", np.array(0.5, np.float32))], ["cond"], name="cond")
    head = b.weight("head.weight", (64, 10), 64)  # outer scope: read inside both branches

    def branch(name: str, relu: bool) -> onnx.GraphProto:
        sb = _Builder(rng=b.rng)
        t = sb.node("MatMul", [h, sb.weight(f"{name}.weight", (64, 64), 64)], name=f"{name}.matmul")
        t = sb.node("Add", [t, sb.bias(f"{name}.bias", 64)], name=f"{name}.add")
        if relu:
            t = sb.node("Relu", [t], name=f"{name}.relu")
        sb.node("MatMul", [t, head], [f"{name}_out"], name=f"{name}.head")
        return sb.graph(name, [], [_vi(f"{name}_out", ["N", 10])])

    b.node("If", [cond], ["logits"], name="if", then_branch=branch("then", True), else_branch=branch("else", False))
    return b.model(
        "if_subgraph_model", [_vi("x", ["N", 32]), _vi("flag", ["N"], TensorProto.BOOL)], [_vi("logits", ["N", 10])]
    )


# --------------------------------------------------------------------------- already quantized


def _quantize_per_column(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column (axis 1 of a MatMul B): (int8 values, float scales)."""
    scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def quantized_qdq_model() -> onnx.ModelProto:
    """A model already in QDQ form (like onnxruntime's quantize_static output): int8 weight
    initializers behind DequantizeLinear (per channel, then per tensor), uint8 Q/DQ on activations."""
    b = _Builder(seed=11)

    def qdq_activation(x: str, name: str, scale: float) -> str:
        s = b.const(f"{name}.scale", np.array(scale, np.float32))
        z = b.const(f"{name}.zero_point", np.array(128, np.uint8))
        q = b.node("QuantizeLinear", [x, s, z], name=f"{name}.q")
        return b.node("DequantizeLinear", [q, s, z], name=f"{name}.dq")

    def qdq_weight(name: str, d_in: int, d_out: int, per_channel: bool) -> str:
        w = b.rng.normal(0, 1 / np.sqrt(d_in), (d_in, d_out)).astype(np.float32)
        q, scale = _quantize_per_column(w)
        if not per_channel:
            scale = np.array(np.abs(w).max() / 127.0, np.float32)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        zp = np.zeros(scale.shape, np.int8)
        ins = [
            b.const(f"{name}.weight_quantized", q),
            b.const(f"{name}.weight_scale", scale),
            b.const(f"{name}.weight_zero_point", zp),
        ]
        return b.node("DequantizeLinear", ins, name=f"{name}.weight_dq", **({"axis": 1} if per_channel else {}))

    h = qdq_activation("x", "x", 4.0 / 127)
    h = b.node("MatMul", [h, qdq_weight("fc1", 64, 128, per_channel=True)], name="fc1.matmul")
    h = b.node("Relu", [b.node("Add", [h, b.bias("fc1.bias", 128)], name="fc1.add")])
    h = qdq_activation(h, "fc1.out", 4.0 / 127)
    h = b.node("MatMul", [h, qdq_weight("fc2", 128, 10, per_channel=False)], name="fc2.matmul")
    b.node("Add", [h, b.bias("fc2.bias", 10)], ["logits"], name="fc2.add")
    return b.model("quantized_qdq_model", [_vi("x", ["N", 64])], [_vi("logits", ["N", 10])])


# --------------------------------------------------------------------------- dtypes, opsets


def integer_input_model() -> onnx.ModelProto:
    """Two integer feature inputs (a: int32[N,8], b: int64[N,8]) cast to float, concatenated, MLP."""
    b = _Builder(seed=12)
    fa = b.node("Cast", ["a"], to=FLOAT, name="cast_a")
    fb = b.node("Cast", ["b"], to=FLOAT, name="cast_b")
    h = b.node("Concat", [fa, fb], axis=1)
    # integer features are in [0, 16): centre them so the first layer sees O(1) values
    h = b.node(
        "Div",
        [
            b.node("Sub", [h, b.const("center", np.array(7.5, np.float32))]),
            b.const("spread", np.array(4.6, np.float32)),
        ],
    )
    h = b.node("Relu", [b.linear(h, 16, 64, "fc1")])
    b.linear(h, 64, 10, "fc2", out="logits")
    return b.model(
        "integer_input_model",
        [_vi("a", ["N", 8], TensorProto.INT32), _vi("b", ["N", 8], TensorProto.INT64)],
        [_vi("logits", ["N", 10])],
    )


def fp16_model() -> onnx.ModelProto:
    """A half-precision MLP: float16 input, weights, biases and logits."""
    b = _Builder(seed=13)
    f16 = np.float16

    def linear16(x, d_in, d_out, prefix, out=None):
        w = b.weight(f"{prefix}.weight", (d_in, d_out), d_in, dtype=f16)
        h = b.node("MatMul", [x, w], name=f"{prefix}.matmul")
        return b.node("Add", [h, b.bias(f"{prefix}.bias", d_out, dtype=f16)], out, name=f"{prefix}.add")

    h = b.node("Relu", [linear16("x", 64, 64, "fc1")])
    linear16(h, 64, 10, "fc2", out="logits")
    return b.model(
        "fp16_model", [_vi("x", ["N", 64], TensorProto.FLOAT16)], [_vi("logits", ["N", 10], TensorProto.FLOAT16)]
    )


def opset_model(opset: int) -> onnx.ModelProto:
    """A small conv + Gemm classifier buildable at any opset in OPSETS (9 ... 21).

    x[N,3,8,8] -> Conv -> BatchNorm -> Clip(0, 6) -> Split(2 on channels) -> MaxPool | AveragePool
    -> Concat -> ReduceMean(width) -> Flatten -> Gemm -> Relu -> Gemm -> Softmax: probabilities.
    Spelled per opset where ONNX changed an op's signature:
    * Clip: min/max attributes before 11, inputs from 11;
    * Split: `split` attribute before 13, `split` input from 13, `num_outputs` from 18;
    * ReduceMean: `axes` attribute before 18, `axes` input from 18;
    * Softmax: before 13 it flattens to 2-D from `axis` (default 1), from 13 it works on one
      axis (default -1).  The input is [N, 10] with axis=1, the same in every version;
    * Gemm: C (bias) was required before 11, so it is always given.
    """
    if opset < 9:
        raise ValueError("opset_model is built from opset 9 on")
    b = _Builder(seed=20 + opset)
    h = _batchnorm(b, b.conv("x", 3, 16, "conv"), 16, "bn")
    if opset < 11:
        h = b.node("Clip", [h], name="relu6", min=0.0, max=6.0)
    else:
        h = b.node(
            "Clip",
            [h, b.const("relu6.min", np.array(0, np.float32)), b.const("relu6.max", np.array(6, np.float32))],
            name="relu6",
        )
    halves = ["split.a", "split.b"]
    if opset < 13:
        b.node("Split", [h], halves, name="split", axis=1, split=[8, 8])
    elif opset < 18:
        b.node("Split", [h, b.const("split.sizes", np.array([8, 8], np.int64))], halves, name="split", axis=1)
    else:
        b.node("Split", [h], halves, name="split", axis=1, num_outputs=2)
    pa = b.node("MaxPool", [halves[0]], kernel_shape=[2, 2], strides=[2, 2])
    pb = b.node("AveragePool", [halves[1]], kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Concat", [pa, pb], axis=1)  # [N,16,4,4]
    if opset < 18:
        h = b.node("ReduceMean", [h], name="reduce_w", axes=[3], keepdims=0)  # [N,16,4]
    else:
        h = b.node("ReduceMean", [h, b.const("reduce_w.axes", np.array([3], np.int64))], name="reduce_w", keepdims=0)
    h = b.node("Flatten", [h], axis=1)  # [N,64]
    h = b.node("Relu", [b.linear(h, 64, 32, "fc1", gemm=True)])
    h = b.linear(h, 32, 10, "fc2", gemm=True)
    b.node("Softmax", [h], ["probs"], name="softmax", axis=1)
    return b.model(f"opset{opset}_model", [_vi("x", ["N", 3, 8, 8])], [_vi("probs", ["N", 10])], opset=opset)


# --------------------------------------------------------------------------- registry & data


BUILDERS = {
    "mlp": mlp,
    "mlp_matmul_shared": mlp_matmul_shared,
    "mlp_with_preprocessing": mlp_with_preprocessing,
    "conv_net": conv_net,
    "depthwise_resnet": depthwise_resnet,
    "transformer_encoder": transformer_encoder,
    "gru_model": gru_model,
    "lstm_model": lstm_model,
    "constant_weights_conv": constant_weights_conv,
    "if_subgraph_model": if_subgraph_model,
    "quantized_qdq_model": quantized_qdq_model,
    "integer_input_model": integer_input_model,
    "fp16_model": fp16_model,
    "streaming_vad_model": streaming_vad_model,
}


def _index_ranges(model: onnx.ModelProto) -> dict[str, int]:
    """Input name -> number of rows of the table a Gather indexes with it (token ids < vocab)."""
    inits = {t.name: t for t in model.graph.initializer}
    ranges = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits:
            ranges[node.input[1]] = int(inits[node.input[0]].dims[0])
    return ranges


def make_inputs(model: onnx.ModelProto, n: int = 8, seed: int = 0) -> Dataset:
    """A Dataset of n random samples for the model's inputs (labels None).

    Every dynamic dimension becomes n.  Floats: standard normal in the input's float type.
    Integers: token ids within the vocabulary of the Gather they index, else in [0, 16).
    Booleans: one value for the whole dataset, True for even seeds and False for odd ones —
    an If condition computed from a bool input then picks the same branch for every batch,
    so batched and unbatched runs agree, and seeds 0 / 1 exercise both branches.
    """
    rng = np.random.default_rng(seed)
    if model.graph.name == "streaming_vad":
        # Per-sample layout: sample i is one whole feed (batch 1, 64 audio samples, zero
        # state); the sample rate is a constant fed to every run.
        audio = rng.standard_normal((n, 1, 64)).astype(np.float32)
        return Dataset(
            {"x": audio, "state": np.zeros((n, 1, 1, 32), np.float32)},
            None,
            constants={"sr": np.array(16000, np.int64)},
            per_sample=True,
        )
    ranges = _index_ranges(model)
    inputs: dict[str, np.ndarray] = {}
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else n for d in tt.shape.dim]
        if dtype == np.bool_:
            arr = np.full(shape, seed % 2 == 0, dtype=bool)
        elif dtype.kind in "iu":
            arr = rng.integers(0, ranges.get(vi.name, 16), size=shape).astype(dtype)
        else:
            arr = rng.standard_normal(size=shape).astype(dtype)
        inputs[vi.name] = arr
    return Dataset(inputs, None)


def external_data_model(tmpdir) -> str:
    """Save `mlp()` with its tensors in `mlp.onnx.data` beside `mlp.onnx` in tmpdir; return the .onnx path."""
    folder = Path(tmpdir)
    path = folder / "mlp.onnx"
    onnx.save_model(
        mlp(),
        os.fspath(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="mlp.onnx.data",
        size_threshold=0,
    )
    return os.fspath(path)


def relu_mlp(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x -> MatMul(w1) -> Relu -> MatMul(w2) -> y, batch dimension N, opset 17."""
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w1.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w2.shape[1]])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def two_layer_mlp_files(tmp_path: Path) -> tuple[Path, Path]:
    """A 64 -> 128 -> 10 MatMul net with Laplace weights, and 64 unlabeled inputs."""
    rng = np.random.default_rng(0)
    w1 = rng.laplace(size=(64, 128)).astype(np.float32) / 10
    w2 = rng.laplace(size=(128, 10)).astype(np.float32) / 10
    path, data = tmp_path / "mlp.onnx", tmp_path / "in.npz"
    onnx.save(relu_mlp(w1, w2), path)
    np.savez(data, x=rng.normal(size=(64, 64)).astype(np.float32))
    return path, data
