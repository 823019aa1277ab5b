"""share_budget: k-means widths chosen per tensor under a measured budget."""

from __future__ import annotations

import graphs
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import graph
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.evaluate import accuracy, run_model
from compressor.passes.share import share
from compressor.search.layer_error import capture_layers
from compressor.search.share_budget import (
    BITS,
    MAX_SEARCH_RUNS,
    allocated_bits,
    bit_curves,
    knapsack_curves,
    refine,
    share_to_budget,
)
from compressor.stages.share import search_summary


def labeled(model, n=256, seed=0) -> Dataset:
    inputs = graphs.make_inputs(model, n, seed)
    labels = np.argmax(run_model(model, inputs)[0], axis=1)  # the float model scores 100 %
    return Dataset(dict(inputs.inputs), labels)


@pytest.fixture(scope="module")
def searched():
    model = graphs.mlp()
    data = labeled(model)
    shared, stats = share_to_budget(model, data, 2.0, min_params=0)
    return model, data, shared, stats


def test_widths_differ_per_tensor_and_the_result_is_within_budget(searched):
    model, data, shared, stats = searched
    chosen = stats["budget_search"]["chosen"]
    assert set(chosen) == {"fc1.weight", "fc2.weight", "fc3.weight"} and set(chosen.values()) <= set(BITS)
    assert 100.0 - accuracy(run_model(shared, data)[0], data.labels) <= 2.0
    # Not one width for all (the small output layer is the sensitive one here), and each
    # tensor really holds at most 2^bits values (plus zero).
    assert len(set(chosen.values())) > 1 and min(chosen.values()) < 8
    for w in graph.weights(shared):
        if w.name in chosen:
            assert np.unique(w.array()[w.array() != 0]).size <= 2 ** chosen[w.name]


def test_the_model_built_is_the_one_measured_and_is_deterministic(searched):
    model, data, shared, stats = searched
    best = max((t for t in stats["budget_search"]["tried"] if t["within_budget"]), key=lambda t: t["saved_bits"])
    assert best["bits"] == stats["budget_search"]["chosen"]
    assert 100.0 - accuracy(run_model(shared, data)[0], data.labels) == pytest.approx(best["drop"])
    again, _ = share_to_budget(model, data, 2.0, min_params=0)
    assert again.SerializeToString() == shared.SerializeToString()
    same, _ = share(model, bits_by_name=best["bits"], min_params=0)
    assert same.SerializeToString() == shared.SerializeToString()


def test_the_search_reports_its_curves_methods_and_runs(searched):
    _, _, _, stats = searched
    search = stats["budget_search"]
    for curve in search["curves"]:
        assert curve["bits"] == list(BITS) and len(curve["errors"]) == len(BITS)
        assert curve["method"] == "covariance" and curve["errors"][0] <= curve["errors"][-1]
    assert search["methods"] == {c["name"]: "covariance" for c in search["curves"]}
    assert search["capture_runs"] == 1 and search["kmeans_runs"] == 3 * len(BITS)
    assert 1 <= search["whole_model_runs"] == search["evaluations"] <= MAX_SEARCH_RUNS


