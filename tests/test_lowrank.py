"""The low-rank pass (compressor/passes/lowrank.py): graphs rewritten into two products."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import constant_and_if_net, make_model, vi
from onnx import helper, numpy_helper

from compressor import graph
from compressor.data import Dataset
from compressor.errors import UsageError
from compressor.passes.lowrank import apply_ranks, factorable_weights, factorize_weights, layer_covariances, lowrank


def _low_rank(rng, m, n, rank):
    return (rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n)) / np.sqrt(m * rank)).astype(np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def gemm_model(trans_b: int, bias: bool = True, alpha: float = 1.0, beta: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = _low_rank(rng, 64, 48, 4)  # (in, out)
    stored = w.T.copy() if trans_b else w
    inputs = ["x", "w"] + (["b"] if bias else [])
    inits = [numpy_helper.from_array(stored, "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=48).astype(np.float32), "b"))
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
    return make_model([node], [vi("x", ["N", 64])], [vi("y", ["N", 48])], inits), w


def matmul_bias_model(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = _low_rank(rng, 40, 56, 3)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["y"], name="bias"),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(56, np.float32), "b")]
    return make_model(nodes, [vi("x", ["N", 7, 40])], [vi("y", ["N", 7, 56])], inits), w


def shared_model(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = _low_rank(rng, 48, 48, 2)
    v = _low_rank(rng, 48, 48, 2)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "w"], ["h2"], name="mm2"),
        helper.make_node("MatMul", ["h2", "v"], ["y"], name="mm3"),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")]
    return make_model(nodes, [vi("x", ["N", 48])], [vi("y", ["N", 48])], inits)


def conv1x1_model(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = _low_rank(rng, 64, 40, 3).T.reshape(40, 64, 1, 1).copy()  # (out, in, 1, 1)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1])
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(40, np.float32), "b")]
    return make_model([node], [vi("x", ["N", 64, 6, 6])], [vi("y", ["N", 40, 4, 4])], inits)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_factorised_exactly_at_the_true_rank(trans_b, bias):
    model, w = gemm_model(trans_b, bias, alpha=0.5, beta=2.0)
    x = np.random.default_rng(1).normal(size=(5, 64)).astype(np.float32)
    out, stats = lowrank(model, rank_ratio=4 / 48)
    assert stats["totals"]["factored_tensors"] == 1
    t = stats["tensors"][0]
    assert (t["rank"], t["params"], t["factored_params"]) == (4, 64 * 48, 4 * (64 + 48))
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Gemm" if bias else "MatMul"]
    assert "w" not in {i.name for i in out.graph.initializer}
    assert model.graph.node[0].op_type == "Gemm"  # the input is not touched
    np.testing.assert_allclose(_run(out, x)[0], _run(model, x)[0], rtol=1e-4, atol=1e-4)


def test_factors_match_a_times_b_at_a_lower_rank():
    model, w = gemm_model(1)
    x = np.random.default_rng(1).normal(size=(5, 64)).astype(np.float32)
    out, stats = lowrank(model, rank_ratio=2 / 48)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    a = next(v for k, v in inits.items() if k.endswith("lowrank_a"))
    b = next(v for k, v in inits.items() if k.endswith("lowrank_b"))
    assert a.shape == (64, 2) and b.shape == (2, 48)
    expected = x @ (a @ b) + inits["b"]
    np.testing.assert_allclose(_run(out, x)[0], expected, rtol=1e-4, atol=1e-4)
    assert 0 < stats["tensors"][0]["error"] < 1


def test_matmul_with_add_bias_keeps_the_add_after_the_second_product():
    model, w = matmul_bias_model()
    x = np.random.default_rng(2).normal(size=(3, 7, 40)).astype(np.float32)
    out, stats = lowrank(model, rank_ratio=3 / 40)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMul", "Add"]
    assert out.graph.node[2].input[0] == out.graph.node[1].output[0] == "h"
    np.testing.assert_allclose(_run(out, x)[0], _run(model, x)[0], rtol=1e-4, atol=1e-4)


def test_shared_weight_left_alone_and_reported():
    model = shared_model()
    x = np.random.default_rng(3).normal(size=(4, 48)).astype(np.float32)
    weights, skipped = factorable_weights(model, min_params=0)
    assert [w.name for w in weights] == ["v"]
    assert {s.name: s.reason for s in skipped} == {"w": "shared by 2 consumers"}
    out, stats = lowrank(model, rank_ratio=2 / 48, min_params=0)
    assert [t["name"] for t in stats["tensors"]] == ["v"]
    assert any(s["name"] == "w" for s in stats["skipped"])
    assert "w" in {i.name for i in out.graph.initializer}
    np.testing.assert_allclose(_run(out, x)[0], _run(model, x)[0], rtol=1e-3, atol=1e-4)


def test_subgraph_weights_left_alone():
    model = constant_and_if_net()
    weights, skipped = factorable_weights(model, min_params=0)
    reasons = {s.name: s.reason for s in skipped}
    assert "then_w" in reasons and "outer_w" in reasons  # one in a subgraph, one used inside one
    assert all(not w.ref.graph_path for w in weights)


def test_conv_1x1_factorised_with_strides_and_pads_on_the_first():
    model = conv1x1_model()
    x = np.random.default_rng(4).normal(size=(2, 64, 6, 6)).astype(np.float32)
    out, stats = lowrank(model, rank_ratio=3 / 40)
    assert [n.op_type for n in out.graph.node] == ["Conv", "Conv"]
    assert stats["tensors"][0]["rank"] == 3
    np.testing.assert_allclose(_run(out, x)[0], _run(model, x)[0], rtol=1e-4, atol=1e-4)


def test_no_rank_that_saves_values_is_not_applied():
    model, _ = gemm_model(0)
    out, stats = lowrank(model, rank_ratio=1.0)
    assert stats["totals"]["factored_tensors"] == 0
    assert any("saves no values" in s["reason"] for s in stats["skipped"])
    assert [n.op_type for n in out.graph.node] == ["Gemm"]


def test_rank_ratio_checked():
    model, _ = gemm_model(0)
    with pytest.raises(UsageError):
        lowrank(model, rank_ratio=0.0)


def test_data_aware_factors_lose_less_output_than_plain_ones():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(64, 48)).astype(np.float32) / 8
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    model = make_model([node], [vi("x", ["N", 64])], [vi("y", ["N", 48])], [numpy_helper.from_array(w, "w")])
    # Inputs confined to 8 directions: rank 8 reproduces the layer's output on them.
    x = (rng.normal(size=(256, 8)) @ rng.normal(size=(8, 64))).astype(np.float32)
    data = Dataset({"x": x}, None)
    aware, aware_stats = lowrank(model, rank_ratio=8 / 48, data=data)
    plain, _ = lowrank(model, rank_ratio=8 / 48)
    ref = _run(model, x)[0]
    err_aware = np.sum((_run(aware, x)[0] - ref) ** 2) / np.sum(ref**2)
    err_plain = np.sum((_run(plain, x)[0] - ref) ** 2) / np.sum(ref**2)
    assert aware_stats["tensors"][0]["method"] == "covariance"
    assert err_aware < 1e-4 < err_plain
    assert aware_stats["tensors"][0]["error"] == pytest.approx(err_aware, abs=1e-4)


def test_refit_keeps_the_output_error_at_most_the_same():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(64, 48)).astype(np.float32) / 8
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    model = make_model([node], [vi("x", ["N", 64])], [vi("y", ["N", 48])], [numpy_helper.from_array(w, "w")])
    data = Dataset({"x": rng.normal(size=(128, 64)).astype(np.float32)}, None)
    weights, _ = factorable_weights(model)
    layers = layer_covariances(model, weights, data)
    f = factorize_weights(weights, layers)
    _, plain = apply_ranks(model, f, {"w": 10}, layers)
    _, refit = apply_ranks(model, f, {"w": 10}, layers, refit=True)
    assert refit["tensors"][0]["refit"]
    assert refit["tensors"][0]["error"] <= plain["tensors"][0]["error"] + 1e-6


def test_weights_of_the_result_are_seen_by_the_other_passes():
    model, _ = gemm_model(1)
    out, _ = lowrank(model, rank_ratio=4 / 48)
    roles = {w.name: w.role for w in graph.weights(out)}
    assert sorted(roles.values()) == ["bias", "gemm_b", "matmul_const"]
