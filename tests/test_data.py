"""data: the .npz convention (one array per input by name, `x` for one input, optional `y`),
clear errors for wrong names / dtypes / shapes, no pickles, batching."""

from __future__ import annotations

import graphs
import numpy as np
import pytest

from compressor.data import Dataset, fixed_batch_size, load_dataset, read_npz
from compressor.errors import CompressorError, UsageError


def save(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- the convention


def test_single_input_model_reads_x_and_labels(tmp_path):
    model = graphs.mlp()
    x = np.random.default_rng(0).normal(size=(12, 64))  # float64 on disk
    data = load_dataset(save(tmp_path, x=x, y=np.arange(12) % 10), model)
    assert list(data.inputs) == ["x"] and data.size == 12
    assert data.inputs["x"].dtype == np.float32 and np.allclose(data.inputs["x"], x)
    assert data.labels.dtype == np.int64 and data.labels.tolist() == (np.arange(12) % 10).tolist()


def test_arrays_are_matched_by_input_name(tmp_path):
    model = graphs.integer_input_model()  # a: int32, b: int64
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 16, (5, 8)), rng.integers(0, 16, (5, 8)).astype(np.int32)
    data = load_dataset(save(tmp_path, b=b, a=a), model)
    assert list(data.inputs) == ["a", "b"]  # model order, not file order
    assert data.inputs["a"].dtype == np.int32 and data.inputs["b"].dtype == np.int64  # ints cast within the kind
    assert np.array_equal(data.inputs["a"], a) and data.labels is None


def test_the_input_name_wins_over_x(tmp_path):
    model = graphs.transformer_encoder()  # one input, named "ids"
    ids = np.ones((3, 8), np.int64)
    data = load_dataset(save(tmp_path, ids=ids, x=np.zeros((3, 8), np.int64)), model)
    assert np.array_equal(data.inputs["ids"], ids)


def test_bool_and_token_inputs_as_make_inputs_writes_them(tmp_path):
    for build in (graphs.if_subgraph_model, graphs.transformer_encoder):
        model = build()
        made = graphs.make_inputs(model, 6, 0)
        data = load_dataset(save(tmp_path, **made.inputs), model)
        for name, arr in made.inputs.items():
            assert data.inputs[name].dtype == arr.dtype and np.array_equal(data.inputs[name], arr)


def test_fixed_batch_size_is_the_static_first_dimension():
    assert fixed_batch_size(graphs.mlp()) is None
    # Sequence-first recurrent models have a static axis 0 (time): it is what Dataset slices.
    assert fixed_batch_size(graphs.gru_model()) == 5


# --------------------------------------------------------------------------- errors


def test_a_missing_input_names_the_input_and_what_the_file_has(tmp_path):
    model = graphs.integer_input_model()
    with pytest.raises(CompressorError) as info:
        load_dataset(save(tmp_path, a=np.zeros((2, 8), np.int32), c=np.zeros((2, 8), np.int64)), model)
    assert "no array for model input 'b'" in one_line(info) and "has: a, c" in one_line(info)
    with pytest.raises(CompressorError, match="input 'a'"):  # `x` is only for single-input models
        load_dataset(save(tmp_path, x=np.zeros((2, 8), np.int32)), model)


@pytest.mark.parametrize("build, arrays, message", [
    (graphs.transformer_encoder, {"ids": np.zeros((2, 8), np.float32)}, "data has dtype float32, the model expects int64"),
    (graphs.mlp, {"x": np.zeros((2, 64), np.int64)}, "data has dtype int64, the model expects float32"),
    (graphs.mlp, {"x": np.zeros((2, 64), bool)}, "the model expects float32"),
    (graphs.mlp, {"x": np.zeros((2, 8, 8), np.float32)}, "for each sample"),  # rank + 1: read as per-sample feeds
    (graphs.mlp, {"x": np.zeros((2, 2, 8, 8), np.float32)}, "expects rank 2"),
    (graphs.mlp, {"x": np.zeros((2, 63), np.float32)}, "expects ('N', 64)"),
    (graphs.conv_net, {"x": np.zeros((2, 1, 16, 15), np.float32)}, "expects ('N', 1, 16, 16)"),
    (graphs.integer_input_model, {"a": np.zeros((2, 8), np.int32), "b": np.zeros((3, 8), np.int64)}, "different numbers of samples"),
    (graphs.mlp, {"x": np.zeros((0, 64), np.float32)}, "holds no samples"),
    (graphs.mlp, {"x": np.zeros((4, 64), np.float32), "y": np.zeros(4, np.float32)}, "1-D integer array"),
    (graphs.mlp, {"x": np.zeros((4, 64), np.float32), "y": np.zeros((4, 1), np.int64)}, "1-D integer array"),
    (graphs.mlp, {"x": np.zeros((4, 64), np.float32), "y": np.zeros(3, np.int64)}, "3 labels for 4 samples"),
])  # fmt: skip
def test_wrong_dtypes_shapes_and_labels_are_clear_errors(tmp_path, build, arrays, message):
    with pytest.raises(CompressorError) as info:
        load_dataset(save(tmp_path, **arrays), build())
    assert message in one_line(info)
    assert not isinstance(info.value, UsageError)


def test_a_scalar_input_array_is_refused(tmp_path):
    # An input without a recorded shape takes any rank; a 0-d array still has no batch axis.
    model = graphs.mlp()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(CompressorError, match="must have a batch dimension"):
        load_dataset(save(tmp_path, x=np.float32(1.0)), model)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))  # stored as a pickle
    with pytest.raises(CompressorError) as info:
        read_npz(path)
    assert "cannot read data file" in one_line(info) and "pickle" in one_line(info).lower()
    with pytest.raises(CompressorError):
        load_dataset(path, graphs.mlp())


