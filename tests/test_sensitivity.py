"""sensitivity: per-tensor pruning curves measured with ONNX Runtime (pass, strategies, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import graph
from compressor.cli import main
from compressor.data import Dataset, load_dataset
from compressor.errors import UsageError
from compressor.evaluate import accuracy, make_session, run_model
from compressor.measure import Judge, VariantRunner
from compressor.passes.prune import layer_magnitude_mask, prunable_weights, prune_with_ratios
from compressor.search.prune_budget import _PrunedVariants
from compressor.search.sensitivity import DEFAULT_RATIOS, parse_ratios, sensitivity
from compressor.variants import weights_as_inputs

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def sample(name, split="test"):
    model = graph.load_model(SAMPLES / f"{name}.onnx")
    return model, load_dataset(SAMPLES / f"{name}_{split}.npz", model)


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def constant_and_if_net(seed=0):
    """A conv filter held by a Constant node; an If whose branches use an outer weight / their own."""
    rng = np.random.default_rng(seed)
    n = helper.make_node

    def w(shape):
        return rng.laplace(0, 0.1, shape).astype(np.float32)

    const = n("Constant", [], ["cw"], value=numpy_helper.from_array(w((16, 8, 3, 3)), "cw"))

    def branch(name, weight, inits):
        return helper.make_graph(
            [n("MatMul", ["h", weight], [f"{name}_y"])], name, [], [vi(f"{name}_y", ["N", 64])], inits
        )

    then_g = branch("then", "then_w", [numpy_helper.from_array(w((64, 64)), "then_w")])
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
        numpy_helper.from_array(w((16, 64)), "proj"),
        numpy_helper.from_array(w((64, 64)), "outer_w"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
    ]
    g = helper.make_graph(nodes, "g", [vi("x", ["N", 8, 6, 6])], [vi("y", ["N", 64])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def random_data(model, n=32, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    inputs = {}
    for v in graph.graph_inputs(model):
        shape = [n if not d.dim_value else d.dim_value for d in v.type.tensor_type.shape.dim]
        inputs[v.name] = rng.normal(size=shape).astype(np.float32)
    return Dataset(inputs, None)


# --------------------------------------------------------------------------- ratios


def test_parse_ratios():
    assert parse_ratios(None) == DEFAULT_RATIOS
    assert parse_ratios("0.9, 0.5,0.5,") == (0.5, 0.9)
    assert parse_ratios([0.7, 0.3]) == (0.3, 0.7)
    for bad in ("0", "1", "1.5", "a", "", "0.5,-0.1"):
        with pytest.raises(UsageError):
            parse_ratios(bad)


# --------------------------------------------------------------------------- curves


def test_lenet300_curves_match_real_pruned_models():
    model, data = sample("lenet300")
    stats = sensitivity(model, data, ratios="0.5,0.9")
    assert stats["metric"] == "accuracy" and stats["samples"] == 1000
    assert stats["baseline"]["accuracy"] == pytest.approx(97.4)
    assert [t["name"] for t in stats["tensors"]] == ["fc1.weight", "fc2.weight"]
    assert stats["skipped"][0]["name"] == "fc3.weight"
    assert stats["sessions"] == 2 and stats["runs"] == 4  # one session per tensor, one run per ratio
    base = stats["baseline"]["accuracy"]
    for t in stats["tensors"]:
        assert [p["ratio"] for p in t["curve"]] == [0.5, 0.9]
        for p in t["curve"]:
            real, _ = prune_with_ratios(model, {t["name"]: p["ratio"]})
            acc = accuracy(run_model(real, data)[0], data.labels)
            assert p["accuracy"] == pytest.approx(acc)
            assert p["drop"] == pytest.approx(base - acc)
            assert 0 < p["rel_noise"] < 1 and p["snr_db"] > 0
    # Pruning harder hurts more (at these two ratios, clearly).
    assert all(t["curve"][1]["drop"] > t["curve"][0]["drop"] for t in stats["tensors"])
    json.dumps(stats)


@pytest.mark.parametrize("strategy", ["per-tensor", "one-session", "rebuild"])
def test_strategies_agree_on_constant_and_subgraph_weights(strategy):
    model = constant_and_if_net()
    data = random_data(model)
    stats = sensitivity(model, data, ratios=[0.5, 0.95], min_params=256, strategy=strategy)
    assert stats["metric"] == "fidelity"
    names = [t["name"] for t in stats["tensors"]]
    assert names == ["proj", "outer_w", "cw", "then_w"]  # graph.weights order: initializers, Constants, subgraphs
    reference = sensitivity(model, data, ratios=[0.5, 0.95], min_params=256, strategy="rebuild")
    for t, r in zip(stats["tensors"], reference["tensors"]):
        for p, q in zip(t["curve"], r["curve"]):
            assert p["top1_agreement"] == pytest.approx(q["top1_agreement"])
            assert p["rel_noise"] == pytest.approx(q["rel_noise"], rel=1e-4, abs=1e-9)
    assert stats["baseline"]["top1_agreement"] == 100.0


def test_weights_as_inputs_reproduces_the_model():
    model = constant_and_if_net()
    data = random_data(model, n=8)
    selected, _ = prunable_weights(model, min_params=256)
    fed = weights_as_inputs(model, selected)
    assert not any(n.op_type == "Constant" and n.output[0] == "cw" for n in fed.graph.node)
    assert {"cw", "proj", "outer_w", "then_w"} <= {i.name for i in fed.graph.input}
    session = make_session(fed)
    feed = {**data.inputs, **{w.name: w.array() for w in selected}}
    for r, g in zip(run_model(model, data), session.run(None, feed)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_variant_runner_matches_real_models():
    model, data = sample("lenet300", "calib")
    judge = Judge.of_model(model, data)
    selected, _ = prunable_weights(model)
    runner = _PrunedVariants(VariantRunner(model, judge, selected))
    ratios = {"fc1.weight": 0.8, "fc2.weight": 0.4}
    fast = runner.measure(ratios)
    real, _ = prune_with_ratios(model, ratios)
    slow = judge.measure_model(real)
    assert fast["top1_agreement"] == pytest.approx(slow["top1_agreement"])
    assert fast["rel_noise"] == pytest.approx(slow["rel_noise"], rel=1e-4)
    values = selected[0].array()
    assert np.array_equal(runner.pruned("fc1.weight", 0.8) == 0, layer_magnitude_mask(values, 0.8) | (values == 0))


def test_unlabelled_data_gives_fidelity_curves():
    model, data = sample("lenet5", "calib")
    stats = sensitivity(model, data, ratios=[0.9])
    assert stats["metric"] == "fidelity"
    for t in stats["tensors"]:
        (p,) = t["curve"]
        assert p["accuracy"] is None and 0 <= p["top1_agreement"] <= 100
        assert p["drop"] == pytest.approx(100 - p["top1_agreement"])


# --------------------------------------------------------------------------- CLI


def test_cli_sensitivity_table_json_and_file(tmp_path, capsys):
    model, data_path = SAMPLES / "lenet300.onnx", SAMPLES / "lenet300_test.npz"
    assert main(["sensitivity", str(model), "--data", str(data_path), "--ratios", "0.5,0.9"]) == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "0.9" in text and "original 97.40%" in text
    out = tmp_path / "curves.json"
    assert main(["sensitivity", str(model), "--data", str(data_path), "--ratios", "0.5", "--json", "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert printed["ratios"] == [0.5] and len(printed["tensors"]) == 2


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--ratios", "0.5,1.2"], 2, "ratio"),
        (["--ratios", "x"], 2, "not a number"),
        (["--data", "lenet5_test.npz"], 1, "model expects"),
        (["--data", "missing.npz"], 2, "no such data file"),
    ],
)
def test_cli_sensitivity_errors(capsys, args, code, message):
    args = [a if not a.endswith(".npz") else str(SAMPLES / a) for a in args]
    if "--data" not in args:
        args += ["--data", str(SAMPLES / "lenet300_test.npz")]
    assert main(["sensitivity", str(SAMPLES / "lenet300.onnx"), *args]) == code
    assert message in capsys.readouterr().err
