"""kmeans' block-by-block passes give what the whole-array numpy calls give, bit for bit."""

import numpy as np
import pytest

from compressor import kmeans


@pytest.mark.parametrize("chunk", [1, 5, 1 << 22])
def test_label_counts_and_sums_match_bincount(monkeypatch, chunk):
    monkeypatch.setattr(kmeans, "HIST_CHUNK", chunk)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 7, size=1000).astype(np.int32)
    weights = rng.laplace(size=1000) * 1e3
    np.testing.assert_array_equal(kmeans.label_counts(labels, 9), np.bincount(labels, minlength=9))
    exact = np.bincount(labels, weights=weights, minlength=9)
    assert kmeans.label_sums(labels, weights, 9).tobytes() == exact.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_share_array_in_blocks_matches_one_block(monkeypatch, dtype):
    rng = np.random.default_rng(3)
    x = rng.laplace(size=(40, 30)).astype(dtype)
    x[rng.random(x.shape) < 0.3] = 0
    whole = kmeans.share_array(x, 16, hist_threshold=100)
    monkeypatch.setattr(kmeans, "HIST_CHUNK", 7)
    parts = kmeans.share_array(x, 16, hist_threshold=100)
    for field in ("values", "labels", "codebook", "centroids", "counts"):
        assert getattr(parts, field).tobytes() == getattr(whole, field).tobytes(), field
    made = kmeans.codebook_values(x, parts.labels.astype(np.int8), parts.codebook)
    assert made.dtype == x.dtype and made.tobytes() == whole.values.tobytes()
