"""Layer-local pruning errors (search/layer_error.py) and the search built on them (prune_budget)."""

from __future__ import annotations

import graphs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from compressor import evaluate, graph
from compressor.data import Dataset
from compressor.measure import Judge
from compressor.passes.compensate import Compensator, refit_kept
from compressor.passes.magnitude import layer_pruned
from compressor.passes.selection import prunable_weights
from compressor.search import layer_error, prune_budget
from compressor.search.layer_error import layer_errors, output_errors, weight_errors
from compressor.search.prune_budget import prune_to_budget


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), d_in=st.integers(1, 12), d_out=st.integers(1, 9), k=st.integers(1, 5))
def test_output_errors_are_the_relative_output_energy_of_the_change(seed, d_in, d_out, k):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3 * d_in + 1, d_in))
    w = rng.standard_normal((d_in, d_out))
    deltas = rng.standard_normal((k, d_in, d_out)) * (rng.random((k, d_in, d_out)) < 0.5)
    brute = [np.sum((x @ d) ** 2) / np.sum((x @ w) ** 2) for d in deltas]
    np.testing.assert_allclose(output_errors(w, deltas, x.T @ x), brute, rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300))
def test_weight_errors_match_magnitude_pruning(seed, n):
    rng = np.random.default_rng(seed)
    values = rng.laplace(size=n).astype(np.float32)
    values[rng.random(n) < 0.1] = 0.0  # existing zeros count towards the ratio
    ratios = [0.1, 0.5, 0.9]
    brute = [np.sum((values - layer_pruned(values, r)).astype(np.float64) ** 2) for r in ratios]
    total = np.sum(values.astype(np.float64) ** 2)
    expected = np.array(brute) / total if total > 0 else np.zeros(3)
    np.testing.assert_allclose(weight_errors(values, ratios), expected, rtol=1e-6, atol=1e-12)


def _mlp(sizes: list[int], scales: list[float] | None = None, laplace: list[bool] | None = None, seed: int = 0):
    """x -> (MatMul W_i -> Relu)* -> logits; layer i's weights Laplace (many tiny) or uniform."""
    rng = np.random.default_rng(seed)
    nodes, inits, h = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if laplace is not None and laplace[i]:
            w = rng.laplace(0, 1, (a, b)) ** 3  # heavy-tailed: most weights negligible
        else:
            w = rng.uniform(0.5, 1.5, (a, b)) * rng.choice([-1, 1], (a, b))  # every weight matters
        w = (w / np.sqrt(np.mean(w**2) * a)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "logits" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [out if out == "logits" else f"m{i}"]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        h = out
    return graphs.make_model(nodes, [graphs.vi("x", ["N", sizes[0]])], [graphs.vi("logits", ["N", sizes[-1]])], inits)


def _inputs(n: int, d: int, seed: int) -> Dataset:
    return Dataset({"x": np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)}, None)


def test_layer_curves_match_a_brute_force_computation_with_and_without_the_refit():
    model = _mlp([12, 16, 6], seed=1)
    data = _inputs(64, 12, 2)
    weights, _ = prunable_weights(model, min_params=0)
    ratios = [0.25, 0.5, 0.75]
    plain = layer_errors(model, weights, data, ratios)
    comp = Compensator(model, weights, data)
    refit = layer_errors(model, weights, data, ratios, comp)
    assert plain["capture_runs"] == 1 and refit["capture_runs"] == 0  # the refit's covariances reused
    x = {"w0": data.inputs["x"].astype(np.float64)}
    x["w1"] = np.maximum(x["w0"] @ numpy_helper.to_array(model.graph.initializer[0]), 0)
    for w in weights:
        values = w.array().astype(np.float64)
        xs, cov = x[w.name], x[w.name].T @ x[w.name]
        energy = np.sum((xs @ values) ** 2)
        (p_curve,) = [c for c in plain["curves"] if c["name"] == w.name]
        (r_curve,) = [c for c in refit["curves"] if c["name"] == w.name]
        assert p_curve["method"] == r_curve["method"] == "covariance" and r_curve["refit"]
        for i, r in enumerate(ratios):
            pruned = layer_pruned(values, r)
            np.testing.assert_allclose(p_curve["errors"][i], np.sum((xs @ (values - pruned)) ** 2) / energy, rtol=1e-5)
            fitted = refit_kept(values, pruned != 0, cov)
            np.testing.assert_allclose(r_curve["errors"][i], np.sum((xs @ (values - fitted)) ** 2) / energy, rtol=1e-3)
            assert r_curve["errors"][i] <= p_curve["errors"][i] + 1e-9  # the refit never does worse


def test_tensors_without_a_covariance_use_the_weight_proxy_and_say_why():
    model = graphs.depthwise_resnet()
    data = graphs.make_inputs(model, 16, 0)
    weights, _ = prunable_weights(model, min_params=0)
    curves = {c["name"]: c for c in layer_errors(model, weights, data, [0.5, 0.9])["curves"]}
    assert curves["dw.weight"]["method"] == "weight" and "grouped" in curves["dw.weight"]["reason"]
    assert curves["pw.weight"]["method"] == "covariance" and curves["pw.weight"]["reason"] is None
    for c in curves.values():
        assert c["errors"] == sorted(c["errors"]) and all(e >= 0 for e in c["errors"])