@pytest.mark.parametrize("content", [b"", b"not a zip file", b"PK\x03\x04truncated"])
def test_files_that_are_not_npz_are_errors(tmp_path, content):
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    with pytest.raises(CompressorError, match="cannot read data file"):
        read_npz(path)


def test_a_missing_data_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such data file"):
        load_dataset(tmp_path / "absent.npz", graphs.mlp())


# --------------------------------------------------------------------------- batching


def test_batches_cover_every_sample_once_in_order_for_every_input():
    rng = np.random.default_rng(0)
    data = Dataset({"a": rng.normal(size=(10, 3)), "b": np.arange(10)}, np.arange(10))
    batches = list(data.batches(4))
    assert [len(b["b"]) for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b["b"] for b in batches]), np.arange(10))
    assert np.array_equal(np.concatenate([b["a"] for b in batches]), data.inputs["a"])
    assert all(set(b) == {"a", "b"} for b in batches)
    assert len(list(data.batches(100))) == 1


def test_take_keeps_inputs_and_labels_aligned():
    data = Dataset({"x": np.arange(20).reshape(10, 2)}, np.arange(10) * 2)
    first = data.take(3)
    assert (
        first.size == 3
        and first.inputs["x"].tolist() == [[0, 1], [2, 3], [4, 5]]
        and first.labels.tolist() == [0, 2, 4]
    )
    assert Dataset({"x": np.zeros((5, 1))}, None).take(2).labels is None


def test_make_inputs_is_deterministic_and_typed():
    for name, build in graphs.BUILDERS.items():
        model = build()
        a, b = graphs.make_inputs(model, 4, 3), graphs.make_inputs(model, 4, 3)
        assert a.labels is None and a.inputs.keys() == b.inputs.keys()
        for k in a.inputs:
            assert np.array_equal(a.inputs[k], b.inputs[k]), (name, k)
    ids = graphs.make_inputs(graphs.transformer_encoder(), 64, 0).inputs["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 100  # within the vocabulary
    assert graphs.make_inputs(graphs.if_subgraph_model(), 4, 0).inputs["flag"].all()
    assert not graphs.make_inputs(graphs.if_subgraph_model(), 4, 1).inputs["flag"].any()
    assert graphs.make_inputs(graphs.fp16_model(), 4, 0).inputs["x"].dtype == np.float16
    assert graphs.make_inputs(graphs.gru_model(), 4, 0).inputs["x"].shape == (5, 4, 16)  # [T, N, F]


# --------------------------------------------------------------------------- per-sample layout


def test_per_sample_layout_and_constants_for_a_model_whose_batch_axis_is_not_first(tmp_path):
    from compressor.evaluate import run_model

    model = graphs.streaming_vad_model()
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((6, 1, 64)).astype(np.float32)
    path = save(tmp_path, x=audio, state=np.zeros((6, 1, 1, 32), np.float32), sr=np.array(16000))
    data = load_dataset(path, model)
    assert data.per_sample and data.size == 6 and set(data.constants) == {"sr"}
    feeds = list(data.batches(64))
    assert len(feeds) == 6 and feeds[2]["x"].shape == (1, 64) and feeds[2]["sr"].shape == ()
    prob, state = run_model(model, data)
    assert prob.shape == (6, 1) and state.shape == (6, 1, 32)  # runs joined along axis 0
    # the same as feeding each sample by hand
    from compressor.evaluate import make_session

    session = make_session(model)
    by_hand = np.concatenate(
        [
            session.run(None, {"x": audio[i], "state": np.zeros((1, 1, 32), np.float32), "sr": np.array(16000)})[0]
            for i in range(6)
        ]
    )
    assert np.array_equal(prob, by_hand)
    assert data.select(np.array([0, 3])).size == 2 and data.take(3).per_sample


def test_mixed_layouts_and_wrong_per_sample_shapes_are_refused(tmp_path):
    model = graphs.streaming_vad_model()
    with pytest.raises(CompressorError, match="mixes batched and per-sample"):
        load_dataset(
            save(
                tmp_path, x=np.zeros((6, 1, 64), np.float32), state=np.zeros((1, 6, 32), np.float32), sr=np.array(16000)
            ),
            model,
        )
    with pytest.raises(CompressorError, match="for each sample"):
        load_dataset(
            save(
                tmp_path,
                x=np.zeros((6, 1, 64), np.float32),
                state=np.zeros((6, 1, 1, 16), np.float32),
                sr=np.array(16000),
            ),
            model,
        )


def test_the_pipeline_runs_on_per_sample_data(tmp_path):
    from compressor.pipeline import run_pipeline

    model = graphs.streaming_vad_model()
    path = tmp_path / "vad.onnx"
    import onnx

    onnx.save(model, path)
    rng = np.random.default_rng(1)
    data = save(
        tmp_path,
        x=rng.standard_normal((16, 1, 64)).astype(np.float32),
        state=np.zeros((16, 1, 1, 32), np.float32),
        sr=np.array(16000),
    )
    report = run_pipeline(str(path), str(tmp_path / "vad.cmpz"), data_path=str(data))
    assert report["mode"] == "fidelity" and report["min_snr_db"] == 20.0  # [N, 1] probabilities: no top-1
    assert report["stages"][-1]["snr_db"] >= 20.0
    assert report["container"]["verified"] == "outputs"


def test_a_model_file_given_as_data_is_not_taken_for_a_pickle(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(graphs.mlp().SerializeToString())
    with pytest.raises(CompressorError) as info:
        read_npz(path)
    assert "not an .npz archive" in one_line(info) and "pickle" not in one_line(info).lower()
