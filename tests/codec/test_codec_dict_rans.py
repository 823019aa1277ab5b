"""dict-rans (codec 20): chosen where the context model beats the Huffman layouts, exact round
trips, version 1.4, and hostile payloads refused with CorruptData only."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compressor.codec import CorruptData
from compressor.container import format as fmt
from compressor.container import pack_model, unpack_container
from compressor.container.coders import dict_bins, dict_rans, encode_tensor_data, registry


@contextlib.contextmanager
def without_dict_bins():
    """dict-bins (codec 23) left out of the choice: these tests are about dict-rans against the
    Huffman layouts, and dict-bins codes the same runs smaller."""
    coder = registry.get(dict_bins.ID)
    registry.unregister(dict_bins.ID)
    try:
        yield
    finally:
        registry.register(coder)


def row_structured_int8(rows: int = 300, cols: int = 784, seed: int = 0) -> np.ndarray:
    """A pruned, quantized layer whose zeros come in whole input columns and runs: the previous
    element predicts the next (what the rANS context captures and Huffman cannot)."""
    rng = np.random.default_rng(seed)
    w = np.round(rng.laplace(0, 6, (rows, cols))).clip(-127, 127).astype(np.int8)
    dead = rng.random(cols) < 0.6  # pruned input columns
    w[:, dead] = 0
    runs = rng.random((rows, cols)) < 0.5  # runs of one value along a row
    for r in range(1, cols):
        w[:, r] = np.where(runs[:, r], w[:, r - 1], w[:, r])
    return w


def model_with(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.INT8, list(weight.shape))],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_dict_rans_wins_on_correlated_weights_and_round_trips_exactly():
    model = model_with(row_structured_int8())
    with without_dict_bins():
        data, stats = pack_model(model)
    back, info = unpack_container(data, verify=True)
    assert back.SerializeToString() == model.SerializeToString() and info["verified"]
    container = fmt.read_container(data)
    assert container.version == (1, 4)
    tensor = next(t for t in stats["tensors"] if t["name"] == "w")
    assert tensor["encoding"] == "dict-rans"
    # Smaller than every Huffman layout the packer measured for the same bytes.
    huffman = [c["bytes"] for name, c in tensor["candidates"].items() if name in ("dict", "sparse")]
    assert huffman and tensor["bytes_after"] < min(huffman)


def test_without_a_win_the_container_stays_at_its_old_version():
    # Uncorrelated values: the Huffman layouts win and nothing needs format 1.4.
    w = np.random.default_rng(3).integers(-8, 8, (64, 64)).astype(np.int8)
    data, stats = pack_model(model_with(w))
    container = fmt.read_container(data)
    assert container.version < (1, 4)
    assert all(t["encoding"] != "dict-rans" for t in stats["tensors"])


def test_a_dict_rans_section_in_an_older_container_is_refused():
    with without_dict_bins():
        data, _ = pack_model(model_with(row_structured_int8()))
    header = bytearray(data[: fmt.HEADER_BYTES])
    struct.pack_into("<H", header, 10, 3)  # minor version 1.3: before dict-rans existed
    with pytest.raises(CorruptData):
        fmt.read_container(bytes(header) + data[fmt.HEADER_BYTES :], verify_checksums=False)


def payload() -> bytes:
    with without_dict_bins():
        encoded = encode_tensor_data(row_structured_int8(100, 400, seed=1).tobytes(), 1)
    assert encoded.codec == dict_rans.ID
    return encoded.payload


PAYLOAD = payload()


def test_payload_decodes_to_the_elements():
    w = row_structured_int8(100, 400, seed=1)
    out = registry.get(dict_rans.ID).decode(PAYLOAD, w.size, 1, "w", None)
    assert np.asarray(out).tobytes() == w.tobytes()


@settings(max_examples=150, deadline=None)
@given(
    position=st.integers(0, len(PAYLOAD) - 1),
    value=st.integers(0, 255),
    cut=st.integers(0, len(PAYLOAD)),
    mode=st.sampled_from(["flip", "truncate", "extend"]),
)
def test_hostile_payloads_raise_corrupt_data_only(position, value, cut, mode):
    if mode == "flip":
        data = bytearray(PAYLOAD)
        data[position] ^= value or 1
        data = bytes(data)
    elif mode == "truncate":
        data = PAYLOAD[:cut]
    else:
        data = PAYLOAD + bytes([value])
    size = 100 * 400
    try:
        out = registry.get(dict_rans.ID).decode(data, size, 1, "w", None)
    except CorruptData:
        return
    assert np.asarray(out).nbytes == size  # a flip the stream cannot detect still decodes to the declared size