def _one_layer(trans_b: int, seed: int = 3) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.laplace(scale=0.2, size=(6, 12) if trans_b else (12, 6)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=trans_b)
    g = helper.make_graph(
        [node],
        "one_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_curves_are_the_layers_relative_output_error_of_each_clustering(trans_b):
    # Brute force: the layer's output with each width's clustered tensor (share itself, run by
    # ONNX Runtime) against the original output, ||ΔY||² / ||Y||² over the calibration inputs.
    model = _one_layer(trans_b)
    calib = graphs.make_inputs(model, 40, seed=1)
    weight = graph.weights(model)[0]
    originals = {weight.name: weight.array()}
    layers, reasons, runs = capture_layers(model, [weight], calib, len(BITS))
    curves, arrays = bit_curves(originals, layers, reasons)
    y = run_model(model, calib)[0].astype(np.float64)
    for bits, error in zip(BITS, curves[0]["errors"]):
        shared, _ = share(model, bits_by_name={"w": bits}, min_params=0)
        assert np.array_equal(graph.weights(shared)[0].array(), arrays[("w", bits)])  # share reproduces it
        dy = run_model(shared, calib)[0].astype(np.float64) - y
        assert error == pytest.approx(np.sum(dy**2) / np.sum(y**2), rel=1e-4, abs=1e-9)
    assert runs == 1 and curves[0]["method"] == "covariance"
    # Without a layer: the weight-space proxy.
    proxy, _ = bit_curves(originals, {}, {"w": "other op"})
    w = originals["w"].astype(np.float64)
    expected = [np.sum((arrays[("w", b)] - w) ** 2) / np.sum(w**2) for b in BITS]
    assert proxy[0]["method"] == "weight" and proxy[0]["reason"] == "other op"
    assert proxy[0]["errors"] == pytest.approx(expected, rel=1e-9)


def _deep_mlp(layers: int, width: int = 24, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, h = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}" if i < layers - 1 else out]))
        if i < layers - 1:
            nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        h = out
    g = helper.make_graph(
        nodes,
        "deep_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_whole_model_runs_stay_bounded_as_the_tensors_grow():
    runs = {}
    for n in (2, 16):
        model = _deep_mlp(n)
        data = labeled(model, 64)
        _, stats = share_to_budget(model, data, 3.0, min_params=0)
        search = stats["budget_search"]
        assert search["kmeans_runs"] == n * len(BITS) and search["capture_runs"] == 1
        runs[n] = search["whole_model_runs"]
    assert all(1 <= r <= MAX_SEARCH_RUNS for r in runs.values())  # not tensors x widths


def test_no_fitting_widths_is_an_error_and_no_tensors_is_an_error():
    model = graphs.mlp()
    data = labeled(model, 64)
    with pytest.raises(CompressorError):
        share_to_budget(model, data, -1.0, min_params=0)  # nothing can have a negative drop
    with pytest.raises(CompressorError, match="no tensor"):
        share_to_budget(model, data, 1.0, min_params=10**9)


def test_refine_steps_other_tensors_past_a_step_that_does_not_fit():
    # Layer errors favour stepping "a" (more bits saved per error), but the whole model only
    # takes a step of "b": refine measures "a", blocks it, then takes "b" (twice), within its runs.
    knapsack = knapsack_curves(
        [
            {"name": "a", "params": 100, "bits": list(BITS), "errors": [0, 0.001, 0.002, 0.004, 0.01, 0.05]},
            {"name": "b", "params": 10, "bits": list(BITS), "errors": [0, 0.001, 0.002, 0.004, 0.01, 0.05]},
        ]
    )
    tried = [{"bits": {"a": 4, "b": 4}, "saved_bits": 440, "within_budget": True}]
    measured = []

    def measure(bits, record):
        if len(measured) == 3:
            return None  # out of runs
        measured.append(dict(bits))
        ok = bits["a"] == 4
        record({"drop": 0.0 if ok else 9.0, "within_budget": ok})
        return ok

    refine(knapsack, tried, measure)
    assert measured == [{"a": 3, "b": 4}, {"a": 4, "b": 3}, {"a": 4, "b": 2}]
    best = max((t for t in tried if t["within_budget"]), key=lambda t: t["saved_bits"])
    assert best["bits"] == {"a": 4, "b": 2} and best["saved_bits"] == 100 * 4 + 10 * 6


def test_a_curve_ends_before_its_first_non_finite_error():
    curves = [
        {"name": "a", "params": 100, "bits": list(BITS), "errors": [0, 0.001, np.inf, np.inf, np.inf, np.inf]},
        {"name": "b", "params": 10, "bits": list(BITS), "errors": [np.inf] * len(BITS)},
    ]
    knapsack = knapsack_curves(curves)
    assert knapsack[0]["bits"] == [8, 6] and knapsack[1]["bits"] == [8] and knapsack[1]["drops"] == []
    assert allocated_bits(knapsack, 1e9) == {"a": 6, "b": 8}


def test_the_stage_summarises_the_search(searched):
    summary = search_summary(searched[3]["budget_search"])
    runs = searched[3]["budget_search"]["whole_model_runs"]
    assert (
        summary
        == f"3 of 3 tensors by layer output error; 1 capture run(s), 18 k-means, {runs} whole-model runs for the candidates"
    )


def test_a_seed_that_fits_is_measured_first_and_the_search_never_does_worse():
    model = graphs.mlp()
    data = labeled(model)
    seed = {"fc1.weight": 6, "fc2.weight": 6, "fc3.weight": 8}
    _, stats = share_to_budget(model, data, 2.0, min_params=0, seeds=[seed], max_evals=4)
    tried = stats["budget_search"]["tried"]
    assert tried[0].get("seed") and tried[0]["bits"] == seed and tried[0]["within_budget"]
    params = {c["name"]: c["params"] for c in stats["budget_search"]["curves"]}
    chosen = stats["budget_search"]["chosen"]
    assert sum(params[n] * (8 - b) for n, b in chosen.items()) >= sum(params[n] * (8 - b) for n, b in seed.items())
    assert len(tried) <= 5  # the seed, then at most max_evals
