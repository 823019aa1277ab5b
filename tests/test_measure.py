"""The judge (compressor/measure.py): loss and budget rules, the allowance search, and running
variants of a model fast (weights fed as inputs) against rebuilding it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import graph
from compressor.data import Dataset, load_dataset
from compressor.evaluate import run_model
from compressor.measure import (
    DEFAULT_MIN_SNR_DB,
    RUN_KEYS,
    Judge,
    Measure,
    Trials,
    VariantRunner,
    loss_points,
    relative_noise,
    search_allowance,
    within_budget,
)
from compressor.passes.magnitude import layer_pruned
from compressor.passes.selection import prunable_weights
from compressor.search.prune_budget import prune_to_budget
from compressor.variants import with_arrays

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def sample(name, split="test"):
    model = graph.load_model(SAMPLES / f"{name}.onnx")
    return model, load_dataset(SAMPLES / f"{name}_{split}.npz", model)


# --------------------------------------------------------------------------- pure rules


def test_loss_points_per_mode():
    assert loss_points("accuracy", 1.5, 90.0) == 1.5
    assert loss_points("fidelity", 1.5, 97.0) == pytest.approx(3.0)
    assert loss_points("fidelity", None, None) == 0.0  # no top-1: the SNR floor guards it
    # Per-position scores: the KL in points counts when it is the worse loss.
    assert loss_points("fidelity", None, 99.5, kl_points=0.8) == pytest.approx(0.8)
    assert loss_points("fidelity", None, 99.0, kl_points=0.2) == pytest.approx(1.0)
    assert loss_points("accuracy", 0.5, 99.0, kl_points=3.0) == 0.5
    assert loss_points("none", 1.5, 97.0) is None


def test_within_budget_with_and_without_an_snr_floor():
    assert within_budget(1.0, None, 1.0)
    assert within_budget(1.0 + 1e-12, None, 1.0)  # float rounding at the budget fits
    assert not within_budget(1.01, None, 1.0)
    assert within_budget(0.5, 10.0, 1.0)  # no floor: any SNR
    assert not within_budget(0.5, 10.0, 1.0, min_snr_db=20.0)
    assert within_budget(0.5, 20.0, 1.0, min_snr_db=20.0)
    assert within_budget(0.5, math.inf, 1.0, min_snr_db=20.0)
    assert within_budget(0.5, None, 1.0, min_snr_db=20.0)  # no float output: nothing to gate
    assert not within_budget(math.nan, None, 1.0)
    assert not within_budget(0.0, math.nan, 1.0, min_snr_db=20.0)


def test_relative_noise():
    ref = np.array([[3.0, 4.0]], np.float32)
    assert relative_noise(ref, ref) == 0.0
    assert relative_noise(ref, ref + np.array([[0.0, 0.5]], np.float32)) == pytest.approx(0.25 / 25)
    assert relative_noise(ref.astype(np.int64), ref.astype(np.int64)) is None
    assert relative_noise(np.zeros((1, 2), np.float32), ref) == math.inf


def test_the_runs_judge_gates_snr_only_for_outputs_without_top1():
    model, data = sample("lenet5", "calib")
    judge = Measure(data, "fidelity", 1.0, DEFAULT_MIN_SNR_DB)
    assert judge.start(model)["top1_agreement"] == 100.0
    assert not judge.snr_gated  # class scores: top-1 agreement alone
    close = {"accuracy": None, "accuracy_drop": None, "top1_agreement": 99.5, "snr_db": 5.0}
    assert judge.loss(close) == pytest.approx(0.5) and judge.within(close)
    assert not judge.within(close, budget=0.25)
    judge.allowance = 0.6  # a fixed stage overshot: later ones are judged against that
    assert judge.within(close, budget=0.25)
    explicit = Measure(data, "fidelity", 1.0, DEFAULT_MIN_SNR_DB, explicit_snr=True)
    explicit.start(model)
    assert explicit.snr_gated and not explicit.within(close)
    assert explicit.within({**close, "snr_db": 25.0})
    assert Measure(None, "none", 1.0, DEFAULT_MIN_SNR_DB).within(close)


def test_the_runs_metrics_and_the_searches_agree():
    model, data = sample("lenet300", "test")
    run_judge = Judge(data, "accuracy", 1.0)
    run_judge.start(model)
    search_judge = Judge.of_model(model, data)
    w = next(w for w in graph.weights(model) if w.name == "fc1.weight")
    candidate = with_arrays(model, [w], {"fc1.weight": layer_pruned(w.array(), 0.9)})
    metrics, outputs = run_judge(candidate)
    assert set(metrics) == set(RUN_KEYS) and metrics["map_f1"] is None and metrics["task_score"] is None
    searched = search_judge.measure_model(candidate)
    assert set(searched) == {
        "accuracy",
        "top1_agreement",
        "snr_db",
        "drop",
        "rel_noise",
        "kl",
        "map_f1",
        "decision_risk",
        "kl_points",
        "similarity_points",
        "embedding_snr_db",
    }
    assert searched["kl"] == metrics["kl"] > 0
    assert searched["drop"] == run_judge.loss(metrics) == metrics["accuracy_drop"]
    assert searched["snr_db"] == metrics["snr_db"] and search_judge.runs == 1
    assert search_judge.fits(searched, searched["drop"]) and not search_judge.fits(searched, searched["drop"] - 0.01)
    assert search_judge.baseline["drop"] == 0.0 and search_judge.baseline["rel_noise"] == 0.0
    np.testing.assert_array_equal(outputs[0], run_model(candidate, data)[0])


# --------------------------------------------------------------------------- searches


@pytest.mark.parametrize("geometric", [True, False])
@pytest.mark.parametrize("start", [0.01, 0.37, 5.0])
def test_search_allowance_finds_the_edge_of_a_monotone_function(geometric, start):
    edge = 0.37
    calls = []

    def fits(a):
        calls.append(a)
        return a <= edge

    resolution = 0.01
    lo, hi = search_allowance(
        fits,
        start,
        grow=lambda a: None if a > 100 else a * 2,
        shrink=lambda a: None if a < 1e-6 else a / 2,
        geometric=geometric,
        resolution=resolution,
    )
    assert lo <= edge < hi
    assert (hi / lo < 1 + resolution) if geometric else (hi - lo <= resolution)
    assert calls[0] == start and len(calls) < 30


def test_search_allowance_stops_when_nothing_fits_everything_fits_or_evaluations_run_out():
    grow = lambda a: None if a >= 8 else a * 2  # noqa: E731
    shrink = lambda a: None if a <= 0.5 else a / 2  # noqa: E731
    assert search_allowance(lambda a: True, 1.0, grow, shrink, True, 0.05) == (8.0, None)
    assert search_allowance(lambda a: False, 1.0, grow, shrink, True, 0.05) == (None, 0.5)
    assert search_allowance(lambda a: None, 1.0, grow, shrink, True, 0.05) == (None, None)
    assert search_allowance(lambda a: a < 3, 1.0, grow, shrink, True, 0.05, max_steps=2) == (2.0, None)


def test_trials_measure_each_key_once_within_max_evals():
    runs, recorded = [], []

    def run(x):
        runs.append(x)
        return {"drop": float(x), "snr_db": None}

    trials = Trials(lambda m: within_budget(m["drop"], m["snr_db"], 1.0), max_evals=2)
    assert trials.measure("a", lambda: run(0.5), recorded.append)["within_budget"]
    assert trials.measure("a", lambda: run(9), recorded.append)["drop"] == 0.5  # cached
    assert not trials.measure("b", lambda: run(2), recorded.append)["within_budget"]
    assert trials.exhausted and trials.measure("c", lambda: run(0), recorded.append) is None
    assert runs == [0.5, 2] and [m["drop"] for m in recorded] == [0.5, 2.0]


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize("rebuild", [False, True])
def test_running_variants_equals_rebuilding_the_model(rebuild):
    model, data = sample("lenet5", "calib")
    data = data.take(200)
    judge = Judge.of_model(model, data)
    selected, _ = prunable_weights(model)
    runner = VariantRunner(model, judge, selected, rebuild=rebuild)
    assert (runner.session is None) == rebuild
    arrays = {w.name: layer_pruned(w.array(), 0.8) for w in selected[:2]}
    fast = runner.measure_arrays(arrays)
    slow = judge.measure_model(with_arrays(model, selected, arrays))
    assert fast["top1_agreement"] == pytest.approx(slow["top1_agreement"])
    assert fast["rel_noise"] == pytest.approx(slow["rel_noise"], rel=1e-4)
    assert fast["snr_db"] == pytest.approx(slow["snr_db"], abs=1e-3)
    assert runner.measure_arrays({})["rel_noise"] == pytest.approx(0.0, abs=1e-10)
    assert judge.runs == 3


def test_scalar_outputs_are_stacked_per_batch_as_run_model_does():
    # One scalar per run: the judge keeps every batch's, as evaluate.run_model does.
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0)]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    data = Dataset({"x": np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)}, None)
    judge = Judge.of_model(model, data, batch_size=4)
    assert judge.reference_outputs[1].shape == (3,)  # 3 batches
    (weight,) = [x for x in graph.weights(model) if x.name == "w"]
    runner = VariantRunner(model, judge, [weight])
    assert runner.measure_arrays({})["snr_db"] == math.inf


def test_a_search_measures_the_same_with_the_runs_judge():
    # The run may hand its judge (reference outputs measured already) to the pruning search.
    model, data = sample("lenet5")
    data = data.take(300)
    run_judge = Measure(data, "accuracy", 1.0, DEFAULT_MIN_SNR_DB)
    run_judge.start(model)
    ratios = [0.5, 0.9]
    shared, shared_stats = prune_to_budget(model, data, 1.0, ratios=ratios, max_evals=5, judge=run_judge)
    own, own_stats = prune_to_budget(model, data, 1.0, ratios=ratios, max_evals=5)
    assert shared.SerializeToString() == own.SerializeToString()
    assert shared_stats["budget"] == own_stats["budget"]
    # the candidates and at least one real-model check (the layer error curves run no model)
    assert run_judge.runs == own_stats["budget"]["whole_model_runs"] >= own_stats["budget"]["evaluations"] + 1
