"""share: per-tensor k-means weight sharing (pass and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import constant_and_if_net, make_model, vi
from graphs import laplace_weights as _w
from onnx import helper, numpy_helper

from compressor import graph
from compressor.cli import main
from compressor.data import Dataset, load_dataset
from compressor.errors import UsageError
from compressor.evaluate import evaluate, run_model
from compressor.passes.share import share

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


# --------------------------------------------------------------------------- helpers


def mlp(dims=(64, 128, 32), seed=0, dtype=np.float32, sparsity=0.0):
    """x -> Gemm(transB) -> Relu -> MatMul -> y."""
    rng = np.random.default_rng(seed)
    w1 = rng.laplace(0, 0.1, (dims[1], dims[0]))
    w2 = rng.laplace(0, 0.1, (dims[1], dims[2]))
    for w in (w1, w2):
        if sparsity:
            w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0.0
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        numpy_helper.from_array(w1.astype(dtype), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, dims[1]).astype(dtype), "b1"),
        numpy_helper.from_array(w2.astype(dtype), "w2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    return make_model(nodes, [vi("x", ["N", dims[0]], onnx_type)], [vi("y", ["N", dims[2]], onnx_type)], inits)


def random_data(model, n=64, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    inputs = {}
    for v in graph.graph_inputs(model):
        shape = [n if not d.dim_value else d.dim_value for d in v.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        inputs[v.name] = rng.normal(size=shape).astype(dtype)
    return Dataset(inputs, None)


def tensors_by_key(model):
    return {(r.graph_path, r.name): r.proto for r in graph.iter_tensors(model)}


def check_shared(original, shared, stats):
    """The contract: <= 2^bits distinct non-zeros, zeros kept, other tensors bit-identical, dtype kept."""
    done = {t["name"]: t for t in stats["tensors"]}
    before, after = tensors_by_key(original), tensors_by_key(shared)
    assert before.keys() == after.keys()
    for key, proto in before.items():
        new = after[key]
        if key[1] in done:
            a, b = numpy_helper.to_array(proto), numpy_helper.to_array(new)
            assert b.dtype == a.dtype and b.shape == a.shape
            np.testing.assert_array_equal(b == 0, a == 0)
            distinct = np.unique(b[b != 0].astype(np.float64)).size  # float16: see quant_math.sortable
            assert distinct <= 2 ** done[key[1]]["bits"]
            assert distinct == done[key[1]]["distinct"]
        else:
            assert new.SerializeToString() == proto.SerializeToString(), key
    # same graph: only initializer / Constant values differ
    strip = lambda m: [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node]
    assert strip(original) == strip(shared)


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_mlp_shared_tensors_follow_the_contract(dtype):
    model = mlp(dtype=dtype)
    out, stats = share(model, bits_fc=4)
    assert [t["name"] for t in stats["tensors"]] == ["w1", "w2"]
    assert all(t["bits"] == 4 and t["codebook_size"] <= 16 for t in stats["tensors"])
    check_shared(model, out, stats)
    data = random_data(model)
    ref, got = run_model(model, data)[0], run_model(out, data)[0]
    assert got.dtype == ref.dtype
    rel = np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64))
    assert rel < 0.3  # random Laplacian weights at 4 bits, two layers
    assert model.SerializeToString() == mlp(dtype=dtype).SerializeToString()  # input untouched


def test_pruned_mlp_at_4_bits_keeps_zeros_and_16_values():
    model = mlp(dims=(256, 256, 64), sparsity=0.9)
    out, stats = share(model, bits_fc=4)
    check_shared(model, out, stats)
    for t in stats["tensors"]:
        w0 = graph.weight_by_name(model)[t["name"]].array()
        w1 = graph.weight_by_name(out)[t["name"]].array()
        assert t["zeros"] == int((w0 == 0).sum()) >= 0.9 * w0.size - 1
        np.testing.assert_array_equal(w1 == 0, w0 == 0)
        assert np.unique(w1[w1 != 0]).size <= 16


def test_defaults_bits_by_role_min_params_exclude_and_overrides():
    model = mlp()
    _, stats = share(model)
    assert {t["name"]: t["bits"] for t in stats["tensors"]} == {"w1": 5, "w2": 5}
    _, stats = share(model, min_params=5000)
    assert [t["name"] for t in stats["tensors"]] == ["w1"]  # 8192 values; w2 has 4096
    assert stats["skipped"] == [
        {"name": "w2", "role": "matmul_const", "size": 4096, "reason": "fewer than 5000 values"}
    ]
    _, stats = share(model, min_params=5000, bits_by_name={"w2": 3})  # naming a tensor overrides min_params
    assert {t["name"]: t["bits"] for t in stats["tensors"]} == {"w1": 5, "w2": 3}
    _, stats = share(model, exclude="^w1$")
    assert [t["name"] for t in stats["tensors"]] == ["w2"]


def test_sharing_is_idempotent_and_deterministic():
    model = mlp(sparsity=0.5)
    once, _ = share(model, init="random", seed=3)
    again, _ = share(model, init="random", seed=3)
    assert once.SerializeToString() == again.SerializeToString()
    twice, stats = share(once, init="random", seed=3)
    assert twice.SerializeToString() == once.SerializeToString()
    assert all(t["rmse"] == 0 for t in stats["tensors"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits_fc": 0}, "bits"),
        ({"bits_conv": 17}, "bits"),
        ({"bits_by_name": {"w1": 20}}, "bits"),
        ({"bits_by_name": {"nope": 4}}, "no weight tensor named 'nope'"),
        ({"bits_by_name": {"b1": 4}}, "role bias"),
        ({"init": "kmeans++"}, "init must be one of"),
        ({"exclude": "(["}, "regular expression"),
        ({"min_params": -1}, "min_params"),
    ],
)
def test_bad_options_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        share(mlp(), **kwargs)


# --------------------------------------------------------------------------- refit math


def _one_layer(kind, rng):
    if kind == "gemm":
        w = rng.laplace(0, 0.1, (30, 40)).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, alpha=0.5)
        return make_model([node], [vi("x", ["N", 40])], [vi("y", ["N", 30])], [numpy_helper.from_array(w, "w")])
    if kind == "matmul":
        w = rng.laplace(0, 0.1, (40, 30)).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        return make_model([node], [vi("x", ["N", 5, 40])], [vi("y", ["N", 5, 30])], [numpy_helper.from_array(w, "w")])
    w = rng.laplace(0, 0.1, (8, 3, 3, 3)).astype(np.float32)
    attrs = (
        dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])
        if kind == "conv"
        else dict(auto_pad="SAME_UPPER", strides=[2, 2])
    )
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    return make_model([node], [vi("x", ["N", 3, 11, 12])], [vi("y", None)], [numpy_helper.from_array(w, "w")])


@pytest.mark.parametrize("kind", ["gemm", "matmul", "conv", "conv_same"])
def test_refit_objective_is_the_measured_output_error_and_never_worse(kind):
    rng = np.random.default_rng(1)
    model = _one_layer(kind, rng)
    data = random_data(model, n=50, seed=2)
    plain, _ = share(model, bits_fc=3, bits_conv=3, min_params=0)
    refit, stats = share(model, bits_fc=3, bits_conv=3, min_params=0, refit_data=data)
    info = stats["tensors"][0]["refit"]
    ref = run_model(model, data)[0].astype(np.float64)

    def measured(m):
        return np.linalg.norm(run_model(m, data)[0] - ref) / np.linalg.norm(ref)

    # the quadratic form (C = X^T X, im2col for Conv) is the real output error, as ORT computes it
    assert info["output_rel_error_kmeans"] == pytest.approx(measured(plain), rel=1e-3)
    assert info["applied"] and info["output_rel_error_refit"] < info["output_rel_error_kmeans"]
    assert info["output_rel_error_refit"] == pytest.approx(measured(refit), rel=1e-3)
    check_shared(model, refit, stats)


def shared_matmul_net(seed=3):
    """One 48x48 weight used by two MatMuls."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.laplace(0, 0.2, (48, 48)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "w"], ["y"]),
    ]
    return make_model(nodes, [vi("x", ["N", 48])], [vi("y", ["N", 48])], [w])


