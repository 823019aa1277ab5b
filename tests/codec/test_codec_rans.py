"""Context-modelled rANS: round trips, determinism, sizes against the entropy, hostile streams."""

import functools
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.codec import ByteReader, CorruptData, huffman, rans


def roundtrip(symbols, alphabet, **options) -> bytes:
    symbols = np.asarray(symbols, dtype=np.int64)
    data = rans.encode(symbols, alphabet, **options)
    reader = ByteReader(data, "test")
    decoded = rans.decode(reader, symbols.size, alphabet)
    reader.expect_end()
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, symbols)
    np.testing.assert_array_equal(rans.decode(data, symbols.size, alphabet), symbols)  # bytes-like too
    return data


@st.composite
def streams(draw):
    alphabet = draw(st.sampled_from([1, 2, 3, 5, 16, 255, 256, 4099, 1 << 15]))
    kind = draw(st.sampled_from(["any", "runs", "skewed"]))
    count = draw(st.integers(0, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "any":
        symbols = rng.integers(0, alphabet, count)
    elif kind == "runs":
        values = rng.integers(0, alphabet, max(count // 50, 1))
        symbols = np.repeat(values, rng.integers(1, 100, values.size))[:count]
    else:
        symbols = np.minimum(rng.geometric(0.6, count) - 1, alphabet - 1)
    lane_symbols = draw(st.one_of(st.none(), st.integers(1, 700)))
    return symbols, alphabet, lane_symbols


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_roundtrip_of_arbitrary_streams(case):
    symbols, alphabet, lane_symbols = case
    data = roundtrip(symbols, alphabet, lane_symbols=lane_symbols)
    assert rans.encode(symbols, alphabet, lane_symbols=lane_symbols) == data, "encoding must be deterministic"


@pytest.mark.parametrize(
    "symbols, alphabet",
    [
        ([], 1),
        ([], 300),
        ([0], 1),
        ([7], 8),
        ([3] * 5000, 4),
        ([0, 1], 2),
        (list(range(1 << 15)), 1 << 15),  # the full alphabet, once each
        (np.repeat([0, 5, 0, 9], [3000, 1, 7000, 2]), 10),  # long runs
    ],
)
def test_roundtrip_of_edge_streams(symbols, alphabet):
    roundtrip(symbols, alphabet)


@pytest.mark.parametrize("contexts", [1, 2, 3, 5])
@pytest.mark.parametrize("precision", [3, 8, 12, 16])
def test_every_context_count_and_precision_round_trips(contexts, precision):
    rng = np.random.default_rng(contexts * 100 + precision)
    symbols = np.minimum(rng.geometric(0.5, 20_000) - 1, 5)
    roundtrip(symbols, 6, contexts=contexts, precision=precision)


def test_describe_reads_the_header():
    symbols = np.tile([0, 1, 1, 2], 5000)
    header = rans.describe(rans.encode(symbols, 3, contexts=2, precision=10, lane_symbols=3000))
    assert header == {
        "symbols": 20000,
        "alphabet": 3,
        "precision": 10,
        "contexts": 2,
        "lane_symbols": 3000,
        "lanes": 7,
    }
    assert rans.describe(rans.encode(np.zeros(5, np.int64), 3))["precision"] == 0


def test_the_plan_estimates_the_size_and_encode_with_follows_it():
    rng = np.random.default_rng(8)
    for alphabet, count in ((5, 40_000), (300, 200_000), (3, 100)):
        symbols = np.minimum(rng.geometric(0.3, count) - 1, alphabet - 1)
        symbols[1::2] = symbols[0::2][: symbols[1::2].size]
        chosen = rans.plan(symbols, alphabet)
        data = rans.encode_with(symbols, chosen)
        assert data == rans.encode(symbols, alphabet)
        lanes = -(-count // chosen.lane_symbols)
        assert abs(len(data) - chosen.estimated_bytes) <= lanes + 2
        assert rans.estimated_size(symbols, alphabet) == chosen.estimated_bytes
        assert rans.describe(data)["contexts"] == chosen.contexts
    constant = rans.plan(np.full(7, 2), 3)
    assert constant.estimated_bytes == len(rans.encode_with(np.full(7, 2), constant))


def test_constant_and_empty_streams_have_no_payload():
    assert len(rans.encode(np.zeros(10**6, np.int64), 3)) == rans.HEADER_BYTES + 4
    assert len(rans.encode(np.zeros(0, np.int64), 3)) == rans.HEADER_BYTES + 4


def test_zero_order_stream_is_near_the_entropy_bound():
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.15, 200_000) - 1, 63)
    data = roundtrip(symbols, 64)
    bound = huffman.entropy_bits(np.bincount(symbols, minlength=64)) / 8
    assert bound <= len(data) <= 1.01 * bound
    assert len(data) < len(huffman.encode(symbols, 64))


def test_contexts_code_a_correlated_stream_below_its_zero_order_entropy():
    # A Markov chain that mostly repeats its last symbol: zero-order entropy log2(4) bits.
    rng = np.random.default_rng(3)
    jumps = rng.random(100_000) < 0.1
    symbols = np.cumsum(jumps * rng.integers(1, 4, jumps.size)) % 4
    data = roundtrip(symbols, 4)
    bound = huffman.entropy_bits(np.bincount(symbols, minlength=4)) / 8
    assert len(data) < 0.4 * bound


def test_a_used_symbol_may_be_absent_from_a_context():
    # Symbol 2 only ever follows symbol 1: other contexts give it frequency 0.
    symbols = np.tile([0, 0, 1, 2, 0, 1, 0, 0], 2000)
    roundtrip(symbols, 3, contexts=3)
    roundtrip(symbols, 3, contexts=3, lane_symbols=5)  # lanes start (in context 0) inside the pattern


def test_normalized_frequencies_sum_to_the_total_and_keep_every_symbol():
    rng = np.random.default_rng(5)
    for _ in range(50):
        counts = rng.integers(0, 1000, size=(3, int(rng.integers(2, 200)))) * (rng.random((3, 1)) < 0.9)
        counts[:, 0] += rng.integers(0, 2**40, size=3)  # very skewed rows
        total = 1 << 12 if counts.shape[1] <= 1 << 12 else 1 << 16
        freq = rans.normalize_counts(counts, total)
        assert np.all(freq.sum(axis=1) == total)
        assert np.all(
            (freq > 0) == (counts > 0) | ((counts.sum(axis=1, keepdims=True) == 0) & (np.arange(counts.shape[1]) == 0))
        )


def test_encode_rejects_symbols_outside_the_alphabet():
    with pytest.raises(ValueError):
        rans.encode(np.array([0, 3]), 3)
    with pytest.raises(ValueError):
        rans.encode(np.array([0, -1]), 3)
    with pytest.raises(ValueError):
        rans.encode(np.array([0]), (1 << 15) + 1)


# ------------------------------------------------------------------ hostile input


@functools.cache
def sample_stream() -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(11)
    symbols = np.minimum(rng.geometric(0.3, 1500) - 1, 9)
    symbols[1::3] = symbols[0::3]
    return rans.encode(symbols, 10, lane_symbols=350), symbols


def decode_or_corrupt(data: bytes, count: int, alphabet: int = 10):
    try:
        reader = ByteReader(data, "test")
        out = rans.decode(reader, count, alphabet)
        reader.expect_end()
        return out
    except CorruptData:
        return None


def test_header_mismatches_raise_corrupt_data():
    data, symbols = sample_stream()
    with pytest.raises(CorruptData, match="symbols declared"):
        rans.decode(data, symbols.size + 1, 10)
    with pytest.raises(CorruptData, match="alphabet"):
        rans.decode(data, symbols.size, 11)
    with pytest.raises(CorruptData, match="unexpected bytes"):
        rans.decode(data + b"\0", symbols.size, 10)


def test_every_truncation_raises_corrupt_data():
    data, symbols = sample_stream()
    for cut in range(len(data)):
        with pytest.raises(CorruptData):
            rans.decode(data[:cut], symbols.size, 10)


def test_lying_lane_sizes_and_counts_raise_corrupt_data():
    data, symbols = sample_stream()
    count, alphabet, bits, contexts, _, _ = struct.unpack_from("<QIBBHI", data)
    for lane_symbols in (0, 1, 349, 351, count, count + 1, 2**32 - 1):
        header = struct.pack("<QIBBHI", count, alphabet, bits, contexts, 0, lane_symbols)
        assert decode_or_corrupt(header + data[rans.HEADER_BYTES :], count) is None
    for bits2, contexts2 in ((0, contexts), (17, contexts), (bits, 0), (bits, 11), (bits, 17)):
        header = struct.pack("<QIBBHI", count, alphabet, bits2, contexts2, 0, 350)
        assert decode_or_corrupt(header + data[rans.HEADER_BYTES :], count) is None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_bytes_raise_corrupt_data_or_decode_something(draw):
    data, symbols = sample_stream()
    buffer = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        position = draw.draw(st.integers(0, len(buffer) - 1))
        buffer[position] = draw.draw(st.integers(0, 255))
    out = decode_or_corrupt(bytes(buffer), symbols.size)
    if out is not None:  # a flip can land in a spot the checks cannot see; it must still be well formed
        assert out.shape == symbols.shape and int(out.max()) < 10


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 5000), st.integers(1, 300))
def test_random_bytes_raise_corrupt_data_only(blob, count, alphabet):
    try:
        rans.decode(blob, count, alphabet)
    except CorruptData:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.integers(1, 5000))
