"""dict-bins (codec 23): the binarised, magnitude-context rANS stream (codec.bins) round trips
exactly, the packer picks it where it is smaller, version 1.7, and hostile payloads are refused
with CorruptData only."""

from __future__ import annotations

import struct

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from compressor.codec import ByteReader, CorruptData, bins
from compressor.container import format as fmt
from compressor.container import pack_model, unpack_container
from compressor.container.coders import dict_bins, encode_tensor_data


def depthwise_int8(channels: int = 256, k: int = 5, seed: int = 0) -> np.ndarray:
    """Int8 kernels whose spread varies from channel to channel by a factor of 100 and whose taps
    share a sign: the previous weight's magnitude and sign tell about the next one."""
    rng = np.random.default_rng(seed)
    scale = 10 ** rng.uniform(-1, 1.3, (channels, 1, 1, 1))
    sign = np.where(rng.random((channels, 1, 1, 1)) < 0.5, -1, 1)
    w = sign * np.abs(rng.laplace(0, 1, (channels, 1, k, k))) * scale
    return np.round(w).clip(-127, 127).astype(np.int8)


def model_with(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(weight.dtype), list(weight.shape))],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def laplace_symbols(n: int, alphabet: int, seed: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    centre = alphabet // 3
    s = np.round(rng.laplace(0, max(alphabet / 10, 0.3), n)).astype(np.int64) + centre
    return np.clip(s, 0, alphabet - 1), centre


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 3000),
    alphabet=st.integers(2, 300),
    seed=st.integers(0, 2**32 - 1),
    centre_at=st.floats(0, 1),
)
def test_roundtrip_of_arbitrary_streams(count, alphabet, seed, centre_at):
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, alphabet, count) if seed % 2 else laplace_symbols(count, alphabet, seed)[0]
    centre = min(int(centre_at * alphabet), alphabet - 1)
    data = bins.encode(symbols, alphabet, centre)
    assert np.array_equal(bins.decode(data, count, alphabet), symbols)


