"""Sparse (relative-index + filler) and codebook layouts: exact sizes, round trips, bit-exactness."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.codec import ByteReader, CorruptData, sparse


def test_fillers_follow_deep_compression():
    # Deep Compression, fig. 2 style: 3-bit gaps, a run of 9 zeros overflows 2**3 - 1 = 7.
    positions = np.array([1, 4, 14, 15])
    gaps, real = sparse.sparse_entries(positions, 3)
    # skips: 1, 2, 9 -> filler (gap 7, lands on index 12) then gap 1, 0
    assert gaps.tolist() == [1, 2, 7, 1, 0]
    assert real.tolist() == [0, 1, 3, 4]
    decoded = sparse.positions_from_gaps(gaps)
    assert decoded[real].tolist() == positions.tolist()
    assert decoded[2] == 12  # the filler entry stands on a zero


def test_gap_statistics_match_explicit_entries():
    rng = np.random.default_rng(0)
    positions = np.flatnonzero(rng.random(200_000) < 0.03)
    positions = np.append(positions, [300_000, 400_000])  # runs longer than any width
    stats = sparse.GapStatistics(sparse.gap_skips(positions))
    for width in range(1, sparse.MAX_GAP_WIDTH + 1):
        counts, fillers = stats.counts(width)
        gaps, real = sparse.sparse_entries(positions, width)
        assert fillers == gaps.size - positions.size
        np.testing.assert_array_equal(counts, np.bincount(gaps, minlength=1 << width))


def test_find_codebook_on_wide_and_narrow_elements():
    rng = np.random.default_rng(3)
    values = rng.choice(np.array([0.5, -1.25, 3.0, -0.0], dtype=np.float32), 10_000).view(np.uint32)
    book = sparse.find_codebook(values)
    assert book.size == 4
    np.testing.assert_array_equal(book.values[book.symbols], values)
    assert sparse.find_codebook(rng.integers(0, 2**31, 10_000).astype(np.uint32), limit=100) is None
    bytes_ = rng.integers(0, 256, 5000).astype(np.uint8)
    book = sparse.find_codebook(bytes_)
    np.testing.assert_array_equal(book.values[book.symbols], bytes_)


def decode(layout, elements, width):
    payload = layout.builder()
    reader = ByteReader(payload, "t")
    if layout.encoding == "dict":
        out = sparse.decode_dict(reader, width, elements.size, "t")
    else:
        out = sparse.decode_sparse(reader, width, elements.size, "t")
    reader.expect_end()
    return payload, out


def layouts_for(elements, fill=0):
    layouts = []
    positions = np.flatnonzero(elements != elements.dtype.type(fill))
    codebook = sparse.find_codebook(elements[positions], limit=sparse.MAX_CODEBOOK - 1) if positions.size else None
    dense = sparse.find_codebook(elements)
    if dense is not None:
        layouts.append(sparse.dict_layout(elements, dense.values, dense.counts, dense.symbols))
        layouts.append(sparse.dict_layout(elements, dense.values, dense.counts))  # symbols looked up lazily
    layouts += sparse.sparse_layouts(elements, fill, positions, codebook)
    return layouts


def check_all_layouts(elements, fill=0):
    for layout in layouts_for(elements, fill):
        payload, out = decode(layout, elements, elements.dtype.itemsize)
        np.testing.assert_array_equal(out, elements)
        if layout.size:  # exact for everything but raw values (measured when built)
            assert len(payload) == layout.size


def test_pruned_shared_float_weights_roundtrip_bit_exactly():
    rng = np.random.default_rng(1)
    w = rng.normal(size=50_000).astype(np.float32)
    w[np.abs(w) < 1.6] = 0
    w[w != 0] = np.round(w[w != 0] * 4) / 4
    w[7] = -0.0  # negative zero is not zero: it must survive as a value
    w[8] = np.float32("nan")
    check_all_layouts(w.view(np.uint32))


def test_sparse_beats_dense_codebook_on_skewed_streams():
    rng = np.random.default_rng(2)
    w = np.where(rng.random(100_000) < 0.05, rng.integers(1, 33, 100_000), 0).astype(np.uint8)
    dense, *_ = layouts_for(w)
    best_sparse = min(
        (lay for lay in layouts_for(w) if lay.encoding == "sparse" and lay.size), key=lambda lay: lay.size
    )
    # Huffman spends >= 1 bit on each zero of the dense stream; positions avoid that.
    dense_overhead = dense.streams[0].as_dict()["overhead_pct"]
    assert dense_overhead > 50
    assert best_sparse.size < 0.8 * dense.size


def test_non_zero_fill_value():
    rng = np.random.default_rng(4)
    q = np.where(rng.random(20_000) < 0.1, rng.integers(0, 256, 20_000), 128).astype(np.uint8)
    check_all_layouts(q, fill=128)


@st.composite
def tensors(draw):
    width = draw(st.sampled_from([1, 2, 4, 8]))
    n = draw(st.integers(min_value=1, max_value=3000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.0, 0.0005, 0.01, 0.1, 0.5, 1.0]))
    distinct = draw(st.sampled_from([1, 2, 32, 256]))
    dtype = sparse.ELEMENT_DTYPES[width]
    book = rng.integers(1, 2 ** min(8 * width, 63), distinct, dtype=np.uint64).astype(dtype)
    values = book[rng.integers(0, distinct, n)]
    values[rng.random(n) >= density] = 0
    if draw(st.booleans()) and n > 10:  # a long run of zeros then a tail value
        values[: n - 1] = 0
    return values


@settings(max_examples=60, deadline=None)
@given(tensors())
def test_layouts_roundtrip_hypothesis(elements):
    check_all_layouts(elements)


def test_sparse_decoder_refuses_positions_past_the_end():
    elements = np.zeros(1000, dtype=np.uint8)
    elements[[10, 500, 999]] = 3
    (layout,) = [
        lay for lay in layouts_for(elements) if lay.encoding == "sparse" and lay.params["values"] == "codebook"
    ]
    payload = layout.builder()
    with pytest.raises(CorruptData):
        sparse.decode_sparse(ByteReader(payload, "t"), 1, 500, "t")
    with pytest.raises(CorruptData):
        sparse.decode_sparse(ByteReader(payload, "t"), 2, 1000, "t")
