"""A Conv that stays float after quantize reads its own filter again (passes/quantize/unfold.py):
prepare folds every Conv -> BatchNormalization, which on a shared filter would leave a float
layer with nearly every weight distinct; the BatchNorm's factor becomes a Mul after the Conv."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from compressor import evaluate, graph
from compressor.data import Dataset
from compressor.passes.quantize import QuantizeSettings, quantize


def conv_bn_net(seed: int = 0):
    """x -> Conv(a codebook of 4 values) -> BatchNormalization -> Relu -> Conv -> y."""
    rng = np.random.default_rng(seed)
    book = np.array([-0.5, -0.1, 0.2, 0.6], np.float32)
    w1 = book[rng.integers(0, 4, (8, 3, 3, 3))]
    w2 = rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "var"),
        numpy_helper.from_array(w2, "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    g = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def calib(n: int = 16) -> Dataset:
    return Dataset({"x": np.random.default_rng(1).normal(0, 1, (n, 3, 8, 8)).astype(np.float32)}, None)


def test_an_excluded_conv_keeps_its_own_filter_and_its_outputs():
    model, data = conv_bn_net(), calib()
    for mode in ("static", "none"):
        q, _ = quantize(
            model, data if mode == "static" else None, QuantizeSettings(activations=mode, exclude="^conv1$")
        )
        arrays = {w.name: w.array() for w in graph.weights(q)}
        np.testing.assert_array_equal(arrays["w1"], numpy_helper.to_array(model.graph.initializer[0]))
        assert np.unique(arrays["w1"]).size == 4  # the codebook, not 4 values x 8 factors
        conv = next(n for n in q.graph.node if n.op_type == "Conv" and "w1" in n.input)
        mul = next(n for n in q.graph.node if n.op_type == "Mul" and conv.output[0] in n.input)
        assert mul.output[0] == "n1"  # the BatchNorm's output, now the Mul's
        ref = evaluate.run_model(model, data)[0]
        assert evaluate.snr_db(ref, evaluate.run_model(q, data)[0]) > 25


def test_a_quantized_conv_is_folded_as_before():
    model, data = conv_bn_net(), calib()
    q, stats = quantize(model, data, QuantizeSettings())
    assert stats["batchnorm_folded"] == 1
    assert not any(n.op_type == "Mul" for n in q.graph.node)
    assert "w1" not in {w.name for w in graph.weights(q)}  # int8 only
