"""A whole-model run's batch is bounded by the model's own intermediate tensors, not only by its
input's size (evaluate.node_activation_bytes, run_batch_size; the judge's session batch)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor import evaluate
from compressor.data import Dataset
from compressor.evaluate import ORT_COUNTS, node_activation_bytes, run_batch_size, run_model
from compressor.measure import Judge

REPEATS = 1000


def widening_model() -> onnx.ModelProto:
    """x[N, 64] -> Tile x1000 -> [N, 64000] -> ReduceSum -> [N, 1]: a small input whose
    intermediate tensor is a thousand times larger (as a spectrogram model's)."""
    nodes = [
        helper.make_node("Tile", ["x", "reps"], ["wide"]),
        helper.make_node("ReduceSum", ["wide", "axes"], ["y"], keepdims=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, REPEATS], np.int64), "reps"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    g = helper.make_graph(
        nodes,
        "widening",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_largest_nodes_tensors_bound_the_batch(monkeypatch):
    model = widening_model()
    per_sample = (64 + 64 * REPEATS) * 4  # Tile's input and output, one sample
    assert node_activation_bytes(model, {"x": (1, 64)}) == per_sample
    monkeypatch.setattr(evaluate, "CAPTURE_BYTES", 1 << 20)
    data = Dataset({"x": np.ones((10, 64), np.float32)}, None)
    assert run_batch_size(model, data) == (1 << 20) // per_sample == 4
    before = ORT_COUNTS["runs"]
    (y,) = run_model(model, data)
    assert ORT_COUNTS["runs"] - before == 3 and np.allclose(y, 64 * REPEATS)
    judge = Judge(data, "fidelity")
    judge.start(model)
    assert judge._session_batch == 4  # the searches' sessions run at that batch too


def test_small_models_keep_their_batch():
    model = widening_model()
    data = Dataset({"x": np.ones((300, 64), np.float32)}, None)
    assert run_batch_size(model, data) == evaluate.DEFAULT_BATCH


def test_captures_too_large_for_one_pass_are_taken_in_groups(monkeypatch):
    from compressor.passes.quantize.calibrate import collect

    model = widening_model()
    data = Dataset({"x": np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)}, None)
    whole = collect(model, ["wide", "y"], data)
    assert evaluate.capture_groups(model, ["wide", "y"], data) == [["wide", "y"]]
    monkeypatch.setattr(evaluate, "CAPTURE_BYTES", 2 * 64 * REPEATS * 4 - 1)  # half: one sample of "wide" passes it
    assert evaluate.capture_groups(model, ["y", "wide", "y"], data) == [["y"], ["wide"]]
    grouped = collect(model, ["wide", "y"], data)
    for name in ("wide", "y"):
        a, b = whole[name], grouped[name]
        assert (a.min, a.max, a.count) == (b.min, b.max, b.count)
        assert np.array_equal(a.pos, b.pos) and np.array_equal(a.neg, b.neg)


def test_range_statistics_in_chunks_are_those_in_one_piece(monkeypatch):
    from compressor import quant_math

    rng = np.random.default_rng(3)
    x = np.concatenate([np.zeros(500), rng.standard_normal(3000) * 0.01, rng.standard_normal(3000) * 50]).astype(
        np.float32
    )
    whole = quant_math.RangeCollector()
    whole.update(x)
    monkeypatch.setattr(quant_math, "UPDATE_CHUNK", 700)  # the first chunk is all zeros, the range grows later
    chunked = quant_math.RangeCollector()
    chunked.update(x)
    assert (whole.min, whole.max, whole.count, whole.zeros, whole.limit) == (
        chunked.min,
        chunked.max,
        chunked.count,
        chunked.zeros,
        chunked.limit,
    )
    assert np.array_equal(whole.pos, chunked.pos) and np.array_equal(whole.neg, chunked.neg)