def test_many_lanes_round_trip_through_the_numpy_decoder():
    symbols, centre = laplace_symbols(600_000, 255, 1)
    plan = bins.plan(symbols, 255, centre)
    assert -(-symbols.size // plan.lane_symbols) > 32  # past the scalar path
    data = bins.encode_with(symbols, plan)
    assert np.array_equal(bins.decode(data, symbols.size, 255), symbols)
    assert abs(len(data) - plan.estimated_bytes) <= 0.002 * len(data)  # the estimate the packer compares


def test_the_magnitude_context_codes_a_correlated_stream_below_its_zero_order_entropy():
    w = depthwise_int8().ravel().astype(np.int64)
    values, symbols = np.unique(w, return_inverse=True)
    counts = np.bincount(symbols)
    entropy_bytes = -(counts * np.log2(counts / symbols.size)).sum() / 8
    centre = int(np.argmax(counts))
    plan = bins.plan(symbols, values.size, centre)
    assert plan.classes > 1 or plan.signs > 1
    assert len(bins.encode_with(symbols, plan)) < 0.95 * entropy_bytes


def test_tables_keep_every_symbol_and_sum_to_the_precision():
    shape = bins.Shape(37, 11)
    params = np.random.default_rng(2).integers(1, 256, shape.parameter_count(3, 3))
    freq = bins.tables(shape, params, 3, 3, bins.PRECISION)
    assert freq.shape == (9, 37)
    assert np.all(freq >= 1) and np.all(freq.sum(axis=1) == 1 << bins.PRECISION)


def test_dict_bins_wins_on_depthwise_kernels_and_round_trips_exactly():
    model = model_with(depthwise_int8())
    data, stats = pack_model(model)
    back, info = unpack_container(data, verify=True)
    assert back.SerializeToString() == model.SerializeToString() and info["verified"]
    assert fmt.read_container(data).version == (1, 7)
    tensor = next(t for t in stats["tensors"] if t["name"] == "w")
    assert tensor["encoding"] == "dict-bins"
    others = [c["bytes"] for name, c in tensor["candidates"].items() if name != "dict-bins"]
    assert others and tensor["bytes_after"] < min(others)


def test_float_codebooks_are_ordered_by_value_and_round_trip():
    # k-means centroids as float32, negatives included: the sign-magnitude order puts them in line.
    rng = np.random.default_rng(5)
    centroids = np.sort(rng.normal(0, 0.05, 24)).astype(np.float32)
    centroids[np.argmin(np.abs(centroids))] = -0.0  # a signed zero keeps its bits
    w = centroids[np.clip(np.round(rng.laplace(12, 2, (64, 32, 3, 3))).astype(int), 0, 23)]
    encoded = encode_tensor_data(w.tobytes(), 4)
    decoded = dict_bins.decode(encoded.payload, w.nbytes, 4, "test") if encoded.codec == dict_bins.ID else None
    if decoded is not None:
        assert decoded.tobytes() == w.tobytes()
    model = model_with(w)
    data, _ = pack_model(model)
    assert unpack_container(data, verify=True)[0].SerializeToString() == model.SerializeToString()


def test_a_dict_bins_section_in_an_older_container_is_refused():
    data, _ = pack_model(model_with(depthwise_int8()))
    header = bytearray(data[: fmt.HEADER_BYTES])
    struct.pack_into("<H", header, 10, 6)  # minor version 1.6: before dict-bins existed
    with pytest.raises(CorruptData):
        fmt.read_container(bytes(header) + data[fmt.HEADER_BYTES :], verify_checksums=False)


def sample_stream() -> tuple[bytes, np.ndarray]:
    symbols, centre = laplace_symbols(3000, 20, 7)
    return bins.encode(symbols, 20, centre), symbols


def decode_or_corrupt(data: bytes, count: int, alphabet: int = 20):
    try:
        return bins.decode(data, count, alphabet)
    except CorruptData:
        return None


def test_header_mismatches_and_truncations_raise_corrupt_data():
    data, symbols = sample_stream()
    with pytest.raises(CorruptData, match="symbols declared"):
        bins.decode(data, symbols.size + 1, 20)
    with pytest.raises(CorruptData, match="alphabet"):
        bins.decode(data, symbols.size, 21)
    with pytest.raises(CorruptData, match="unexpected bytes"):
        bins.decode(data + b"\0", symbols.size, 20)
    for cut in range(len(data)):
        with pytest.raises(CorruptData):
            bins.decode(data[:cut], symbols.size, 20)


def test_lying_header_fields_raise_corrupt_data():
    data, symbols = sample_stream()
    fields = list(bins.HEADER.unpack_from(data))
    body = data[bins.HEADER.size :]
    # centre, precision, classes, signs, reserved, lane_symbols: each out of range
    for index, value in ((2, 20), (3, 9), (3, 15), (4, 0), (4, 9), (5, 2), (6, 1), (7, 0), (7, 3001)):
        bad = list(fields)
        bad[index] = value
        assert decode_or_corrupt(bins.HEADER.pack(*bad) + body, symbols.size) is None
    zero_probability = bytearray(data)
    zero_probability[bins.HEADER.size] = 0
    with pytest.raises(CorruptData, match="probability of 0"):
        bins.decode(bytes(zero_probability), symbols.size, 20)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_bytes_raise_corrupt_data_or_decode_something(draw):
    data, symbols = sample_stream()
    buffer = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        position = draw.draw(st.integers(0, len(buffer) - 1))
        buffer[position] = draw.draw(st.integers(0, 255))
    out = decode_or_corrupt(bytes(buffer), symbols.size)
    if out is not None:  # a flip can land where no check sees it; the output is still well formed
        assert out.shape == symbols.shape and int(out.max()) < 20


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 5000), st.integers(1, 300))
def test_random_bytes_raise_corrupt_data_only(blob, count, alphabet):
    try:
        bins.decode(blob, count, alphabet)
    except CorruptData:
        pass


def test_a_corrupt_section_is_refused_with_one_error():
    encoded = encode_tensor_data(depthwise_int8().tobytes(), 1)
    assert encoded.codec == dict_bins.ID
    payload = bytearray(encoded.payload)
    payload[-3] ^= 0x5A  # inside the words: the lanes no longer end in their initial state
    with pytest.raises(CorruptData):
        dict_bins.decode(bytes(payload), depthwise_int8().nbytes, 1, "section 2 (tensor, dict-bins)")
    assert dict_bins.details(encoded.payload)["codebook_size"] > 2
    assert dict_bins.details(b"\x01") == {}


def test_describe_reads_the_header():
    data, symbols = sample_stream()
    info = bins.describe(ByteReader(data, "t"))
    assert info["symbols"] == symbols.size and 1 <= info["classes"] <= bins.MAX_CLASSES
