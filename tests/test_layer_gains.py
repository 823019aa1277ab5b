"""Layer gains (search/layer_gains.py): group testing of how much each layer's error reaches the outputs."""

from __future__ import annotations

import graphs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from compressor import graph
from compressor.data import Dataset
from compressor.measure import Judge, VariantRunner
from compressor.options import PruneOptions, ShareOptions
from compressor.search import layer_gains
from compressor.search.ecq_budget import share_by_rate
from compressor.search.layer_gains import (
    contiguous_groups,
    estimate_gains,
    nearest_option,
    normalized,
    output_error,
    runner_gains,
    weigh,
)
from compressor.search.prune_budget import prune_to_budget
from compressor.search.share_budget import share_to_budget


@settings(max_examples=50, deadline=None)
@given(params=st.lists(st.integers(0, 10_000), min_size=1, max_size=40), k=st.integers(1, 10))
def test_groups_are_contiguous_cover_everything_and_stay_within_the_count(params, k):
    groups = contiguous_groups(params, k)
    assert 1 <= len(groups) <= k
    assert [i for g in groups for i in g] == list(range(len(params)))
    assert all(g for g in groups)


def test_a_large_tensor_is_a_group_of_its_own():
    assert contiguous_groups([10, 10, 1000, 10, 10], 3) == [[0, 1], [2], [3, 4]]
    assert contiguous_groups([1, 1, 1, 1], 4) == [[0], [1], [2], [3]]
    assert contiguous_groups([], 3) == []


def test_nearest_option_skips_what_has_no_error():
    assert nearest_option([0.0, 1e-5, 2e-3, 0.1], 1e-3) == 2
    assert nearest_option([None, float("inf"), 0.0]) is None
    assert nearest_option([None, 1e-6, None], 1.0) == 1


def test_output_error_is_centred_and_skips_non_float_outputs():
    rng = np.random.default_rng(0)
    ref = (5.0 + rng.standard_normal((8, 3))).astype(np.float32)  # a large mean the error is not relative to
    out = ref + 0.1
    expected = np.sum(np.full((8, 3), 0.1) ** 2) / np.sum((ref - ref.mean(0)) ** 2)
    labels = np.arange(8)
    assert output_error([ref, labels], [out, labels + 1]) == pytest.approx(expected, rel=1e-5)
    assert output_error([ref], [ref]) == 0.0
    assert output_error([labels], [labels]) == 0.0


def test_normalized_gains_have_mean_one_and_a_bounded_spread():
    gains = normalized({"a": 1.0, "b": 4.0, "c": 0.0, "d": float("inf")})
    assert np.mean(list(gains.values())) == pytest.approx(1.0)
    spread = layer_gains.MAX_SPREAD
    # the median of the usable gains is 2.5: a zero gain is floored there, not free
    assert gains["c"] / gains["a"] == pytest.approx(2.5 / spread)
    assert gains["d"] / gains["c"] == pytest.approx(spread**2)
    assert normalized({"a": 0.0}) == {"a": 1.0}


def test_weigh_scales_each_tensors_drops():
    knapsack = [{"name": "a", "params": 4, "ratios": [0, 0.5], "drops": [0.0, 2.0]}, {"name": "b", "drops": [1.0]}]
    assert weigh(knapsack, {"a": 0.5})[0]["drops"] == [0.0, 1.0]
    assert weigh(knapsack, {"a": 0.5})[1]["drops"] == [1.0]
    assert weigh(knapsack, None) is knapsack


