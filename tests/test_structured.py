"""Structured pruning: channel groups, removal == masking (the main check), the plan, budget, CLI."""

from __future__ import annotations

import json

import graphs
import numpy as np
import onnx
import pytest
from graphs import (
    _batchnorm,
    _Builder,
    _vi,
    constant_weights_conv,
    conv_net,
    depthwise_resnet,
    make_inputs,
    mlp,
    mlp_matmul_shared,
    mlp_with_preprocessing,
    transformer_encoder,
)
from onnx import numpy_helper

from compressor.cli import main
from compressor.evaluate import make_session, run_model
from compressor.passes.channel_plan import aligned_kept, channel_norms, global_keep, group_cap, group_scores
from compressor.passes.channels import constants
from compressor.passes.structured import (
    Pruner,
    analyze,
    importance,
    mask_channels,
    plan_keep,
    remove_channels,
    selectable,
    structured_prune,
)
from compressor.search.structured_budget import structured_to_budget

# --------------------------------------------------------------------------- graphs


def conv_bn_chain() -> onnx.ModelProto:
    """conv -> BN -> relu -> conv (no bias) -> BN -> relu -> GlobalAveragePool -> Flatten -> Gemm."""
    b = _Builder(seed=11)
    h = b.node("Relu", [_batchnorm(b, b.conv("x", 3, 16, "c1"), 16, "bn1")])
    h = b.node("Relu", [_batchnorm(b, b.conv(h, 16, 24, "c2", bias=False), 24, "bn2")])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])])
    b.linear(h, 24, 10, "fc", gemm=True, out="logits")
    return b.model("conv_bn_chain", [_vi("x", ["N", 3, 8, 8])], [_vi("logits", ["N", 10])])


def grouped_net() -> onnx.ModelProto:
    """conv(3->16) -> relu -> grouped conv (4 groups, 16->16) -> sigmoid-gated (x * sigmoid(x)) ->
    1x1 conv -> ReduceMean over H, W -> MatMul + bias Add head."""
    b = _Builder(seed=12)
    h = b.node("Relu", [b.conv("x", 3, 16, "c1")])
    h = b.conv(h, 16, 16, "g", group=4)
    h = b.node("Mul", [h, b.node("Sigmoid", [h])])
    h = b.node("Relu", [b.conv(h, 16, 12, "pw", k=1)])
    h = b.node("ReduceMean", [h], axes=[2, 3], keepdims=0)
    b.linear(h, 12, 10, "head", out="logits")
    return b.model("grouped_net", [_vi("x", ["N", 3, 8, 8])], [_vi("logits", ["N", 10])])


def concat_net() -> onnx.ModelProto:
    """Two convs concatenated along channels (not understood: left as is), then a conv."""
    b = _Builder(seed=13)
    a = b.node("Relu", [b.conv("x", 3, 8, "a")])
    c = b.node("Relu", [b.conv("x", 3, 8, "b")])
    h = b.node("Concat", [a, c], axis=1)
    h = b.node("Relu", [b.conv(h, 16, 8, "c")])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])])
    b.linear(h, 8, 10, "fc", gemm=True, out="logits")
    return b.model("concat_net", [_vi("x", ["N", 3, 8, 8])], [_vi("logits", ["N", 10])])


BUILDERS = {
    "conv_bn_chain": conv_bn_chain,
    "depthwise_resnet": depthwise_resnet,
    "grouped_net": grouped_net,
    "conv_net_flatten": conv_net,
    "mlp_gemm": mlp,
    "mlp_matmul_bias": mlp_with_preprocessing,
    "transformer": transformer_encoder,
    "constant_weights": constant_weights_conv,
    "paddle_style": lambda: paddle_style_net(),
}


