"""compressor.kmeans: 1-D k-means on sorted prefix sums / histograms (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from compressor.kmeans import (
    INITS,
    cast_codebook,
    inertia,
    init_centroids,
    kmeans_1d,
    lloyd,
    share_array,
    smallest_nonzero,
    support_exact,
)


def weights_like(n, seed=0):
    """Trained weights look roughly Laplacian: a dense bulk near 0 and long tails."""
    return np.random.default_rng(seed).laplace(0.0, 0.05, n)


def brute_force_labels(x, c):
    return np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)


def test_matches_sklearn_lloyd_from_the_same_start():
    # sklearn's KMeans is the reference: same initial centroids -> same fixed point.
    from sklearn.cluster import KMeans

    x = weights_like(10_000, seed=1)
    c0 = init_centroids(support_exact(x), 16, "density")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # sklearn's OpenMP threads crawl on a busy machine
        ref = KMeans(16, init=c0.reshape(-1, 1), n_init=1, algorithm="lloyd", tol=0, max_iter=2000).fit(
            x.reshape(-1, 1)
        )
    ours, _ = lloyd(support_exact(x), c0, 16, max_iter=2000, accelerate=False)
    np.testing.assert_allclose(ours, np.sort(ref.cluster_centers_.ravel()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("init", INITS)
def test_result_is_a_lloyd_fixed_point(init):
    x = weights_like(5_000, seed=2)
    c, labels = kmeans_1d(x, 32, init=init, seed=3)
    assert len(c) == 32 and np.all(np.diff(c) > 0)
    assert labels.dtype == np.int32 and labels.shape == x.shape
    # every value goes to its nearest centroid, every centroid is the mean of its cluster
    np.testing.assert_array_equal(labels, brute_force_labels(x, c))
    means = np.bincount(labels, weights=x, minlength=len(c)) / np.bincount(labels, minlength=len(c))
    np.testing.assert_allclose(c, means, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dist", ["laplace", "student_t"])
def test_linear_init_keeps_the_largest_weights_better_than_density(dist):
    # The trade-off documented in compressor/kmeans.py: density crowds centroids in the bulk,
    # linear keeps centroids in the tails, so the largest |w| are reproduced more accurately.
    rng = np.random.default_rng(4)
    x = rng.laplace(0.0, 0.05, 100_000) if dist == "laplace" else 0.05 * rng.standard_t(3, 100_000)
    top = np.abs(x) >= np.quantile(np.abs(x), 0.99)
    err = {}
    for init in ("linear", "density"):
        c, labels = kmeans_1d(x, 32, init=init)
        err[init] = np.sqrt(np.mean((x - c[labels])[top] ** 2))
    assert err["linear"] < 0.85 * err["density"]


def test_at_most_k_distinct_values_are_kept_exactly():
    x = np.repeat([-0.5, 0.1, 0.2, 3.0], [10, 200, 7, 1]).astype(np.float64)
    np.random.default_rng(0).shuffle(x)
    c, labels = kmeans_1d(x, 4)
    np.testing.assert_array_equal(c, [-0.5, 0.1, 0.2, 3.0])
    np.testing.assert_array_equal(c[labels], x)
    # ... and sharing an already shared tensor changes nothing (idempotent)
    again = kmeans_1d(c[labels], 4)[0]
    np.testing.assert_array_equal(again, c)


def test_empty_clusters_are_reseeded_deterministically():
    # Two tight clumps and one outlier: linear init leaves most centroids in the gap.
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(-1, 0.01, 3000), rng.normal(1, 0.01, 3000), [10.0]])
    c, labels = kmeans_1d(x, 8, init="linear")
    assert len(c) == 8  # empties re-seeded by splitting the clusters with the largest SSE
    assert np.all(np.bincount(labels, minlength=8) > 0)
    assert 10.0 in c  # the outlier keeps its own centroid
    c2, labels2 = kmeans_1d(x, 8, init="linear")
    np.testing.assert_array_equal(c, c2)
    np.testing.assert_array_equal(labels, labels2)
    # without re-seeding the empties are dropped
    c3, labels3 = kmeans_1d(x, 8, init="linear", max_reseed=0)
    assert len(c3) < 8 and np.all(np.bincount(labels3, minlength=len(c3)) > 0)


def test_random_init_is_seeded():
    x = weights_like(3_000, seed=6)
    a = kmeans_1d(x, 16, init="random", seed=1)[0]
    b = kmeans_1d(x, 16, init="random", seed=1)[0]
    np.testing.assert_array_equal(a, b)
    c = kmeans_1d(x, 16, init="random", seed=2, max_iter=1)[0]
    assert not np.array_equal(kmeans_1d(x, 16, init="random", seed=1, max_iter=1)[0], c)


def test_histogram_path_assigns_exactly_and_matches_the_exact_path():
    x = weights_like(300_000, seed=7).astype(np.float32)
    exact_c, exact_l = kmeans_1d(x, 32)
    c, labels = kmeans_1d(x, 32, hist_threshold=1_000)  # default: n/4 = 75,000 bins
    assert np.all(np.diff(c) > 0)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(labels, np.searchsorted((c[1:] + c[:-1]) / 2, x64))  # nearest, ties to the left
    # centroids close to their cluster means, and the error as good as the exact path's
    means = np.bincount(labels, weights=x64) / np.bincount(labels)
    np.testing.assert_allclose(c, means, rtol=0, atol=2 * np.ptp(x64) / (1 << 16))  # within 2 bins
    assert inertia(x, c, labels) <= 1.001 * inertia(x, exact_c, exact_l)


def test_histogram_path_detects_few_distinct_values():
    x = np.tile(np.array([-2.0, -0.25, 0.5, 1.0], np.float32), 5_000)
    c, labels = kmeans_1d(x, 8, hist_threshold=100)
    np.testing.assert_array_equal(c, [-2.0, -0.25, 0.5, 1.0])
    np.testing.assert_array_equal(c[labels], x)


def test_edge_cases():
    c, labels = kmeans_1d(np.zeros(0), 4)
    assert c.size == 0 and labels.size == 0
    c, labels = kmeans_1d(np.full(10, 0.3), 4)
    np.testing.assert_array_equal(c, [0.3])
    c, labels = kmeans_1d(np.arange(10.0), 1)
    np.testing.assert_allclose(c, [4.5])
    with pytest.raises(ValueError):
        kmeans_1d(np.array([1.0, np.nan]), 2)
    with pytest.raises(ValueError):
        kmeans_1d(np.arange(3.0), 2, init="kmeans++")


def test_cast_codebook_never_creates_zeros():
    tiny16 = smallest_nonzero(np.float16)
    assert tiny16 == float(np.finfo(np.float16).smallest_subnormal)
    cb = cast_codebook(np.array([-1e-12, 0.0, 1e-12, 0.5]), np.float16)
    assert cb.dtype == np.float16
    np.testing.assert_array_equal(cb.astype(np.float64), [-tiny16, tiny16, tiny16, 0.5])
    assert np.all(cb != 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_share_array_keeps_zeros_dtype_and_bits(dtype):
    rng = np.random.default_rng(8)
    w = rng.laplace(0, 0.05, (64, 80))
    w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0.0  # 90 % pruned
    w[0, :4] = [1e-9, -1e-9, 2e-9, -3e-9]  # would round to zero in float16
    w = w.astype(dtype)
    out = share_array(w, 16, seed=0)
    assert out.values.dtype == dtype and out.values.shape == w.shape
    np.testing.assert_array_equal(out.values == 0, w == 0)
    assert np.unique(out.values[out.values != 0]).size <= 16
    assert np.all(out.labels[w == 0] == -1)
    np.testing.assert_array_equal(out.values[w != 0], out.codebook[out.labels[w != 0]])
    assert np.all(out.codebook != 0)


def test_share_array_float16_cluster_mean_rounding_to_zero_is_nudged():
    tiny = np.float16(np.finfo(np.float16).smallest_subnormal)
    w = np.array([tiny, -tiny, tiny, -tiny, 0, 1, 1, 2, 2], np.float16)
    out = share_array(w, 3)  # {±tiny} has mean 0: must not become a new zero
    np.testing.assert_array_equal(out.values == 0, w == 0)
    assert np.unique(out.values[out.values != 0]).size <= 3


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float64, st.integers(1, 400), elements=st.floats(-100, 100, allow_nan=False, width=32)),
    k=st.integers(1, 40),
    init=st.sampled_from(INITS),
    hist=st.booleans(),
)
def test_invariants(x, k, init, hist):
    c, labels = kmeans_1d(x, k, init=init, seed=0, hist_threshold=10 if hist else 1 << 22, bins=256 if hist else None)
    assert 1 <= len(c) <= k
    assert np.all(np.diff(c) > 0)
    assert labels.shape == x.shape and labels.min() >= 0 and labels.max() < len(c)
    assert np.all(np.bincount(labels, minlength=len(c)) > 0)
    assert c[0] >= x.min() - 1e-9 * (1 + abs(x.min())) and c[-1] <= x.max() + 1e-9 * (1 + abs(x.max()))
    # nearest centroid (up to ties and rounding of the midpoints)
    d_assigned = np.abs(x - c[labels])
    d_best = np.min(np.abs(x[:, None] - c[None, :]), axis=1)
    assert np.all(d_assigned <= d_best + 1e-9 * (1 + np.abs(x)))
    if np.unique(x).size <= k:
        np.testing.assert_array_equal(c[labels], x)


def test_over_relaxed_lloyd_converges_faster_and_usually_better():
    # Different local optima are possible, so compare over several draws.
    plain_total = fast_total = 0.0
    for seed in range(9, 14):
        x = 0.05 * np.random.default_rng(seed).standard_t(3, 50_000)
        plain_c, plain_l, plain_it = kmeans_1d(x, 32, accelerate=False, return_iterations=True)
        fast_c, fast_l, fast_it = kmeans_1d(x, 32, return_iterations=True)
        assert fast_it < plain_it
        plain_total += inertia(x, plain_c, plain_l)
        fast_total += inertia(x, fast_c, fast_l)
    assert fast_total < 0.97 * plain_total


@pytest.mark.parametrize("hist_threshold", [10**9, 1000])
def test_a_shared_support_cache_gives_the_same_clusters_at_every_k(hist_threshold):
    rng = np.random.default_rng(3)
    x = rng.laplace(size=5000)
    x[:300] = 0.25  # a run of equal values
    supports: dict = {}
    for k in (2, 8, 64, 256, 8):
        alone = kmeans_1d(x, k, hist_threshold=hist_threshold, bins=1 << 16)
        cached = kmeans_1d(x, k, hist_threshold=hist_threshold, bins=1 << 16, supports=supports)
        assert np.array_equal(alone[0], cached[0]) and np.array_equal(alone[1], cached[1])
    assert set(supports) == ({"exact"} if hist_threshold > x.size else {"histogram"})
