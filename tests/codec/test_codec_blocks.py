"""Encoders that work block by block (bounded memory on large tensors) write the same bytes
whatever the block size: tiny blocks against one block, and against direct computations."""

import numpy as np
import pytest

from compressor.codec import ByteReader, _sample, huffman, planes, rans, sparse, symbol_counts


def skewed_symbols(rng, count: int, alphabet: int) -> np.ndarray:
    probabilities = rng.dirichlet(np.full(alphabet, 0.3))
    return rng.choice(alphabet, size=count, p=probabilities).astype(np.uint16)


@pytest.mark.parametrize("count", [1, 1023, 1025, 70_001, 1_500_007])
def test_huffman_blocks_give_the_same_bytes(count):
    rng = np.random.default_rng(count)
    symbols = skewed_symbols(rng, count, 37)
    whole = huffman.encode(symbols, 37, block_symbols=1 << 30)
    for block in (1, 1000, 4097) if count < 100_000 else (5000, 1 << 20):
        assert huffman.encode(symbols, 37, block_symbols=block) == whole
    assert huffman.encode(symbols.astype(np.int64), 37) == whole
    reader = ByteReader(whole, "test")
    np.testing.assert_array_equal(huffman.decode(reader, count, 37), symbols)


def test_huffman_refuses_counts_that_do_not_match():
    symbols = np.array([0, 1, 1, 2, 2, 2], dtype=np.uint16)
    with pytest.raises(ValueError):
        huffman.encode(symbols, 3, counts=np.array([3, 2, 1]))


@pytest.mark.parametrize("count", [5_000, 300_001])
def test_rans_blocks_give_the_same_bytes(count):
    rng = np.random.default_rng(count)
    symbols = skewed_symbols(rng, count, 300)
    chosen = rans.plan(symbols, 300)
    whole = rans.encode_with(symbols, chosen, block_symbols=1 << 30)
    for block in (1, 4096, 100_000):
        assert rans.encode_with(symbols, chosen, block_symbols=block) == whole
    reader = ByteReader(whole, "test")
    np.testing.assert_array_equal(rans.decode(reader, count, 300), symbols)


def test_rans_word_buffer_grows_when_the_guess_is_short():
    rng = np.random.default_rng(1)
    symbols = skewed_symbols(rng, 200_000, 40)
    chosen = rans.plan(symbols, 40)
    index_of = np.zeros(40, dtype=np.int32)
    index_of[chosen.used] = np.arange(chosen.used.size)
    args = (symbols, index_of, chosen.context_symbols, chosen.freq, chosen.precision, chosen.lane_symbols)
    short = rans._encode_lanes(*args, 1 << 20, 0)
    roomy = rans._encode_lanes(*args, 1 << 20, 10**6)
    np.testing.assert_array_equal(short[0], roomy[0])
    np.testing.assert_array_equal(short[1], roomy[1])


def test_symbol_counts_match_bincount():
    rng = np.random.default_rng(2)
    symbols = rng.integers(0, 70, 10_001).astype(np.uint16)
    np.testing.assert_array_equal(symbol_counts(symbols, 80, block=7), np.bincount(symbols, minlength=80))
    # a symbol outside the alphabet shows as a longer histogram (the callers refuse it)
    assert symbol_counts(np.array([1, 90]), 80, block=1).size == 91


def reference_entries(positions: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """sparse_entries on the whole array at once (int64)."""
    skips = np.diff(positions.astype(np.int64), prepend=-1) - 1
    top = (1 << width) - 1
    real_index = np.cumsum((skips >> width) + 1) - 1
    gaps = np.full(int(real_index[-1]) + 1, top, dtype=np.uint16)
    gaps[real_index] = skips & top
    return gaps, real_index


def test_sparse_analysis_in_blocks_matches_whole_arrays(monkeypatch):
    monkeypatch.setattr(sparse, "INDEX_BLOCK", 1000)
    rng = np.random.default_rng(3)
    book = rng.integers(1, 2**32, 300, dtype=np.uint64).astype(np.uint32)
    elements = np.where(rng.random(100_000) < 0.2, book[rng.integers(0, 300, 100_000)], 0).astype(np.uint32)
    elements[[0, 99_999]] = book[0]
    elements[100:45_000:7] = book[1]
    elements[20_000:90_000] = 0  # a run longer than any gap width
    positions = sparse.flatnonzero_narrow(elements)
    assert positions.dtype == np.int32
    np.testing.assert_array_equal(positions, np.flatnonzero(elements))
    np.testing.assert_array_equal(
        sparse.flatnonzero_narrow(elements, int(book[1])), np.flatnonzero(elements != book[1])
    )
    gathered = sparse.find_codebook(elements[positions], limit=4095)
    found = sparse.find_codebook(elements, limit=4095, positions=positions)
    for name in ("values", "symbols", "counts"):
        np.testing.assert_array_equal(getattr(found, name), getattr(gathered, name))
    stats = sparse.GapStatistics.of_positions(positions)
    whole = sparse.GapStatistics(sparse.gap_skips(positions))
    for width in range(1, sparse.MAX_GAP_WIDTH + 1):
        assert stats.counts(width)[1] == whole.counts(width)[1]
        np.testing.assert_array_equal(stats.counts(width)[0], whole.counts(width)[0])
        gaps, real = sparse.sparse_entries(positions, width)
        expected_gaps, expected_real = reference_entries(positions, width)
        np.testing.assert_array_equal(gaps, expected_gaps)
        np.testing.assert_array_equal(real, expected_real)


def test_released_sparse_analysis_builds_the_same_layouts():
    rng = np.random.default_rng(4)
    book = rng.integers(1, 2**31, 50, dtype=np.uint64).astype(np.uint32)
    elements = np.where(rng.random(40_000) < 0.3, book[rng.integers(0, 50, 40_000)], 0).astype(np.uint32)
    kept = sparse.analyse(elements)
    released = sparse.analyse(elements)
    released.release_entries(min_bytes=0)
    assert released.positions is None and released.entry_codebook is None
    expected = sparse.sparse_layouts(elements, kept.fill, kept.positions, kept.entry_codebook)
    again = sparse.sparse_layouts(elements, kept.fill, kept.positions, kept.entry_codebook, entries=released.entries)
    assert [layout.builder() for layout in again] == [layout.builder() for layout in expected]
    small = sparse.analyse(elements)
    small.release_entries()  # below RELEASE_BYTES: kept
    assert small.positions is not None


@pytest.mark.parametrize("width", planes.WIDTHS)
def test_planes_sample_is_the_sample_of_the_planes(width):
    data = np.random.default_rng(width).integers(0, 256, 300_000 * width, dtype=np.uint8).tobytes()
    assert planes.planes_sample(data, width) == _sample(planes.to_planes(data, width))
