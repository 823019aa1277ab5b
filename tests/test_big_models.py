"""Models over 2 GB: sizes without serializing, external data read and written tensor by tensor.

The fast tests force small models through the external-data paths (thresholds are
parameters); the > 2 GB round trip is opt-in: COMPRESSOR_BIG_TESTS=1 (COMPRESSOR_BIG_TMP
names the folder for its ~5 GB of files; by default pytest's temp folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import graphs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from big_models import write_external_model

from compressor import graph
from compressor.cli import main
from compressor.codec import sparse
from compressor.container import pack_file, pack_model, unpack_file
from compressor.container import unpack as unpack_module
from compressor.errors import CompressorError
from compressor.evaluate import make_session

BIG = os.environ.get("COMPRESSOR_BIG_TESTS") == "1"


def small_models() -> dict[str, onnx.ModelProto]:
    return {
        "mlp": graphs.mlp(),
        "transformer": graphs.transformer_encoder(),
        "if_subgraph": graphs.if_subgraph_model(),
        "constant_and_if": graphs.constant_and_if_net(),
        "qdq": graphs.quantized_qdq_model(),
        "constant_weights": graphs.constant_weights_conv(),
    }


def tensors_equal(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    ra, rb = list(graph.iter_tensors(a)), list(graph.iter_tensors(b))
    return len(ra) == len(rb) and all(
        x.name == y.name and x.proto.SerializeToString() == y.proto.SerializeToString() for x, y in zip(ra, rb)
    )


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", list(small_models()))
def test_model_bytes_is_the_serialized_size(name):
    model = small_models()[name]
    assert graph.model_bytes(model) == model.ByteSize()


@pytest.mark.parametrize("name", ["transformer", "constant_and_if", "if_subgraph"])
def test_model_bytes_counts_external_tensors_as_loaded(tmp_path, name):
    graph.save_model(small_models()[name], tmp_path / "m.onnx", external_threshold=0)
    lazy, files = graph.load_model_and_files(tmp_path / "m.onnx", external_data=False)
    assert files == [(tmp_path / "m.onnx.data").resolve()]
    assert graph.has_external_data(lazy)
    assert graph.model_bytes(lazy) == graph.load_model(tmp_path / "m.onnx").ByteSize()


# --------------------------------------------------------------------------- loading


def test_lazy_loading_leaves_tensors_in_their_file(tmp_path):
    model = graphs.transformer_encoder()
    graph.save_model(model, tmp_path / "m.onnx", external_threshold=0)
    lazy, _ = graph.load_model_and_files(tmp_path / "m.onnx", external_data=False)
    external = [ref for ref in graph.iter_tensors(lazy) if ref.proto.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(not ref.proto.HasField("raw_data") for ref in external)
    by_name = {ref.name: ref.proto for ref in graph.iter_tensors(model)}
    for ref in external:
        assert (
            graph.read_external_data(ref.proto, graph.model_folder(tmp_path / "m.onnx")) == by_name[ref.name].raw_data
        )


def test_loading_into_memory_refuses_a_model_over_the_limit_in_one_line(tmp_path):
    graph.save_model(graphs.mlp(), tmp_path / "m.onnx", external_threshold=0)
    with pytest.raises(CompressorError, match=r"holds a whole model in memory, up to 1,000 bytes") as e:
        graph.load_model_and_files(tmp_path / "m.onnx", max_bytes=1000)
    assert "\n" not in str(e.value)
    graph.load_model_and_files(tmp_path / "m.onnx", external_data=False, max_bytes=1000)  # streamed: fine


@pytest.mark.parametrize("name", ["if_subgraph", "constant_and_if", "qdq"])
def test_external_save_round_trips_subgraphs_and_constants(tmp_path, name):
    model = small_models()[name]
    graph.save_model(model, tmp_path / "m.onnx", external_threshold=0)
    assert tensors_equal(_inline(graph.load_model(tmp_path / "m.onnx")), _inline(model))


def _inline(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with data_location cleared (a loaded external tensor keeps an explicit DEFAULT)."""
    model = graph.copy_model(model)
    for ref in graph.iter_tensors(model):
        ref.proto.ClearField("data_location")
    return model