def test_refit_of_a_weight_shared_by_two_matmuls_and_fallbacks():
    model = shared_matmul_net()
    data = random_data(model, n=80)
    out, stats = share(model, bits_fc=3, refit_data=data)
    (t,) = stats["tensors"]
    assert t["refit"]["applied"] and t["refit"]["output_rel_error_refit"] < t["refit"]["output_rel_error_kmeans"]
    check_shared(model, out, stats)
    # cost cap: plain k-means kept, with the reason
    from compressor.passes import layers as layers_mod

    old = layers_mod.REFIT_MAX_FLOPS
    layers_mod.REFIT_MAX_FLOPS = 10
    try:
        out2, stats2 = share(model, bits_fc=3, refit_data=data)
    finally:
        layers_mod.REFIT_MAX_FLOPS = old
    assert not stats2["tensors"][0]["refit"]["applied"]
    assert "too expensive" in stats2["tensors"][0]["refit"]["reason"]
    assert out2.SerializeToString() == share(model, bits_fc=3)[0].SerializeToString()


# --------------------------------------------------------------------------- sample models


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_sample_models_lose_at_most_one_point_at_8_5_bits(name):
    model = graph.load_model(SAMPLES / f"{name}.onnx")
    test = load_dataset(SAMPLES / f"{name}_test.npz", model)
    base = evaluate(model, test)["accuracy"]
    out, stats = share(model)
    check_shared(model, out, stats)
    assert {t["name"]: t["bits"] for t in stats["tensors"]} == (
        {"fc1.weight": 5, "fc2.weight": 5}
        if name == "lenet300"
        else {"conv2.weight": 8, "fc1.weight": 5, "fc2.weight": 5}
    )
    assert evaluate(out, test)["accuracy"] >= base - 1.0