def _two_branch_model(quiet: float = 0.01, d: int = 32, d_out: int = 4, seed: int = 0):
    """y = x W1 + quiet * (x W2), a regressor (judged by its SNR): W2's relative error reaches
    the output `quiet`² as much."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d, d_out)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((d, d_out)) / np.sqrt(d)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
        helper.make_node("MatMul", ["x", "w2"], ["b"], name="mm2"),
        helper.make_node("Mul", ["b", "q"], ["bq"], name="quiet"),
        helper.make_node("Add", ["a", "bq"], ["y"], name="add"),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array(quiet, np.float32), "q"),
    ]
    model = graphs.make_model(nodes, [graphs.vi("x", ["N", d])], [graphs.vi("y", ["N", d_out])], inits)
    x = np.random.default_rng(seed + 1).standard_normal((64, d)).astype(np.float32)
    return model, Dataset({"x": x}, None)


def _noisy(values: np.ndarray, error: float, seed: int) -> np.ndarray:
    # weight-space relative error `error` (the inputs are white, so the layer's is about the same)
    noise = np.random.default_rng(seed).standard_normal(values.shape)
    return (values + noise * np.sqrt(error * np.sum(values**2) / np.sum(noise**2))).astype(np.float32)


def test_the_quiet_branch_has_the_smaller_gain_one_run_per_group():
    model, data = _two_branch_model(quiet=0.1)
    judge = Judge.of_model(model, data)
    selected = [w for w in graph.weights(model) if w.name in ("w1", "w2")]
    runner = VariantRunner(model, judge, selected)
    before = judge.runs
    errors = {"w1": [0.0, 1e-3, 1e-1], "w2": [0.0, 1e-3, 1e-1]}
    found = runner_gains(runner, errors, lambda n, i: _noisy(runner.originals[n], errors[n][i], i), max_runs=2)
    assert judge.runs - before == found["runs"] == 2
    assert found["groups"] == [["w1"], ["w2"]]
    # the branch scaled by 0.1 passes on 1 % of its error (up to the noise draw)
    ratio = found["gains"]["w2"] / found["gains"]["w1"]
    assert 0.003 < ratio < 0.03
    again = runner_gains(runner, errors, lambda n, i: _noisy(runner.originals[n], errors[n][i], i), max_runs=2)
    assert again["gains"] == found["gains"]  # deterministic


def test_one_run_for_all_when_one_group_and_no_probe_takes_the_median():
    calls = []

    def outputs_of(arrays):
        calls.append(sorted(arrays))
        return [np.ones((2, 2))]

    ref = [np.zeros((2, 2))]
    found = estimate_gains(["a", "b", "c"], {"a": 1, "b": 1, "c": 1}, {"a": (1e-3, None)}, outputs_of, ref, 1)
    assert calls == [["a"]] and found["runs"] == 1 and found["gains"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    found = estimate_gains(["a", "b"], {"a": 1, "b": 1}, {}, outputs_of, ref, 2)
    assert found["runs"] == 0 and found["gains"] == {"a": 1.0, "b": 1.0}


def test_prune_search_prunes_the_quiet_branch_more_with_gains():
    model, data = _two_branch_model(quiet=0.05)
    kwargs = dict(min_params=0, min_snr_db=20.0)
    _, plain = prune_to_budget(model, data, 0.0, **kwargs)  # off by default
    _, weighted = prune_to_budget(model, data, 0.0, gain_runs=layer_gains.MAX_RUNS, **kwargs)
    assert "gains" not in plain["layer_errors"]
    assert weighted["layer_errors"]["gains"]["runs"] == 2
    ratios, plain_ratios = weighted["budget"]["ratios"], plain["budget"]["ratios"]
    assert ratios["w2"] > ratios["w1"]
    assert ratios["w2"] + ratios["w1"] >= plain_ratios["w2"] + plain_ratios["w1"]
    assert weighted["budget"]["final"]["snr_db"] >= 20.0


def test_share_search_reports_its_gains_and_narrows_the_quiet_branch():
    model, data = _two_branch_model(quiet=0.05)
    _, stats = share_to_budget(model, data, 0.0, min_params=0, min_snr_db=30.0, gain_runs=layer_gains.MAX_RUNS)
    search = stats["budget_search"]
    assert search["gains"]["runs"] == 2 and search["gains"]["groups"] == [["w1"], ["w2"]]
    assert search["chosen"]["w2"] <= search["chosen"]["w1"]
    _, plain = share_to_budget(model, data, 0.0, min_params=0, min_snr_db=30.0)  # off by default
    assert plain["budget_search"]["gains"] is None
    assert sum(search["chosen"].values()) <= sum(plain["budget_search"]["chosen"].values())
    assert search["whole_model_runs"] == search["evaluations"] + search["gains"]["runs"]


def test_share_by_rate_takes_gains_from_its_front_and_the_recipe_sets_them():
    model, data = _two_branch_model(quiet=0.05)
    _, stats = share_by_rate(model, data, 0.0, min_params=0, min_snr_db=30.0, gain_runs=2)
    search = stats["budget_search"]
    assert search["gains"]["runs"] == 2
    assert search["gains"]["gains"]["w2"] < search["gains"]["gains"]["w1"]
    assert search["whole_model_runs"] == search["evaluations"] + 2
    assert PruneOptions().gain_runs == ShareOptions().gain_runs == layer_gains.DEFAULT_RUNS == 0