def test_copy_without_data_numbers_tensors_in_iter_tensors_order():
    model = graphs.constant_and_if_net()
    refs = list(graph.iter_tensors(model))
    strip = {i for i, ref in enumerate(refs) if i % 2}
    copy = graph.copy_without_data(model, strip)
    for i, (a, b) in enumerate(zip(refs, graph.iter_tensors(copy))):
        assert a.name == b.name and list(a.proto.dims) == list(b.proto.dims)
        if i in strip:
            assert not b.proto.HasField("raw_data") and not len(b.proto.float_data)
        else:
            assert a.proto.SerializeToString() == b.proto.SerializeToString()


# --------------------------------------------------------------------------- pack / unpack


@pytest.fixture
def external_model(tmp_path) -> Path:
    # Two 360 KB weights: their encoded payloads are spooled (pack_file) like a big model's.
    folder = tmp_path / "model"
    folder.mkdir()
    return write_external_model(folder, layers=2, width=300)


def test_pack_file_streams_external_tensors_into_the_same_container(tmp_path, external_model):
    stats = pack_file(external_model, tmp_path / "m.cmpz")
    data, expected = pack_model(graph.load_model(external_model))
    assert (tmp_path / "m.cmpz").read_bytes() == data
    assert stats["model_bytes"] == expected["model_bytes"] == graph.load_model(external_model).ByteSize()
    assert stats["container_bytes"] == len(data)