def test_the_search_gives_the_sensitive_layer_the_lower_ratio():
    # Layer 0's weights all matter (uniform magnitudes); layer 1's are mostly negligible
    # (heavy-tailed): pruning the same fraction costs layer 0 far more output.
    model = _mlp([32, 64, 64, 10], laplace=[False, True, False], seed=3)
    data = _inputs(256, 32, 4)
    out, stats = prune_to_budget(model, data, 3.0, min_params=0)
    ratios = stats["budget"]["ratios"]
    assert ratios["w1"] > ratios["w0"] + 0.2 and ratios["w1"] > 0.5
    assert stats["budget"]["final"]["drop"] <= 3.0
    reference = evaluate.run_model(model, data)[0].argmax(1)
    agreement = 100 * np.mean(evaluate.run_model(out, data)[0].argmax(1) == reference)
    assert agreement == pytest.approx(stats["budget"]["final"]["top1_agreement"])


@pytest.mark.parametrize("layers", [3, 24])
def test_whole_model_runs_stay_bounded_as_the_tensors_grow(layers):
    model = _mlp([16] * (layers + 1), seed=layers)
    data = _inputs(64, 16, 5)
    judge = Judge.of_model(model, data)
    before = judge.runs
    out, stats = prune_to_budget(model, data, 2.0, min_params=0, judge=judge)
    runs = judge.runs - before + stats["layer_errors"]["capture_runs"]
    assert len(stats["layer_errors"]["curves"]) == layers
    assert stats["budget"]["whole_model_runs"] == judge.runs - before
    assert runs <= 12, stats["budget"]["attempts"]
    assert stats["budget"]["final"]["drop"] <= 2.0
    assert len(graph.weights(out)) == len(graph.weights(model))


def test_the_refit_share_from_a_few_channels_estimates_the_whole_layers(monkeypatch):
    monkeypatch.setattr(layer_error, "REFIT_RATIOS", 3)
    # More output channels than REFIT_COLUMNS and more ratios than REFIT_RATIOS: the refit is
    # solved on a sample of the channels at a few ratios, interpolated between them.
    model = _mlp([24, 160, 4], seed=6)
    data = _inputs(128, 24, 7)
    weights, _ = prunable_weights(model, min_params=0)
    comp = Compensator(model, weights, data)
    ladder = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    curve = layer_errors(model, weights[:1], data, ladder, comp)["curves"][0]
    assert curve["name"] == "w0" and curve["refit"]
    xs = data.inputs["x"].astype(np.float64)
    values = weights[0].array().astype(np.float64)
    energy = np.sum((xs @ values) ** 2)
    for ratio, estimate in zip(ladder, curve["errors"]):
        fitted = comp("w0", layer_pruned(weights[0].array(), ratio)).astype(np.float64)
        exact = np.sum((xs @ (values - fitted)) ** 2) / energy
        assert estimate == pytest.approx(exact, rel=0.2)


def test_when_even_the_floor_candidate_overshoots_the_search_stops_after_two_runs():
    # Every weight matters and the SNR floor is out of reach: the start overshoots, the floor
    # (MIN_PRUNED_SHARE of the weights zeroed) too, and no smaller candidate is measured.
    model = _mlp([16, 32, 32, 8], seed=4)
    data = _inputs(64, 16, 7)
    out, stats = prune_to_budget(model, data, 0.0, min_params=0, min_snr_db=300.0)
    budget = stats["budget"]
    assert budget["whole_model_runs"] == 2, budget["attempts"]  # the start and the floor
    assert [a["within_budget"] for a in budget["attempts"]] == [False, False]
    floor = budget["attempts"][1]
    assert floor["sparsity"] >= prune_budget.MIN_PRUNED_SHARE and floor["allowance"] == budget["allowance"]["rejected"]
    assert all(r == 0.0 for r in budget["ratios"].values())


def test_the_floor_allowance_is_the_smallest_that_zeros_the_share():
    curves = [
        {"name": n, "params": p, "ratios": [0.3, 0.6, 0.9], "drops": d}
        for n, p, d in (("a", 1000, [0.01, 0.05, 0.4]), ("b", 300, [0.001, 0.002, 0.03]), ("c", 50, [0.2, 0.5, 0.9]))
    ]
    total = sum(c["params"] for c in curves)
    for share in (0.05, 0.3, 0.6):
        floor = prune_budget.floor_allowance(curves, share)
        assert prune_budget.allocated_zeros(curves, floor) >= share * total
        below = floor / (1 + prune_budget.ALLOWANCE_RESOLUTION) ** 1.01
        assert floor == prune_budget.MIN_ALLOWANCE or prune_budget.allocated_zeros(curves, below) < share * total


def test_a_floor_that_fits_leaves_the_search_as_it_was_plus_one_candidate(monkeypatch):
    # The fixed-step search (the margin-stepped one never measures below the floor).
    monkeypatch.setattr(prune_budget, "MARGIN_STEPS", False)
    model = _mlp([16, 32, 32, 8], laplace=[False, True, False], seed=5)
    data = _inputs(128, 16, 8)
    _, with_floor = prune_to_budget(model, data, 1.0, min_params=0, max_evals=5)
    monkeypatch.setattr(prune_budget, "MIN_PRUNED_SHARE", 2.0)  # no floor below the start
    _, without = prune_to_budget(model, data, 1.0, min_params=0, max_evals=5)
    tried = [a["allowance"] for a in with_floor["budget"]["attempts"]]
    plain = [a["allowance"] for a in without["budget"]["attempts"]]
    if len(tried) > 1 and not with_floor["budget"]["attempts"][0]["within_budget"]:
        assert tried[0] == plain[0] and tried[2:] == plain[1:] and len(tried) == len(plain) + 1
    else:
        assert tried == plain
    assert with_floor["budget"]["ratios"] == without["budget"]["ratios"] or len(tried) > len(plain)


def test_the_search_reads_numpy_verdicts_as_python_bools():
    assert prune_budget._fits({"within_budget": np.False_}) is False
    assert prune_budget._fits({"within_budget": np.True_}) is True and prune_budget._fits(None) is None
