"""Sessions of a model whose large initializers ORT takes as arrays (session_arrays): the same
outputs, bit for bit, as a session of the whole serialized model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compressor import evaluate, session_arrays
from tests import graphs

BUILDERS = [
    graphs.mlp,
    graphs.conv_net,
    graphs.depthwise_resnet,
    graphs.transformer_encoder,
    graphs.gru_model,
    graphs.quantized_qdq_model,
    graphs.fp16_model,
    graphs.if_subgraph_model,
    graphs.integer_input_model,
    lambda: graphs.opset_model(9),
]


def serialized_outputs(model: onnx.ModelProto, data) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return evaluate.run_model(session, data, 8)


@pytest.mark.parametrize("build", BUILDERS)
def test_every_initializer_as_an_array_gives_the_same_outputs(build, monkeypatch):
    model = build()
    data = graphs.make_inputs(model, 8)
    monkeypatch.setattr(session_arrays, "ARRAY_MIN_BYTES", 1)
    parts = session_arrays.split_large_initializers(model)
    assert parts is not None and parts.arrays
    session = evaluate.make_session(model)
    for got, want in zip(evaluate.run_model(session, data, 8), serialized_outputs(model, data)):
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)


def test_only_large_main_graph_initializers_are_split():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((600, 512)).astype(np.float32)  # 1.2 MB: over ARRAY_MIN_BYTES
    w2 = rng.standard_normal((512, 10)).astype(np.float32)
    model = graphs.relu_mlp(w1, w2)
    parts = session_arrays.split_large_initializers(model)
    assert parts is not None and list(parts.arrays) == [model.graph.initializer[0].name]
    assert np.array_equal(parts.arrays[model.graph.initializer[0].name], w1)
    stub = parts.skeleton.graph.initializer[0]
    assert stub.data_location == onnx.TensorProto.EXTERNAL and not stub.raw_data
    assert parts.skeleton.ByteSize() < 64 << 10  # the skeleton holds no large data
    assert model.graph.initializer[0].raw_data  # the model itself is untouched
    data = graphs.make_inputs(model, 8)
    session = evaluate.make_session(model)
    assert np.array_equal(evaluate.run_model(session, data, 8)[0], serialized_outputs(model, data)[0])


def test_a_model_without_large_initializers_is_not_split():
    assert session_arrays.split_large_initializers(graphs.mlp()) is None
    assert not hasattr(evaluate.make_session(graphs.mlp()), "compressor_arrays")


def test_this_ort_copies_the_arrays_and_they_are_let_go():
    """ORT 1.32 copies the arrays while it builds the session: changing ours after does not
    change its outputs, and the session does not hold them."""
    assert session_arrays.ort_copies_arrays()
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((600, 512)).astype(np.float32)
    model = graphs.relu_mlp(w1, rng.standard_normal((512, 10)).astype(np.float32))
    data = graphs.make_inputs(model, 8)
    want = serialized_outputs(model, data)[0]
    parts = session_arrays.split_large_initializers(model)
    parts.arrays = {k: a.copy() for k, a in parts.arrays.items()}  # writable (to_array's are read-only)
    session = evaluate._array_session(ort, parts, ort.SessionOptions())
    assert not hasattr(session, "compressor_arrays")
    for a in parts.arrays.values():
        a[...] = 0  # ORT's copy is what the session reads
    del parts
    assert np.array_equal(evaluate.run_model(session, data, 8)[0], want)


def test_an_ort_that_reads_the_arrays_in_place_keeps_them_with_the_session(monkeypatch):
    monkeypatch.setattr(session_arrays, "ort_copies_arrays", lambda: False)
    rng = np.random.default_rng(0)
    model = graphs.relu_mlp(
        rng.standard_normal((600, 512)).astype(np.float32), rng.standard_normal((512, 10)).astype(np.float32)
    )
    parts = session_arrays.split_large_initializers(model)
    session = evaluate._array_session(ort, parts, ort.SessionOptions())
    assert len(session.compressor_arrays) == len(parts.arrays) == 1
