"""evaluate: ORT sessions, batched inference, accuracy, fidelity (top-1 agreement, SNR, max error),
latency, capture of intermediate tensors."""

from __future__ import annotations

import math

import graphs
import numpy as np
import pytest
from onnx import TensorProto

from compressor import graph
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.evaluate import (
    ACTIVATION_BYTES_PER_INPUT_BYTE,
    accuracy,
    bounded_batch_size,
    capture,
    capture_with_feeds,
    evaluate,
    evaluate_with_latency,
    fidelity,
    latency_ms,
    make_session,
    ort_counts,
    run_batch_size,
    run_model,
    snr_db,
    top1,
    with_outputs,
)

# --------------------------------------------------------------------------- accuracy


def test_top1_and_accuracy():
    logits = np.array([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0], [0.0, 0.0, 9.0], [1.0, 3.0, 2.0]], np.float32)
    assert top1(logits).tolist() == [1, 0, 2, 1]
    assert accuracy(logits, np.array([1, 0, 2, 0])) == 75.0
    assert top1(np.array([3, 1], np.int64)).tolist() == [3, 1]  # already labels (an ArgMax output)
    assert top1(np.array([-0.5, 0.5], np.float32)).tolist() == [0, 1]  # one logit: its sign
    assert top1(np.zeros((2, 1, 3), np.float32) + [[[0, 0, 1]]]).tolist() == [2, 2]  # flattened per sample


def test_accuracy_with_a_different_number_of_labels_is_an_error():
    with pytest.raises(CompressorError, match="3 predictions for 2 labels"):
        accuracy(np.zeros((3, 4), np.float32), np.zeros(2, np.int64))


# --------------------------------------------------------------------------- fidelity


def test_snr_db():
    ref = np.array([3.0, 4.0], np.float32)  # power 25
    assert snr_db(ref, ref) == math.inf
    assert snr_db(ref, ref + np.array([0.3, 0.4], np.float32)) == pytest.approx(20.0, abs=1e-4)  # noise power 0.25
    assert snr_db(np.zeros(2), np.ones(2)) == -math.inf


def test_fidelity_of_identical_and_perturbed_outputs():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 10)).astype(np.float32)
    same = fidelity([ref], [ref.copy()])
    assert same == {"top1_agreement": 100.0, "max_abs_error": 0.0, "snr_db": math.inf, "centred_snr_db": math.inf}
    noisy = ref + rng.normal(0, 0.1, ref.shape).astype(np.float32)
    f = fidelity([ref], [noisy])
    expected_agreement = float(np.mean(ref.argmax(1) == noisy.argmax(1)) * 100)
    assert f["top1_agreement"] == expected_agreement < 100.0
    assert f["max_abs_error"] == pytest.approx(float(np.abs(ref - noisy).max()))
    assert 15 < f["snr_db"] < 25  # unit-variance signal, 0.1 noise: ~20 dB


def test_fidelity_over_several_outputs_takes_the_worst():
    ref = [np.ones((4, 3), np.float32), np.ones((4, 2), np.float32), np.array([1, 2, 3, 4], np.int64)]
    out = [ref[0] + 0.01, ref[1] + 0.1, np.array([1, 2, 3, 6], np.int64)]
    f = fidelity(ref, out)
    assert f["snr_db"] == pytest.approx(20.0, abs=1e-3) and f["max_abs_error"] == 2.0


def test_fidelity_without_class_scores_has_no_agreement():
    f = fidelity([np.ones(4, np.float32)], [np.ones(4, np.float32)])
    assert f["top1_agreement"] is None


def test_fidelity_refuses_different_shapes():
    with pytest.raises(CompressorError, match="output shapes differ"):
        fidelity([np.zeros((4, 10), np.float32)], [np.zeros((4, 9), np.float32)])


# --------------------------------------------------------------------------- sessions and batching


# Recurrent zoo models feed [T, N, F]: a Dataset batches axis 0 (time), so they are fed whole.
BATCHABLE = [n for n in graphs.BUILDERS if n not in ("gru_model", "lstm_model")]


