"""quant_math.codebook's distinct values by a probe: exactly np.unique's, or None past max_size."""

import numpy as np
import pytest

from compressor import quant_math as qm


def _unique(x, max_size):
    values, counts = np.unique(x, return_counts=True)
    return None if values.size > max_size else (values, counts)


def _same(found, expected):
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert found[0].dtype == expected[0].dtype
    assert np.array_equal(found[0], expected[0], equal_nan=True)
    assert np.array_equal(found[1], expected[1])


@pytest.mark.parametrize("seed", range(6))
def test_distinct_values_match_numpy_unique(seed):
    rng = np.random.default_rng(seed)
    book = rng.laplace(size=int(rng.integers(1, 300))).astype(np.float32)
    n = int(rng.integers(1, 300_000))
    # mostly a few centroids, with rare tail values the probe cannot see
    p = rng.random(book.size) ** 6
    x = rng.choice(book, size=n, p=p / p.sum())
    _same(qm.distinct_values(x, 256), _unique(x, 256))
    _same(qm.distinct_values(x, 16), _unique(x, 16))
    floats = rng.standard_normal(n).astype(np.float32)  # an ordinary tensor: (nearly) all distinct
    _same(qm.distinct_values(floats, 256), _unique(floats, 256))


def test_distinct_values_with_nan_and_float16():
    x = np.array([1.0, np.nan, 2.0, 1.0, np.nan], np.float32)
    _same(qm.distinct_values(x, 256), _unique(x, 256))
    h = qm.sortable(np.array([0.5, -0.25, 0.5, 0.125] * 1000, np.float16))
    _same(qm.distinct_values(h, 256), _unique(h, 256))


def test_quantize_codebook_symbols_count_the_levels_used():
    rng = np.random.default_rng(3)
    book = np.sort(rng.laplace(size=40)).astype(np.float32)
    x = rng.choice(book, size=(64, 50))
    x[rng.random(x.shape) < 0.3] = 0
    found = qm.codebook(x)
    qa = qm.quantize_codebook(x, -127, 127, True, found)
    assert qa.symbols == np.unique(qa.q[x != 0]).size


def test_quantize_codebook_searches_float32_and_float64_codebooks_alike():
    rng = np.random.default_rng(5)
    book = np.sort(rng.laplace(size=30)).astype(np.float32)
    x = rng.choice(book, size=(50, 40))
    x[rng.random(x.shape) < 0.2] = 0
    values, counts = qm.codebook(x)
    qa = qm.quantize_codebook(x, -127, 127, True, (values, counts))
    scale, zp, levels, _ = qm.choose_codebook_scale(values, counts, -127, 127, True)
    expected = np.full(x.shape, zp, np.int64)
    nz = x != 0
    expected[nz] = levels[np.searchsorted(values, x[nz].astype(np.float64))]
    assert qa.q.dtype == np.int8 and np.array_equal(qa.q, expected)  # kept in the narrow type
    # a codebook with a value float32 cannot hold: searched in float64
    off = values.copy()
    off[0] = np.nextafter(np.float64(off[0]), -np.inf)
    assert qm.quantize_codebook(x, -127, 127, True, (off, counts)).q.shape == x.shape