def test_lenet300_refit_lowers_layer_error_and_keeps_accuracy():
    model = graph.load_model(SAMPLES / "lenet300.onnx")
    test = load_dataset(SAMPLES / "lenet300_test.npz", model)
    calib = load_dataset(SAMPLES / "lenet300_calib.npz", model)
    base = evaluate(model, test)["accuracy"]
    out, stats = share(model, bits_fc=3, refit_data=calib)
    for t in stats["tensors"]:
        assert t["refit"]["applied"]
        assert t["refit"]["output_rel_error_refit"] < t["refit"]["output_rel_error_kmeans"]
    plain, _ = share(model, bits_fc=3)
    # at 3 bits plain k-means loses ~1 point on this model; the refit recovers most of it
    assert evaluate(out, test)["accuracy"] >= evaluate(plain, test)["accuracy"]
    assert evaluate(out, test)["accuracy"] >= base - 1.0


# --------------------------------------------------------------------------- CLI


def test_cli_json_table_and_determinism(tmp_path, capsys):
    src = SAMPLES / "lenet300.onnx"
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    args = [
        "--bits",
        "fc2.weight=4",
        "--init",
        "random",
        "--seed",
        "7",
        "--refit",
        "--data",
        str(SAMPLES / "lenet300_calib.npz"),
    ]
    assert main(["share", str(src), "-o", str(a), "--json", *args]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {t["name"]: t["bits"] for t in stats["tensors"]} == {"fc1.weight": 5, "fc2.weight": 4}
    assert stats["skipped"][0]["name"] == "fc3.weight"
    assert main(["share", str(src), "-o", str(b), *args]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "codebook" in out and "skipped fc3.weight" in out
    assert a.read_bytes() == b.read_bytes()
    assert graph.load_model(a) is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bits-fc", "0"], "bits must be in 1..16"),
        (["--bits-conv", "17"], "bits must be in 1..16"),
        (["--bits", "nope=4"], "no weight tensor named 'nope'"),
        (["--bits", "fc1.weight"], "NAME=BITS"),
        (["--refit"], "--refit and --bias-correction need --data"),
        (["--bias-correction"], "--refit and --bias-correction need --data"),
    ],
)
def test_cli_usage_errors(tmp_path, capsys, args, message):
    assert main(["share", str(SAMPLES / "lenet300.onnx"), "-o", str(tmp_path / "o.onnx"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o.onnx").exists()


def test_cli_nothing_to_share_warns_and_writes_the_model_unchanged(tmp_path, capsys):
    model = mlp(dims=(8, 16, 4))
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    assert main(["share", str(src), "-o", str(dst)]) == 0
    assert "warning: nothing to share" in capsys.readouterr().err
    assert onnx.load(dst).SerializeToString() == onnx.load(src).SerializeToString()


# --------------------------------------------------------------------------- graph zoo
# Small builders for the graph shapes share must handle (tests/graphs.py covers more, below).


def transformer_block(d=64, heads=4, seq=6, seed=0):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, (d, d)), n) for n in ("wq", "wk", "wv", "wo")]
    inits += [
        numpy_helper.from_array(_w(rng, (d, 4 * d)), "w_ff1"),
        numpy_helper.from_array(_w(rng, (4 * d, d)), "w_ff2"),
        numpy_helper.from_array(np.ones(d, np.float32), "ln_g"),
        numpy_helper.from_array(np.zeros(d, np.float32), "ln_b"),
        numpy_helper.from_array(np.array([0, 0, heads, d // heads], np.int64), "split_shape"),
        numpy_helper.from_array(np.array([0, 0, d], np.int64), "merge_shape"),
        numpy_helper.from_array(np.array(1 / np.sqrt(d // heads), np.float32), "scale"),
    ]
    n = helper.make_node
    nodes = [n("MatMul", ["x", w], [o]) for w, o in (("wq", "q0"), ("wk", "k0"), ("wv", "v0"))]
    for t in ("q", "k", "v"):
        nodes += [
            n("Reshape", [f"{t}0", "split_shape"], [f"{t}1"]),
            n("Transpose", [f"{t}1"], [f"{t}2"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        n("Transpose", ["k2"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q2", "kt"], ["s0"]),
        n("Mul", ["s0", "scale"], ["s1"]),
        n("Softmax", ["s1"], ["p"], axis=-1),
        n("MatMul", ["p", "v2"], ["a0"]),
        n("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["a1", "merge_shape"], ["a2"]),
        n("MatMul", ["a2", "wo"], ["a3"]),
        n("Add", ["x", "a3"], ["r0"]),
        n("LayerNormalization", ["r0", "ln_g", "ln_b"], ["h0"], axis=-1),
        n("MatMul", ["h0", "w_ff1"], ["f0"]),
        n("Relu", ["f0"], ["f1"]),
        n("MatMul", ["f1", "w_ff2"], ["f2"]),
        n("Add", ["h0", "f2"], ["y"]),
    ]
    return make_model(nodes, [vi("x", ["N", seq, d])], [vi("y", ["N", seq, d])], inits)


def depthwise_bn_net(c=32, seed=0):
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, (c, 3, 3, 3)), "stem"),
        numpy_helper.from_array(_w(rng, (c, 1, 3, 3)), "dw"),
        numpy_helper.from_array(_w(rng, (c, c, 1, 1)), "pw"),
        numpy_helper.from_array(_w(rng, (10, c)), "fc"),
    ]
    for name, val in (
        ("bn_s", 1 + rng.normal(0, 0.1, c)),
        ("bn_b", rng.normal(0, 0.1, c)),
        ("bn_m", rng.normal(0, 0.1, c)),
        ("bn_v", 1 + rng.random(c)),
    ):
        inits.append(numpy_helper.from_array(val.astype(np.float32), name))
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "stem"], ["s"], pads=[1, 1, 1, 1]),
        n("Conv", ["s", "dw"], ["d"], group=c, pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["d", "bn_s", "bn_b", "bn_m", "bn_v"], ["b"]),
        n("Relu", ["b"], ["r"]),
        n("Conv", ["r", "pw"], ["p"]),
        n("Add", ["s", "p"], ["res"]),
        n("GlobalAveragePool", ["res"], ["g"]),
        n("Flatten", ["g"], ["f"]),
        n("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    return make_model(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 10])], inits)


def gru_net(d_in=24, hidden=48, seq=5, seed=0):
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, (1, 3 * hidden, d_in)), "W"),
        numpy_helper.from_array(_w(rng, (1, 3 * hidden, hidden)), "R"),
        numpy_helper.from_array(_w(rng, (1, 6 * hidden)), "B"),
    ]
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden)
    return make_model(
        [node], [vi("x", [seq, "N", d_in])], [vi("Y", [seq, 1, "N", hidden]), vi("Y_h", [1, "N", hidden])], inits
    )


ZOO = {
    "transformer": transformer_block,
    "depthwise_bn": depthwise_bn_net,
    "gru": gru_net,
    "constant_if": constant_and_if_net,
    "shared": shared_matmul_net,
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_graphs_follow_the_contract_and_run(name):
    model = ZOO[name]()
    out, stats = share(model, bits_fc=4, bits_conv=6, min_params=256)
    assert stats["shared_tensors"] >= (1 if name == "shared" else 2)
    check_shared(model, out, stats)
    data = random_data(model, n=8)
    ref, got = run_model(model, data), run_model(out, data)
    for r, g in zip(ref, got):
        assert g.shape == r.shape and np.isfinite(g).all()
    names = {t["name"]: t["role"] for t in stats["tensors"]}
    expected = {
        "transformer": {"wq": "matmul_const", "w_ff1": "matmul_const"},
        "depthwise_bn": {"dw": "conv_filter", "pw": "conv_filter", "fc": "gemm_b"},
        "gru": {"W": "rnn_w", "R": "rnn_r"},
        "constant_if": {"cw": "conv_filter", "outer_w": "matmul_const", "then_w": "matmul_const"},
        "shared": {"w": "matmul_const"},
    }[name]
    assert expected.items() <= names.items()
    if name == "constant_if":  # the subgraph weight is reported with its graph
        assert [t.get("graph") for t in stats["tensors"] if t["name"] == "then_w"] == ["If_8/then_branch"]


def test_zoo_refit_applies_where_it_can_and_says_why_not():
    reasons = {}
    for name in sorted(ZOO):
        model = ZOO[name]()
        data = random_data(model, n=16, seed=1)
        out, stats = share(model, bits_fc=3, bits_conv=4, min_params=256, refit_data=data)
        check_shared(model, out, stats)
        run_model(out, data)
        for t in stats["tensors"]:
            r = t["refit"]
            if "output_rel_error_kmeans" in r:
                assert r["output_rel_error_refit"] <= r["output_rel_error_kmeans"] or not r["applied"]
            reasons[t["name"]] = r.get("reason") if not r["applied"] else "applied"
    assert (
        reasons["wq"]
        == reasons["w_ff2"]
        == reasons["stem"]
        == reasons["pw"]
        == reasons["fc"]
        == reasons["cw"]
        == "applied"
    )
    assert reasons["w"] == "applied"  # one weight, two MatMuls: both layers' errors in one system
    assert "grouped" in reasons["dw"]
    assert "GRU" in reasons["W"] and "GRU" in reasons["R"]
    assert "subgraph" in reasons["outer_w"] and "subgraph" in reasons["then_w"]


# tests/graphs.py (shared test-graph builders, written in parallel): every builder it offers.
GRAPH_BUILDERS = [
    "mlp",
    "mlp_matmul_shared",
    "mlp_with_preprocessing",
    "conv_net",
    "depthwise_resnet",
    "transformer_encoder",
    "gru_model",
    "lstm_model",
    "constant_weights_conv",
    "if_subgraph_model",
    "quantized_qdq_model",
]


@pytest.mark.parametrize("builder", GRAPH_BUILDERS)
def test_shared_test_graphs_follow_the_contract_and_run(builder):
    graphs = pytest.importorskip("graphs")
    if not hasattr(graphs, builder):
        pytest.skip(f"tests/graphs.py has no {builder}")
    model = getattr(graphs, builder)()
    out, stats = share(model, bits_fc=4, bits_conv=6, min_params=0)
    check_shared(model, out, stats)
    feed = graphs.make_inputs(model, 4, 0)
    data = feed if isinstance(feed, Dataset) else Dataset(dict(feed), None)
    for r, g in zip(run_model(model, data), run_model(out, data)):
        assert g.shape == r.shape and g.dtype == r.dtype