@pytest.mark.parametrize("name", BATCHABLE)
def test_run_model_in_batches_equals_one_big_batch(name):
    model = graphs.BUILDERS[name]()
    data = graphs.make_inputs(model, 23, 0)
    whole = run_model(model, data, batch_size=1000)
    session = make_session(model)
    for batch_size in (1, 5):
        parts = run_model(session, data, batch_size=batch_size)
        assert [p.shape for p in parts] == [w.shape for w in whole]
        for p, w in zip(parts, whole):
            # MLAS picks kernels by batch size: equal to float rounding, not bit for bit
            np.testing.assert_allclose(p, w, rtol=1e-3, atol=1e-3 if p.dtype != np.float16 else 1e-2)


def test_run_model_uses_a_model_fixed_batch_size():
    model = graphs.mlp()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # static batch of 4
    data = graphs.make_inputs(graphs.mlp(), 12, 0)
    out = run_model(model, data)  # would fail in ORT with any other batch size
    assert out[0].shape == (12, 10)


def test_run_model_on_an_empty_dataset_returns_nothing():
    assert run_model(graphs.mlp(), Dataset({"x": np.zeros((0, 64), np.float32)}, None)) == []


def test_session_and_run_failures_are_compressor_errors():
    model = graphs.mlp()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(CompressorError, match="ONNX Runtime cannot load the model"):
        make_session(model)
    with pytest.raises(CompressorError, match="ONNX Runtime failed to run the model") as info:
        run_model(graphs.mlp(), Dataset({"x": np.zeros((2, 63), np.float32)}, None))
    assert "\n" not in str(info.value)


def test_evaluate_reports_accuracy_and_fidelity():
    model = graphs.conv_net()
    data = graphs.make_inputs(model, 40, 0)
    labels = run_model(model, data)[0].argmax(1)
    labels[:10] = (labels[:10] + 1) % 10  # 10 of 40 wrong
    result = evaluate(model, Dataset(data.inputs, labels), reference_outputs=run_model(model, data))
    assert result["samples"] == 40 and result["accuracy"] == 75.0
    assert result["top1_agreement"] == 100.0 and result["snr_db"] == math.inf
    assert evaluate(model, data)["accuracy"] is None


def test_evaluate_with_latency_against_a_reference():
    model = graphs.mlp()
    data = graphs.make_inputs(model, 16, 0)
    data = Dataset(data.inputs, run_model(model, data)[0].argmax(1))
    result = evaluate_with_latency(model, data, reference=model, latency_batch=None)
    assert result["accuracy"] == result["reference_accuracy"] == 100.0 and result["max_abs_error"] == 0.0
    assert "latency_ms_batch1" not in result
    assert latency_ms(make_session(model), data, 8, repeats=2, warmup=1) > 0


# --------------------------------------------------------------------------- capture


def test_capture_yields_intermediate_values_batch_by_batch():
    model = graphs.mlp()
    data = graphs.make_inputs(model, 10, 0)
    chunks = list(capture(model, ["relu_0", "fc2", "relu_0"], data, batch_size=4))
    assert [sorted(c) for c in chunks] == [["fc2", "relu_0"]] * 3  # duplicates asked once
    assert [c["fc2"].shape for c in chunks] == [(4, 64), (4, 64), (2, 64)]
    relu = np.concatenate([c["relu_0"] for c in chunks])
    fc2 = np.concatenate([c["fc2"] for c in chunks])
    assert (relu >= 0).all() and relu.shape == (10, 128)
    # fc2 = relu @ W2^T + b2, recomputed in numpy from the captured input of the layer
    w = {x.name: x.array() for x in graph.weights(model)}
    np.testing.assert_allclose(fc2, relu @ w["fc2.weight"].T + w["fc2.bias"], rtol=1e-4, atol=1e-4)