def test_plausible_headers_with_random_bodies_raise_corrupt_data_only(body, count):
    rng = np.random.default_rng(count)
    header = struct.pack(
        "<QIBBHI", count, 10, int(rng.integers(1, 17)), int(rng.integers(1, 5)), 0, int(rng.integers(1, count + 1))
    )
    try:
        rans.decode(header + body, count, 10)
    except CorruptData:
        pass


def decode_with(monkeypatch, scalar_lanes: int, data: bytes, count: int, alphabet: int):
    monkeypatch.setattr(rans, "SCALAR_LANES", scalar_lanes)
    try:
        return rans.decode(data, count, alphabet)
    except CorruptData as e:
        return str(e)


def test_scalar_and_numpy_coders_agree_also_on_corrupt_data(monkeypatch):
    rng = np.random.default_rng(13)
    for trial in range(40):
        alphabet = int(rng.integers(2, 40))
        count = int(rng.integers(1, 3000))
        symbols = np.minimum(rng.geometric(0.3, count) - 1, alphabet - 1)
        lane_symbols = int(rng.integers(1, count + 1))
        monkeypatch.setattr(rans, "SCALAR_LANES", 0)
        data = bytearray(rans.encode(symbols, alphabet, lane_symbols=lane_symbols))
        monkeypatch.setattr(rans, "SCALAR_LANES", 10**9)
        assert rans.encode(symbols, alphabet, lane_symbols=lane_symbols) == data
        if trial % 2:  # corrupt a byte after the header
            position = int(rng.integers(min(rans.HEADER_BYTES, len(data) - 1), len(data)))
            data[position] ^= int(rng.integers(1, 256))
        scalar = decode_with(monkeypatch, 10**9, bytes(data), count, alphabet)
        vector = decode_with(monkeypatch, 0, bytes(data), count, alphabet)
        if isinstance(scalar, str) or isinstance(vector, str):
            assert isinstance(scalar, str) and isinstance(vector, str), (scalar, vector)
        else:
            np.testing.assert_array_equal(scalar, vector)
            if trial % 2 == 0:
                np.testing.assert_array_equal(scalar, symbols)


def test_bit_lengths_are_pythons_for_every_frequency_below_2_to_the_20():
    from compressor.codec.rans import _bit_length

    values = np.arange(1 << 20)
    assert np.array_equal(_bit_length(values), [int(v).bit_length() for v in values])
