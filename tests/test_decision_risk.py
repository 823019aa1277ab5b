"""The decision risk of probability outputs (compressor.decision_risk): decisions that came close
count, and the bound is taken over the independent units (rows, or a recurrent model's
sequences), so that a verdict on few easy samples cannot pass on a count of flips."""

from __future__ import annotations

import graphs
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from scipy import special
from test_sequences import CLIPS, STEPS, perturbed, sequence_data

from compressor import decision_risk as dr
from compressor import output_kinds as ok
from compressor.data import Dataset
from compressor.measure import Judge
from compressor.pipeline import _with_recurrence, run_pipeline
from compressor.report import format_report


def sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def test_each_decision_counts_by_how_close_it_came():
    ref = sigmoid(np.array([2.0, -2.0, 1.0, 3.0, -1.0]))
    out = sigmoid(np.array([1.0, -2.0, -0.5, 3.0, -1.5]))
    risks = dr.flip_risks(ref, out)
    # moved half its margin: Phi(-2); unmoved: 0; flipped: 1; moved away from the threshold:
    # the move's size counts, not its sign (Phi(-2) too)
    assert risks == pytest.approx([special.ndtr(-2.0), 0.0, 1.0, 0.0, special.ndtr(-2.0)], abs=1e-6)
    assert dr.decision_risk(ref, ref) == 0.0 and dr.decision_risk(ref[:0], ref[:0]) == 0.0
    assert dr.flip_risks(ref, np.full_like(ref, np.nan)).tolist() == [1.0] * 5


def test_units_are_rows_or_the_sequences_the_rows_cycle_over():
    risks = np.arange(12, dtype=np.float64).reshape(12, 1)  # 4 steps x 3 sequences
    assert dr.unit_rates(risks).tolist() == list(range(12))
    assert dr.unit_rates(risks, 3).tolist() == [4.5, 5.5, 6.5]  # rows j, j+3, j+6, j+9
    assert dr.unit_rates(risks, 1).tolist() == [5.5]
    assert dr.unit_count(12, 3) == 3 and dr.unit_count(12, 0) == 12 and dr.unit_count(12, 5) == 12


def test_the_bound_grows_with_few_or_disagreeing_units():
    assert dr.upper_bound(np.array([0.1])) == pytest.approx(0.1)  # one unit: the mean
    assert dr.upper_bound(np.full(8, 0.02)) == pytest.approx(0.02)  # units agree: no spread
    one_bad = np.array([0.0625] + [0.0] * 7)  # 4 flips of 64 steps, all in one of 8 sequences
    assert dr.upper_bound(one_bad) > 2.5 * one_bad.mean()
    assert dr.upper_bound(np.array([1.0, 1.0, 0.0])) <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 4, 8]))
def test_the_risk_is_never_below_the_flip_count(seed, units):
    rng = np.random.default_rng(seed)
    ref = rng.uniform(size=(64, 1)).astype(np.float32)
    out = np.clip(ref + rng.normal(scale=0.2, size=ref.shape), 0, 1).astype(np.float32)
    agreement = ok.decision_agreement(ref, out)
    assert dr.decision_risk(ref, out, units) >= 100.0 - agreement - 1e-9


def test_flips_in_one_sequence_are_riskier_than_the_same_flips_spread():
    """4 flips in 512 decisions: 0.78 points by count, within a 1-point budget.  All in one of
    8 sequences, the bound over the sequences says the task can lose more than the budget."""
    rng = np.random.default_rng(0)
    steps, sequences = 64, 8
    ref = sigmoid(rng.choice([-1, 1], size=(steps * sequences, 1)) * rng.uniform(4, 8, size=(steps * sequences, 1)))
    out = ref.copy()
    one = np.arange(0, 4 * sequences, sequences)  # rows of sequence 0 at steps 0..3
    out[one] = 1.0 - out[one]
    assert 100.0 - ok.decision_agreement(ref, out) == pytest.approx(100 * 4 / 512)  # the old count: passes
    assert dr.decision_risk(ref, out, sequences) > 1.0  # the new measure: rejects
    assert dr.decision_risk(ref, out, 0) < dr.decision_risk(ref, out, sequences)


def sigmoid_classifier(scale: float = 1.0) -> onnx.ModelProto:
    """x[N, 4] -> Sigmoid(x @ w * scale + b): a binary classifier's probability [N, 1]."""
    w = numpy_helper.from_array(np.array([[1.5], [-1.0], [0.5], [2.0]], np.float32) * scale, "w")
    b = numpy_helper.from_array(np.array([0.25], np.float32) * scale, "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
    ]
    g = helper.make_graph(
        nodes,
        "sigmoid_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])],
        [w, b],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_near_misses_fail_the_guard_that_a_flip_count_passes():
    """Every logit shrunk to 30 %: not one decision flips (100 % agreement: the count passes),
    but each moved 70 % of the way to the threshold: the decision risk rejects it."""
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    judge = Judge(Dataset({"x": x}, None), "fidelity", budget=1.0)
    start = judge.start(sigmoid_classifier())
    assert start["decision_risk"] == 0.0 and judge.kinds == ["probability"]
    metrics, _ = judge(sigmoid_classifier(0.3))
    assert metrics["top1_agreement"] == 100.0
    assert metrics["decision_risk"] > 1.0 and judge.loss(metrics) == metrics["decision_risk"]
    assert not judge.within(metrics)
    gentle, _ = judge(sigmoid_classifier(0.999))
    assert gentle["decision_risk"] < 1.0 and judge.within(gentle)
    assert judge.describe()["decision_risk"] == {"confidence": 0.95, "unit": "row", "units": 200, "threshold": 0.5}


def test_a_recurrent_models_units_are_its_sequences():
    model = graphs.streaming_vad_model()
    data = _with_recurrence(model, sequence_data(model), "auto")
    judge = Judge(data, "fidelity", budget=1.0)
    judge.start(model)
    assert judge.references[0].units == CLIPS
    assert judge.describe()["decision_risk"]["unit"] == "sequence"
    assert judge.describe()["decision_risk"]["units"] == CLIPS
    metrics, outputs = judge(perturbed(model))
    assert outputs[0].shape[0] == STEPS * CLIPS
    assert metrics["decision_risk"] == pytest.approx(dr.decision_risk(judge.reference_outputs[0], outputs[0], CLIPS))
    assert judge.loss(metrics) >= 100.0 - metrics["top1_agreement"]


def test_the_report_states_the_bound_and_each_stages_risk(tmp_path):
    model = graphs.streaming_vad_model()
    data = sequence_data(model)
    path, npz = tmp_path / "vad.onnx", tmp_path / "seq.npz"
    onnx.save(model, path)
    np.savez(npz, x=data.inputs["x"], state=data.inputs["state"], sr=np.array(16000))
    report = run_pipeline(str(path), str(tmp_path / "vad.cmpz"), calib_path=str(npz))
    assert report["guard"]["decision_risk"] == {
        "confidence": 0.95,
        "unit": "sequence",
        "units": CLIPS // 2,
        "threshold": 0.5,
    }
    for stage in report["stages"]:
        if stage["applied"] and stage["stage"] != "original":
            assert stage["decision_risk"] <= report["budget_points"] + 1e-9
            assert stage["decision_risk"] >= 100.0 - stage["top1_agreement"] - 1e-9
    assert f"95 % bound over {CLIPS // 2} sequences" in format_report(report)