def _random_keep(groups, ratio: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    return plan_keep(groups, [rng.random(g.size) for g in groups], ratio)


def _initializer_sizes(model: onnx.ModelProto) -> int:
    return sum(v.size for v in constants(model).values() if v.dtype.kind == "f")


# --------------------------------------------------------------------------- removal == masking


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_removal_gives_the_outputs_of_the_masked_model(name):
    model = BUILDERS[name]()
    # Shapes of every intermediate value recorded, so that stale value_info would be caught.
    model = onnx.shape_inference.infer_shapes(model)
    analysis = analyze(model)
    groups = selectable(analysis, heads=True)
    assert groups, f"{name}: nothing prunable"
    keep = _random_keep(groups, 0.4)
    assert keep
    pruned = remove_channels(model, analysis, keep)
    masked = mask_channels(model, analysis, keep)
    onnx.checker.check_model(pruned, full_check=True)
    onnx.shape_inference.infer_shapes(pruned, check_type=True, strict_mode=True)
    assert _initializer_sizes(pruned) < _initializer_sizes(model)
    data = make_inputs(model, n=6, seed=1)
    out_pruned = run_model(pruned, data)
    out_masked = run_model(masked, data)
    out_original = run_model(model, data)
    for p, m, o in zip(out_pruned, out_masked, out_original):
        assert p.shape == o.shape
        scale = max(1.0, float(np.abs(m).max()))
        np.testing.assert_allclose(p, m, rtol=0, atol=2e-5 * scale)
    assert not np.allclose(out_masked[0], out_original[0])  # something was removed


def test_conv_bn_chain_shrinks_every_tensor_of_the_group():
    model = conv_bn_chain()
    analysis = analyze(model)
    groups = selectable(analysis)
    assert sorted(g.size for g in groups) == [16, 24]
    g16 = next(g for g in groups if g.size == 16)
    keep = {g16.id: np.arange(0, 16, 2)}
    pruned = remove_channels(model, analysis, keep)
    dims = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert dims["c1.weight"] == (8, 3, 3, 3) and dims["c1.bias"] == (8,)
    assert all(dims[f"bn1.{p}"] == (8,) for p in ("scale", "bias", "mean", "var"))
    assert dims["c2.weight"] == (24, 8, 3, 3)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    np.testing.assert_array_equal(new["c2.weight"], original["c2.weight"][:, ::2])
    np.testing.assert_array_equal(new["bn1.var"], original["bn1.var"][::2])


def test_depthwise_channel_goes_with_its_producer_and_the_residual():
    model = depthwise_resnet(c=12)
    analysis = analyze(model)
    groups = selectable(analysis)
    assert len(groups) == 1  # stem, depthwise, pointwise and the residual Add: one group
    sources = {s.weight for s in groups[0].sources}
    assert sources == {"stem.weight", "dw.weight", "pw.weight"}
    keep = {groups[0].id: np.array([0, 3, 4, 7, 11])}
    pruned = remove_channels(model, analysis, keep)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 5
    dims = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert dims["dw.weight"] == (5, 1, 3, 3) and dims["pw.weight"] == (5, 5, 1, 1) and dims["fc.weight"] == (10, 5)


def test_grouped_conv_loses_the_same_count_per_group_and_keeps_its_inputs():
    model = grouped_net()
    analysis = analyze(model)
    by_source = {s.weight: g for g in analysis.groups for s in g.sources}
    assert not by_source["c1.weight"].prunable  # a grouped conv reads it: left as is
    assert "Conv g" in by_source["c1.weight"].blocked
    grouped = by_source["g.weight"]
    assert grouped.prunable and grouped.blocks == 4
    keep = plan_keep([grouped], [np.arange(16.0)], 0.5)
    kept = keep[grouped.id]
    assert len(kept) == 8 and all(np.sum(kept // 4 == b) == 2 for b in range(4))


def test_flatten_into_gemm_removes_blocks_of_rows():
    model = conv_net()  # conv2 (16 ch) -> MaxPool -> Flatten [N, 16*4*4] -> fc1
    analysis = analyze(model)
    group = next(g for g in analysis.groups if any(s.weight == "conv2.weight" for s in g.sources))
    assert group.prunable and group.expanded[0].unit == 16
    pruned = remove_channels(model, analysis, {group.id: np.array([1, 5])})
    fc1 = next(t for t in pruned.graph.initializer if t.name == "fc1.weight")
    original = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "fc1.weight")
    np.testing.assert_array_equal(
        numpy_helper.to_array(fc1), original[:, np.r_[16:32, 80:96]]
    )  # transB=1: rows are axis 1


def test_shared_weight_ties_both_its_axes_into_one_group():
    model = mlp_matmul_shared()  # one [64, 64] weight used by two MatMuls in a row, on the input
    analysis = analyze(model)
    group = next(g for g in analysis.groups if any(s.weight == "shared.weight" for s in g.sources))
    assert ("shared.weight", 0) in group.slots and ("shared.weight", 1) in group.slots
    assert group.blocked == "graph input/output"  # its rows read the graph input: left as is


def test_transformer_prunes_heads_and_the_ffn_and_leaves_the_residual_alone():
    model = transformer_encoder()  # d 64, 4 heads of 16
    analysis = analyze(model)
    groups = selectable(analysis)
    heads = next(g for g in selectable(analysis, heads=True) if g.linked)
    assert not any(g.linked for g in groups)  # heads only on request
    assert heads.size == 4 and sorted(unit for _, unit in heads.linked) == [16] * 4
    assert {s.weight for g in groups if not g.linked for s in g.sources} == {"ffn.fc1.weight"}
    reasons = {s.weight: g.blocked for g in analysis.groups for s in g.sources if g.blocked}
    assert "split into heads" in reasons["attn.q.weight"]
    assert "LayerNormalization" in reasons["attn.out.weight"]  # the residual stream
    pruned = remove_channels(model, analysis, {heads.id: np.array([0, 3])})
    onnx.checker.check_model(pruned, full_check=True)
    arrays = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    cols = np.r_[0:16, 48:64]
    np.testing.assert_array_equal(arrays["attn.q.weight"], original["attn.q.weight"][:, cols])
    np.testing.assert_array_equal(arrays["attn.v.bias"], original["attn.v.bias"][cols])
    np.testing.assert_array_equal(arrays["attn.out.weight"], original["attn.out.weight"][cols])
    assert arrays["attn.split_shape"].tolist() == [0, 0, 2, 16]
    assert arrays["attn.merge_shape"].tolist() == [0, 0, 32]


def test_concat_makes_its_groups_untouchable_and_they_are_reported():
    model = concat_net()
    pruned, stats = structured_prune(model, 0.5)
    reported = {w: g["blocked"] for g in stats["untouchable"] for w in g["sources"]}
    assert "Concat" in reported["a.weight"] and "Concat" in reported["b.weight"]
    dims = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert dims["a.weight"] == (8, 3, 3, 3) and dims["b.weight"] == (8, 3, 3, 3)
    assert dims["c.weight"][0] < 8  # the conv after the Concat still loses output channels


def test_graph_outputs_and_subgraph_reads_are_never_pruned():
    model = mlp()
    analysis = analyze(model)
    fc3 = next(g for g in analysis.groups if any(s.weight == "fc3.weight" for s in g.sources))
    assert fc3.blocked == "graph input/output"


def test_structured_prune_counts_params_and_macs():
    pruned, stats = structured_prune(mlp(), 0.5, align=1)
    t = stats["totals"]
    assert t["removed_channels"] == round(0.5 * (128 + 64))
    assert t["params_after"] < t["params_before"] and t["macs_after"] < t["macs_before"]
    assert t["params_after"] == _initializer_sizes(pruned)


# --------------------------------------------------------------------------- the plan (pure numpy)


def test_channel_norms_and_scores():
    w = np.array([[[3.0, 4.0]], [[0.0, 1.0]]])  # 2 channels on axis 0
    np.testing.assert_allclose(channel_norms(w, 0, "l2"), [5.0, 1.0])
    np.testing.assert_allclose(channel_norms(w, 0, "l1"), [7.0, 1.0])
    np.testing.assert_allclose(group_scores([np.array([1.0, 3.0]), np.array([2.0, 2.0])]), [0.75, 1.25])


def test_global_keep_ranks_across_groups_within_the_cap():
    scores = [np.array([0.1, 0.2, 5.0, 6.0]), np.array([1.0, 2.0, 3.0, 4.0])]
    keep = global_keep(scores, 0.5, max_ratio=0.75)
    assert [k.tolist() for k in keep] == [[2, 3], [2, 3]]
    keep = global_keep(scores, 0.75, max_ratio=0.5)  # the cap stops at 2 per group
    assert [len(k) for k in keep] == [2, 2]
    assert group_cap(8, 4, 0.9) == 4  # one channel per block stays
    keep = global_keep([np.arange(8.0)[::-1]], 0.5, max_ratio=0.9, blocks=[2])
    assert keep[0].tolist() == [0, 1, 4, 5]  # the two lowest of each block of 4


def test_aligned_counts():
    assert aligned_kept(50, 39, align=8) == 40
    assert aligned_kept(50, 35, align=8) == 32
    assert aligned_kept(50, 3, align=8) == 8  # one step at least
    assert aligned_kept(12, 7, align=8) == 7  # small groups are not aligned
    assert aligned_kept(48, 30, blocks=3, align=8) == 24  # multiples of lcm(8, 3)
    keep = global_keep([np.arange(50.0), np.arange(20.0)], 0.1, max_ratio=0.9, align=8)
    assert [len(k) for k in keep] == [48, 16]


# --------------------------------------------------------------------------- budget and CLI


def test_budget_search_stays_within_budget_and_few_runs():
    model = mlp()
    data = make_inputs(model, n=32, seed=2)
    pruned, stats = structured_to_budget(model, data, budget=25.0, max_evals=5)
    budget = stats["budget"]
    assert budget["evaluations"] == len(budget["trials"]) <= 5
    assert budget["final"]["drop"] <= 25.0
    assert stats["totals"]["removed_channels"] > 0
    make_session(pruned)


def test_cli_structured(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(conv_bn_chain(), src)
    assert main(["prune", str(src), "-o", str(out), "--structured", "--sparsity", "0.25", "--align", "1"]) == 0
    assert "removed 10 of 40 channels" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert main(["prune", str(src), "-o", str(out), "--structured", "--sparsity", "0.25", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert all(g["kept"] % 8 == 0 for g in stats["groups"])  # aligned by default
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_importance_uses_the_batchnorm_scale():
    model = conv_bn_chain()
    analysis = analyze(model)
    g16 = next(g for g in selectable(analysis) if g.size == 16)
    weights = {t.name: t for t in model.graph.initializer}
    scale = numpy_helper.to_array(weights["bn1.scale"]).copy()
    scale[3] = 0.0  # a BatchNorm that silences channel 3: the least important
    weights["bn1.scale"].CopyFrom(numpy_helper.from_array(scale, "bn1.scale"))
    analysis = analyze(model)
    score = importance(model, analysis, [g16])[0]
    assert int(np.argmin(score)) == 3


# --------------------------------------------------------------------------- compensation


@pytest.mark.parametrize(
    "name", ["conv_bn_chain", "depthwise_resnet", "conv_net_flatten", "mlp_matmul_bias", "transformer"]
)
def test_compensated_removal_equals_its_masked_twin_and_is_closer(name):
    model = BUILDERS[name]()
    calib = make_inputs(model, n=512, seed=3)
    data = make_inputs(model, n=16, seed=4)
    reference = run_model(model, data)[0]
    errors = {}
    for label, kwargs in {"plain": {"calib": None}, "fold": {"refit": False}, "refit": {}}.items():
        pruner = Pruner(model, **{"calib": calib, **kwargs}, align=1, heads=True)
        keep = pruner.keep(0.3)
        assert keep
        pruned = pruner.build(keep)
        onnx.checker.check_model(pruned, full_check=True)
        out = run_model(pruned, data)[0]
        masked = run_model(mask_channels(pruner.prepared(keep), pruner.analysis, keep), data)[0]
        np.testing.assert_allclose(out, masked, rtol=0, atol=2e-5 * max(1.0, float(np.abs(masked).max())))
        errors[label] = float(np.mean((out - reference) ** 2))
    assert errors["refit"] <= errors["fold"] * 1.05
    assert errors["refit"] < errors["plain"]


def test_refit_restores_a_layer_whose_removed_input_is_a_copy_of_a_kept_one():
    # fc1's neurons 0 and 1 are identical: removing 1 and refitting fc2 gives the exact output.
    b = _Builder(seed=21)
    w1 = b.rng.normal(0, 0.3, (8, 4)).astype(np.float32)
    w1[:, 1] = w1[:, 0]
    b.const("fc1.weight", w1)
    h = b.node("Relu", [b.node("MatMul", ["x", "fc1.weight"], name="fc1")])
    b.linear(h, 4, 6, "fc2", out="y")
    model = b.model("dup", [_vi("x", ["N", 8])], [_vi("y", ["N", 6])])
    calib = make_inputs(model, n=256, seed=5)
    pruner = Pruner(model, calib, align=1)
    group = pruner.groups[0]
    keep = {group.id: np.array([0, 2, 3])}
    pruned = pruner.build(keep)
    data = make_inputs(model, n=32, seed=6)
    np.testing.assert_allclose(run_model(pruned, data)[0], run_model(model, data)[0], atol=0.05)


def test_old_style_initializer_inputs_and_unnamed_nodes():
    # Opset-9 style: every initializer also listed as a graph input; nodes without names.
    model = depthwise_resnet(c=16)
    for node in model.graph.node:
        node.name = ""
    for t in model.graph.initializer:
        model.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    analysis = analyze(model)
    groups = selectable(analysis)
    assert len(groups) == 1
    keep = {groups[0].id: np.arange(8)}
    pruned = remove_channels(model, analysis, keep)
    onnx.checker.check_model(pruned, full_check=True)
    groups_attr = [a.i for n in pruned.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sorted(groups_attr) == [1, 1, 8]
    data = make_inputs(model, n=4, seed=1)
    masked = mask_channels(model, analysis, keep)
    np.testing.assert_allclose(run_model(pruned, data)[0], run_model(masked, data)[0], atol=1e-4)


def paddle_style_net() -> onnx.ModelProto:
    """Biases kept apart and reshaped [C] -> [1, C, 1, 1] before an Add (as Paddle exports
    them), and a squeeze-excite gate: GlobalAveragePool -> Reshape [0, C] -> Gemm -> ... ->
    Reshape [0, C, 1, 1] -> Mul."""
    b = _Builder(seed=14)
    w = b.weight("c1.weight", (16, 3, 3, 3), 27)
    h = b.node("Conv", ["x", w], name="c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    bias = b.node("Reshape", [b.bias("c1.offset", 16), b.const("c1.shape", np.array([1, 16, 1, 1], np.int64))])
    h = b.node("Relu", [b.node("Add", [h, bias])])
    s = b.node("Reshape", [b.node("GlobalAveragePool", [h]), b.const("se.in_shape", np.array([0, 16], np.int64))])
    s = b.node("Relu", [b.linear(s, 16, 8, "se1", gemm=True)])
    s = b.node("Sigmoid", [b.linear(s, 8, 16, "se2", gemm=True)])
    s = b.node("Reshape", [s, b.const("se.out_shape", np.array([0, 16, 1, 1], np.int64))])
    h = b.node("Mul", [h, s])
    h = b.node("Relu", [b.conv(h, 16, 16, "c2")])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])])
    b.linear(h, 16, 10, "fc", gemm=True, out="logits")
    return b.model("paddle_style", [_vi("x", ["N", 3, 8, 8])], [_vi("logits", ["N", 10])])


def test_reshapes_that_only_move_size_one_axes_follow_the_channels():
    model = onnx.shape_inference.infer_shapes(paddle_style_net())
    analysis = analyze(model)
    by_source = {s.weight: g for g in analysis.groups for s in g.sources}
    c1 = by_source["c1.weight"]
    assert c1.prunable and by_source["se2.weight"] is c1  # the gate's channels are c1's
    assert by_source["se1.weight"].prunable
    keep = {c1.id: np.arange(0, 16, 2), by_source["se1.weight"].id: np.array([1, 2, 5])}
    pruned = remove_channels(model, analysis, keep)
    onnx.checker.check_model(pruned, full_check=True)
    shapes = {t.name: numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer if "shape" in t.name}
    assert shapes["c1.shape"] == [1, 8, 1, 1] and shapes["se.in_shape"] == [0, 8]
    assert shapes["se.out_shape"] == [0, 8, 1, 1]
    data = make_inputs(model, n=4, seed=1)
    masked = mask_channels(model, analysis, keep)
    np.testing.assert_allclose(run_model(pruned, data)[0], run_model(masked, data)[0], atol=1e-5)


def test_budget_search_says_when_the_cap_binds():
    model = conv_bn_chain()
    data = make_inputs(model, n=16, seed=2)
    _pruned, stats = structured_to_budget(model, data, budget=100.0, max_ratio=0.5, max_evals=3)
    assert stats["budget"]["evaluations"] == 1  # the cap first, and it fits
    assert any("--max-ratio" in w for w in stats["warnings"])


GRAPH_ZOO = {
    "gru": graphs.gru_model,
    "lstm": graphs.lstm_model,
    "streaming_vad": graphs.streaming_vad_model,
    "if_subgraph": graphs.if_subgraph_model,
    "constant_and_if": graphs.constant_and_if_net,
    "qdq": graphs.quantized_qdq_model,
    "integer_input": graphs.integer_input_model,
    "fp16": graphs.fp16_model,
    **{f"opset{v}": (lambda v=v: graphs.opset_model(v)) for v in graphs.OPSETS},
}


@pytest.mark.parametrize("name", sorted(GRAPH_ZOO))
def test_every_test_graph_comes_out_valid_and_equal_to_its_masked_twin(name):
    model = GRAPH_ZOO[name]()
    analysis = analyze(model)
    groups = selectable(analysis, heads=True)
    keep = _random_keep(groups, 0.5) if groups else {}
    pruned = remove_channels(model, analysis, keep)
    onnx.checker.check_model(pruned, full_check=True)
    data = make_inputs(model, n=4, seed=1)
    out_pruned = run_model(pruned, data)
    out_masked = run_model(mask_channels(model, analysis, keep), data)
    for p, m in zip(out_pruned, out_masked):
        assert p.shape == m.shape
        if p.dtype.kind == "f":
            scale = max(1.0, float(np.abs(m.astype(np.float64)).max()))
            np.testing.assert_allclose(p.astype(np.float64), m.astype(np.float64), rtol=0, atol=2e-3 * scale)
        else:
            np.testing.assert_array_equal(p, m)
