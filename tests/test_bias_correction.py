"""bias_correction: the mean output shift of changed weights taken back through the biases."""

from __future__ import annotations

import graphs
import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.data import Dataset
from compressor.evaluate import capture
from compressor.passes.bias_correction import correct_biases
from compressor.passes.share import share


def positive_inputs(model, n=64, seed=0) -> Dataset:
    """Non-negative inputs (like images or post-ReLU features): a mean the shift depends on."""
    data = graphs.make_inputs(model, n, seed)
    return Dataset({k: np.abs(v) + 0.5 for k, v in data.inputs.items()}, None)


def channel_means(model, name, data, axis=1):
    batches = [b[name] for b in capture(model, [name], data)]
    x = np.concatenate(batches).astype(np.float64)
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).mean(axis=0)


def mlp_matmul_add(seed=0):
    """x -> MatMul(W1) + b1 -> Relu -> Gemm(W2, transB=1) without C: the two linear forms."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (32, 64)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 64).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.2, (10, 64)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
        helper.make_node("Add", ["m", "b1"], ["h"], name="fc1_bias"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def keep(shared):
    """A judge that keeps the correction (it scores any model but the uncorrected one higher)."""
    return lambda m: m is not shared


def test_the_first_conv_layers_output_mean_is_restored_up_to_its_padding():
    # The first layer reads the graph input, which sharing does not change: after the
    # correction its output mean equals the original's but for the zero-padded border, which
    # the shift (computed for a full kernel) ignores; the MatMul test below is exact.
    model = graphs.conv_net()
    data = positive_inputs(model)
    shared, _ = share(model, bits_conv=2, bits_fc=2, min_params=0)
    fixed, stats = correct_biases(
        model, shared, data, ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"], judge=keep(shared)
    )
    assert {c["name"] for c in stats["corrected"]} == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    out = next(n.output[0] for n in model.graph.node if n.name == "conv1")
    want = channel_means(model, out, data)
    before = np.abs(channel_means(shared, out, data) - want).max()
    after = np.abs(channel_means(fixed, out, data) - want).max()
    assert before > 0.1 and after < before / 5


def test_matmul_bias_add_and_a_gemm_without_c_are_corrected():
    model = mlp_matmul_add()
    data = positive_inputs(model)
    shared, _ = share(model, bits_fc=2, min_params=0)
    fixed, stats = correct_biases(model, shared, data, ["w1", "w2"], judge=keep(shared))
    assert {c["name"] for c in stats["corrected"]} == {"w1", "w2"}
    consts = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}
    gemm = next(n for n in fixed.graph.node if n.op_type == "Gemm")
    assert len(gemm.input) == 3 and consts[gemm.input[2]].shape == (10,)  # a C input was added
    np.testing.assert_allclose(
        channel_means(fixed, "m", data, -1) + consts["b1"],
        channel_means(model, "m", data, -1) + numpy_helper.to_array(model.graph.initializer[1]),
        atol=1e-4,
    )
    assert [n.op_type for n in shared.graph.node] == [n.op_type for n in fixed.graph.node]  # no node added


def test_the_judge_decides_and_inputs_are_not_mutated():
    model = graphs.conv_net()
    data = positive_inputs(model)
    shared, _ = share(model, bits_conv=2, bits_fc=2, min_params=0)
    snapshot = shared.SerializeToString()
    kept, stats = correct_biases(model, shared, data, ["conv1.weight"], judge=lambda m: m is not shared)
    assert stats["kept"] and stats["corrected"]
    refused, stats = correct_biases(model, shared, data, ["conv1.weight"], judge=lambda m: m is shared)
    assert not stats["kept"] and stats["corrected"] == []
    assert refused.SerializeToString() == snapshot == shared.SerializeToString()
    assert kept.SerializeToString() != snapshot


def test_what_cannot_be_corrected_is_reported():
    model = graphs.mlp_matmul_shared()  # shared.weight feeds two MatMuls
    data = positive_inputs(model)
    shared, _ = share(model, bits_fc=2, min_params=0)
    _, stats = correct_biases(model, shared, data, ["shared.weight", "missing"], judge=keep(shared))
    reasons = {s["name"]: s["reason"] for s in stats["skipped"]}
    assert reasons["shared.weight"] == "used by several nodes" and "missing" in reasons


def test_share_keeps_the_correction_only_when_it_brings_the_outputs_closer():
    model = graphs.depthwise_resnet()
    data = positive_inputs(model, 128)
    _, stats = share(model, bits_conv=2, bits_fc=2, min_params=0, bias_data=data)
    correction = stats["bias_correction"]
    assert correction["judged_by"] in ("top1_agreement", "snr_db")
    key = correction["judged_by"]
    if correction["kept"]:
        assert correction["with"][key] >= correction["without"][key]
    else:
        assert correction["corrected"] == []
