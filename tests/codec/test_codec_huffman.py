"""Canonical length-limited Huffman: code lengths, exact sizes, round trips, adversarial streams."""

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.codec import ByteReader, CorruptData, huffman


def unlimited_huffman_cost(counts) -> int:
    """Total bits of an unrestricted Huffman code (textbook heap construction)."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) < 2:
        return 0
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def roundtrip(symbols, alphabet):
    symbols = np.asarray(symbols, dtype=np.int64)
    data = huffman.encode(symbols, alphabet)
    counts = np.bincount(symbols, minlength=alphabet) if symbols.size else np.zeros(alphabet, np.int64)
    assert len(data) == huffman.stream_size(counts, alphabet), "stream_size must be exact"
    reader = ByteReader(data, "test")
    decoded = huffman.decode(reader, symbols.size, alphabet)
    reader.expect_end()
    np.testing.assert_array_equal(decoded, symbols)
    return data


def test_package_merge_matches_huffman_when_the_limit_does_not_bind():
    rng = np.random.default_rng(1)
    for _ in range(20):
        counts = rng.integers(0, 1000, size=int(rng.integers(2, 300)))
        counts[0] = max(counts[0], 1)
        counts[1] = max(counts[1], 1)
        lengths = huffman.code_lengths(counts, max_len=15)
        if unlimited_huffman_cost(counts) and lengths.max() < 15:
            assert int(np.dot(counts, lengths)) == unlimited_huffman_cost(counts)
        assert huffman.kraft_complete(lengths)


def test_lengths_are_limited_and_complete_on_fibonacci_counts():
    # Fibonacci counts make the unrestricted Huffman code as deep as the alphabet is long.
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib, dtype=np.int64)
    lengths = huffman.code_lengths(counts, max_len=15)
    assert lengths.max() == 15
    assert huffman.kraft_complete(lengths)
    # Limiting costs a little against the unrestricted optimum, never less than it.
    assert np.dot(counts, lengths) >= unlimited_huffman_cost(counts)
    roundtrip(np.repeat(np.arange(40), np.minimum(counts, 5000)), 40)


def test_canonical_codes_are_prefix_free_and_ordered():
    lengths = np.array([3, 0, 2, 3, 2, 2], dtype=np.uint8)
    codes = huffman.canonical_codes(lengths)
    words = sorted(format(int(codes[i]), f"0{lengths[i]}b") for i in range(6) if lengths[i])
    assert words == ["00", "01", "10", "110", "111"]
    for a in words:
        assert not any(b != a and b.startswith(a) for b in words)


def test_encoded_stream_is_near_the_entropy_bound():
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.15, 200_000) - 1, 63)
    data = roundtrip(symbols, 64)
    bound = huffman.entropy_bits(np.bincount(symbols, minlength=64)) / 8
    assert bound <= len(data) <= 1.03 * bound


def test_multi_lane_streams_decode_in_order():
    # Many lanes, short last row, a count that is not a multiple of the lane count.
    rng = np.random.default_rng(5)
    for count in (1, 2, 1023, 1024, 1025, 5000, 1_050_001):
        roundtrip(rng.integers(0, 7, count), 7)


def test_decoder_checks_the_expected_count_and_alphabet():
    data = huffman.encode(np.array([0, 1, 1, 2]), 3)
    with pytest.raises(CorruptData):
        huffman.decode(ByteReader(data, "t"), 5, 3)
    with pytest.raises(CorruptData):
        huffman.decode(ByteReader(data, "t"), 4, 4)
    with pytest.raises(CorruptData):
        huffman.decode(ByteReader(data[:-1], "t"), 4, 3)


def test_corrupt_payload_bits_are_caught_by_lane_lengths():
    rng = np.random.default_rng(2)
    symbols = rng.integers(0, 200, 3000)
    data = bytearray(huffman.encode(symbols, 200))
    refused = 0
    for i in range(len(data) - 200, len(data), 5):
        bad = bytearray(data)
        bad[i] ^= 0x5A
        try:
            out = huffman.decode(ByteReader(bytes(bad), "t"), 3000, 200)
        except CorruptData:
            refused += 1
        else:
            assert out.shape == (3000,)
    assert refused > 0


# ------------------------------------------------------------------ hypothesis

ALPHABETS = st.integers(min_value=1, max_value=300)


@st.composite
def adversarial_streams(draw):
    kind = draw(st.sampled_from(["one", "skewed_two", "uniform256", "zero_runs", "empty", "random"]))
    n = draw(st.integers(min_value=0, max_value=5000))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "one":
        alphabet = draw(ALPHABETS)
        return np.full(n, draw(st.integers(0, alphabet - 1))), alphabet
    if kind == "skewed_two":
        p = draw(st.sampled_from([1e-4, 1e-3, 0.01, 0.5]))
        return (rng.random(n) < p).astype(np.int64), 2
    if kind == "uniform256":
        return rng.integers(0, 256, n), 256
    if kind == "zero_runs":
        runs = rng.geometric(draw(st.sampled_from([0.001, 0.05, 0.5])), n) - 1
        return np.minimum(runs, 255), 256
    if kind == "empty":
        return np.zeros(0, dtype=np.int64), draw(ALPHABETS)
    alphabet = draw(ALPHABETS)
    return rng.integers(0, alphabet, n), alphabet


@settings(max_examples=60, deadline=None)
@given(adversarial_streams())
def test_roundtrip_on_adversarial_distributions(stream):
    symbols, alphabet = stream
    roundtrip(symbols, alphabet)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=2, max_size=2000))
def test_lengths_always_limited_and_complete(counts):
    counts = np.array(counts, dtype=np.int64)
    if np.count_nonzero(counts) < 2:
        counts[:2] += 1
    lengths = huffman.code_lengths(counts)
    assert lengths.max() <= huffman.MAX_CODE_LENGTH
    assert huffman.kraft_complete(lengths)
    assert np.all((lengths > 0) == (counts > 0))


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 3000), st.integers(1, 300))
def test_decoding_garbage_never_raises_anything_but_corrupt_data(blob, count, alphabet):
    try:
        out = huffman.decode(ByteReader(blob, "fuzz"), count, alphabet)
    except CorruptData:
        return
    assert out.shape == (count,) and (out.size == 0 or out.max() < alphabet)