def test_unpack_writes_external_data_tensor_by_tensor_bit_identical(tmp_path, external_model, monkeypatch):
    pack_file(external_model, tmp_path / "m.cmpz")
    monkeypatch.setattr(unpack_module, "MAP_MIN_BYTES", 0)  # the mapped container path too
    info = unpack_file(tmp_path / "m.cmpz", tmp_path / "u.onnx", external_threshold=0)
    assert info["verified"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cmpz", "model", "u.onnx", "u.onnx.data"]
    on_disk = onnx.load(tmp_path / "u.onnx", load_external_data=False)
    assert sum(t.data_location == onnx.TensorProto.EXTERNAL for t in on_disk.graph.initializer) == 3  # bias too
    assert tensors_equal(_inline(graph.load_model(tmp_path / "u.onnx")), _inline(graph.load_model(external_model)))
    x = np.random.default_rng(0).standard_normal((1, 300)).astype(np.float32)
    (a,) = make_session(str(external_model)).run(None, {"h0": x})
    (b,) = make_session(str(tmp_path / "u.onnx")).run(None, {"h0": x})
    assert np.array_equal(a, b)


def test_a_failed_verification_of_an_external_unpack_leaves_nothing(tmp_path, external_model, monkeypatch):
    pack_file(external_model, tmp_path / "m.cmpz")
    real_info = unpack_module._info
    monkeypatch.setattr(unpack_module, "_info", lambda plan: {**real_info(plan), "model_sha256": "0" * 64})
    with pytest.raises(CompressorError, match="verification failed"):
        unpack_file(tmp_path / "m.cmpz", tmp_path / "u.onnx", external_threshold=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cmpz", "model"]


def test_make_session_of_a_large_model_loads_it_from_external_data():
    model = graphs.mlp()
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    (a,) = make_session(model).run(None, {"x": x})
    (b,) = make_session(model, external_threshold=0).run(None, {"x": x})
    assert np.array_equal(a, b)


# --------------------------------------------------------------------------- narrow indices


def test_nonzero_positions_are_int32_and_found_block_by_block():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 3, size=sparse.INDEX_BLOCK * 2 + 123).astype(np.float32)
    values[rng.random(values.size) < 0.7] = 0
    positions = sparse.flatnonzero_narrow(values)
    assert positions.dtype == np.int32
    assert np.array_equal(positions, np.flatnonzero(values))


def test_the_codebook_is_found_block_by_block_as_uint16_symbols():
    rng = np.random.default_rng(1)
    codebook = rng.standard_normal(200).astype(np.float32)
    values = codebook[rng.integers(0, 200, size=sparse.INDEX_BLOCK + 5000)]
    values[-1] = 123.0  # a value the strided sample misses
    found = sparse.find_codebook(values)
    expected, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    assert found.symbols.dtype == np.uint16
    assert np.array_equal(found.values, expected)
    assert np.array_equal(found.symbols, inverse.reshape(-1))
    assert np.array_equal(found.counts, counts)


# --------------------------------------------------------------------------- > 2 GB, opt-in


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compressor", *args], capture_output=True, text=True, check=False)


def _external_arrays(model_path: Path):
    """(name, bytes) of each tensor, read one at a time."""
    lazy, _ = graph.load_model_and_files(model_path, external_data=False)
    folder = graph.model_folder(model_path)
    for ref in graph.iter_tensors(lazy):
        if ref.proto.data_location == onnx.TensorProto.EXTERNAL:
            yield ref.name, graph.read_external_data(ref.proto, folder)
        else:
            yield ref.name, ref.proto.raw_data


def _run_once(model_path: Path, x: np.ndarray) -> np.ndarray:
    """The model's output for x, in an ORT session of its own (prepacking off: one copy of the weights)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"h0": x})[0]


@pytest.mark.skipif(not BIG, reason="writes ~5 GB and takes minutes: set COMPRESSOR_BIG_TESTS=1")
def test_a_model_over_2_gb_packs_unpacks_bit_identical_quantizes_and_runs(tmp_path):
    folder = Path(tempfile.mkdtemp(dir=os.environ.get("COMPRESSOR_BIG_TMP") or tmp_path))
    try:
        model = write_external_model(folder, layers=4, width=12000)  # 4 x 576 MB
        assert (folder / "model.onnx.data").stat().st_size > graph.PROTOBUF_LIMIT
        packed = _cli("pack", str(model), "-o", str(folder / "m.cmpz"))
        assert packed.returncode == 0, packed.stderr
        unpacked = _cli("unpack", str(folder / "m.cmpz"), "-o", str(folder / "u.onnx"), "--verify")
        assert unpacked.returncode == 0, unpacked.stderr
        assert "verified" in unpacked.stdout
        for (name_a, a), (name_b, b) in zip(_external_arrays(model), _external_arrays(folder / "u.onnx"), strict=True):
            assert name_a == name_b and a == b, name_a
        del a, b
        x = np.random.default_rng(0).standard_normal((1, 12000)).astype(np.float32)
        y = _run_once(folder / "u.onnx", x)
        h = x
        for name, data in _external_arrays(folder / "u.onnx"):
            if name.startswith("w"):
                h = h @ np.frombuffer(data, dtype=np.float32).reshape(12000, 12000)
        expected = np.maximum(h + np.frombuffer(data, dtype=np.float32), 0)
        assert np.allclose(y, expected, rtol=1e-3, atol=1e-3)
        (folder / "u.onnx.data").unlink()
        # quantize and run hold the model in memory (never serialized whole): int8 weights, data-free.
        quantized = _cli("quantize", str(model), "-o", str(folder / "q.onnx"))
        assert quantized.returncode == 0, quantized.stderr
        assert np.abs(_run_once(folder / "q.onnx", x) - expected).max() < 0.05 * np.abs(expected).max()
        (folder / "q.onnx.data").unlink(missing_ok=True)
        ran = _cli("run", str(model), "-o", str(folder / "r.cmpz"), "--report", str(folder / "r.json"))
        assert ran.returncode == 0, ran.stderr
        assert json.loads((folder / "r.json").read_text())["container"]["verified"]
        unpacked = _cli("unpack", str(folder / "r.cmpz"), "-o", str(folder / "ru.onnx"))
        assert unpacked.returncode == 0, unpacked.stderr
        assert np.abs(_run_once(folder / "ru.onnx", x) - expected).max() < 0.05 * np.abs(expected).max()
    finally:
        for p in sorted(folder.iterdir()):
            p.unlink()
        folder.rmdir()


def test_inspect_reads_external_tensors_one_at_a_time_with_the_same_description(tmp_path, capsys):
    model = graphs.transformer_encoder()
    graph.save_model(model, tmp_path / "inline.onnx")
    graph.save_model(model, tmp_path / "external.onnx", external_threshold=0)
    described = []
    for name in ("inline.onnx", "external.onnx"):
        assert main(["inspect", str(tmp_path / name), "--json"]) == 0  # in this process: no interpreter to start
        described.append({k: v for k, v in json.loads(capsys.readouterr().out).items() if k != "file_bytes"})
    assert described[0] == described[1]