def test_capture_of_an_output_and_of_a_value_inside_attention():
    model = graphs.transformer_encoder()
    data = graphs.make_inputs(model, 6, 0)
    chunks = list(capture(model, ["logits", "attn.softmax"], data))
    # a 1-sample batch measures the captures' bytes, then the rest fits the byte budget at once
    assert [len(c["logits"]) for c in chunks] == [1, 5]
    logits = np.concatenate([c["logits"] for c in chunks])
    np.testing.assert_allclose(logits, run_model(model, data)[0], rtol=1e-5, atol=1e-5)
    probs = np.concatenate([c["attn.softmax"] for c in chunks])
    assert probs.shape == (6, 4, 8, 8)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_capture_batches_stay_under_the_byte_budget():
    model = graphs.mlp()
    data = graphs.make_inputs(model, 50, 0)
    names = ["relu_0", "fc2"]
    per_sample = (128 + 64) * 4  # float32 values of both captures for one sample
    budget = 7 * per_sample + 3
    pairs = list(capture_with_feeds(model, names, data, budget=budget))
    sizes = [len(values["fc2"]) for _, values in pairs]
    assert sizes == [1] + [7] * 7  # the probe sample, then batches of budget // per_sample
    for feed, values in pairs:
        assert sum(v.nbytes for v in values.values()) <= budget
        assert len(next(iter(feed.values()))) == len(values["fc2"])  # each feed with its captures
    whole = np.concatenate([v["fc2"] for _, v in pairs])
    np.testing.assert_allclose(whole, np.concatenate([c["fc2"] for c in capture(model, names, data, 50)]))
    # an explicit batch size wins; the sizing is a pure function of the counts
    assert [len(v["fc2"]) for _, v in capture_with_feeds(model, names, data, batch_size=20)] == [20, 20, 10]
    assert bounded_batch_size(per_sample, 49, budget) == 7
    assert bounded_batch_size(10**12, 49) == 1 and bounded_batch_size(1, 49) == 49


def test_run_batch_size_bounds_the_activations_of_a_batch(monkeypatch):
    model = graphs.mlp()
    data = graphs.make_inputs(model, 50, 0)
    per_sample = sum(v[:1].nbytes for v in data.inputs.values())
    assert run_batch_size(model, data) == 50  # small inputs: the whole data at once
    monkeypatch.setattr("compressor.evaluate.CAPTURE_BYTES", ACTIVATION_BYTES_PER_INPUT_BYTE * per_sample * 6)
    assert run_batch_size(model, data) == 6
    assert run_batch_size(model, data, wanted=4) == 4
    before = ort_counts()["runs"]
    run_model(model, data)
    assert ort_counts()["runs"] - before == 9  # ceil(50 / 6)


def test_ort_counts_count_sessions_and_runs():
    model = graphs.mlp()
    data = graphs.make_inputs(model, 10, 0)
    before = ort_counts()
    run_model(model, data, batch_size=4)
    after = ort_counts()
    assert after["sessions"] - before["sessions"] == 1 and after["runs"] - before["runs"] == 3


def test_snr_db_in_chunks_matches_the_float64_formula(monkeypatch):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(7, 13, 5)).astype(np.float32)
    out = ref + rng.normal(scale=0.1, size=ref.shape).astype(np.float32)
    r64, o64 = ref.astype(np.float64), out.astype(np.float64)
    exact = 10 * math.log10(float((r64**2).sum()) / float(((r64 - o64) ** 2).sum()))
    monkeypatch.setattr("compressor.evaluate.SNR_CHUNK", 17)  # many chunks, a ragged last one
    assert snr_db(ref, out) == pytest.approx(exact, abs=1e-9)
    assert snr_db(ref, ref) == math.inf


def test_with_outputs_leaves_the_model_alone():
    model = graphs.mlp()
    before = model.SerializeToString()
    extended = with_outputs(model, ["relu_0", "logits"])
    assert model.SerializeToString() == before
    assert [o.name for o in extended.graph.output] == ["logits", "relu_0"]
    assert extended.graph.output[1].type.tensor_type.elem_type == TensorProto.UNDEFINED


def test_top1_agreement_is_only_for_class_scores():
    from compressor.evaluate import score_layout, top1_agreement

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 10)).astype(np.float32)
    assert score_layout(logits) == "classes" and score_layout(logits[:, :, None, None]) == "classes"
    probs = np.exp(rng.normal(size=(4, 7, 30)))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)  # [N, T, C] per-position softmax
    assert score_layout(probs) == "positions" and score_layout(np.log(probs)) == "positions"
    changed = probs.copy()
    changed[0, 0] = np.roll(changed[0, 0], 1)  # one position of 28 changes its argmax
    assert top1_agreement(probs, changed) == pytest.approx(100 * 27 / 28)
    boxes = rng.normal(size=(2, 22, 2100)).astype(np.float32)  # a detector's raw head
    assert score_layout(boxes) is None and top1_agreement(boxes, boxes) is None
    assert score_layout(rng.normal(size=(8, 1)).astype(np.float32)) is None  # a regressor
