"""ecq_sorted: rate-distortion rounding on value buckets gives exactly ecq.rdo_levels's levels."""

from __future__ import annotations

import numpy as np
import pytest

from compressor import ecq
from compressor.ecq_sorted import BUCKETS, value_buckets


def direct_levels(w, step, rd_factor, max_level=ecq.MAX_LEVEL, iterations=ecq.RD_ITERATIONS):
    """rdo_levels value by value (the bucket path off whatever the size)."""
    old = ecq.SORTED_MIN
    ecq.SORTED_MIN = 1 << 62
    try:
        return ecq.rdo_levels(w, step, rd_factor, iterations, max_level)
    finally:
        ecq.SORTED_MIN = old


def tensors():
    rng = np.random.default_rng(3)
    normal = (rng.standard_normal(20000) * 0.02).astype(np.float32)
    pruned = normal.copy()
    pruned[np.abs(pruned) < 0.01] = 0
    on_grid = (np.round(normal * 400) / 400).astype(np.float32)  # values exactly on (half-)levels: ties
    laplace = rng.laplace(scale=0.01, size=(50, 400)).astype(np.float64)
    few = np.repeat(np.array([-0.5, 0.0, 0.25, 1.0], np.float32), 500)
    return {"normal": normal, "pruned": pruned, "on_grid": on_grid, "laplace": laplace, "few": few}


@pytest.mark.parametrize("name", ["normal", "pruned", "on_grid", "laplace", "few"])
@pytest.mark.parametrize("rd_factor", [0.0, 0.05, 0.5])
def test_bucket_levels_equal_the_direct_rounding(name, rd_factor):
    w = tensors()[name]
    buckets = value_buckets(w.ravel())
    for step in ecq.step_ladder(w, tuple(e / 2 for e in range(-6, 17)))[::3] + [0.0025]:
        expected = direct_levels(w, step, rd_factor)
        got = ecq.rdo_levels(w, step, rd_factor, buckets=buckets)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected), (name, step, int(np.count_nonzero(got != expected)))


def test_bucket_levels_with_a_small_max_level_and_one_pass():
    w = tensors()["normal"]
    buckets = value_buckets(w)
    for step in (0.001, 0.004, 0.02):
        expected = direct_levels(w, step, 0.1, max_level=7, iterations=1)
        assert np.array_equal(ecq.rdo_levels(w, step, 0.1, 1, 7, buckets=buckets), expected)


def test_buckets_hold_their_values_and_zeros_are_bucket_zero():
    w = tensors()["pruned"]
    vb = value_buckets(w)
    assert vb.counts[0] == np.count_nonzero(w == 0) and vb.counts.sum() == w.size
    assert vb.counts.size == BUCKETS and np.all(vb.key[w == 0] == 0) and np.all(vb.key[w != 0] > 0)
    low, high = vb.bounds()
    assert np.all(low[vb.key[w != 0]] <= w[w != 0]) and np.all(w[w != 0] <= high[vb.key[w != 0]])


def test_large_tensors_take_the_bucket_path_and_importance_keeps_the_direct_one(monkeypatch):
    w = tensors()["normal"]
    monkeypatch.setattr(ecq, "SORTED_MIN", 1000)
    calls = []
    real = ecq.value_buckets
    monkeypatch.setattr(ecq, "value_buckets", lambda flat: calls.append(flat.size) or real(flat))
    ecq.uniform_quantize(w, 0.004)
    assert calls == [w.size]
    ecq.uniform_quantize(w, 0.004, importance=np.ones_like(w))
    assert calls == [w.size]


def test_the_step_ladder_of_a_large_tensor_in_chunks_is_the_whole_ones(monkeypatch):
    w = tensors()["pruned"]
    whole = ecq.step_ladder(w)
    monkeypatch.setattr(ecq, "LADDER_CHUNK", 999)
    chunked = ecq.step_ladder(w)
    assert len(chunked) == len(whole) and np.allclose(chunked, whole, rtol=1e-12, atol=0)
    assert ecq.step_ladder(np.zeros(5000, np.float32)) == []


@pytest.mark.parametrize("name", ["normal", "pruned", "on_grid", "laplace"])
def test_uniform_values_are_uniform_quantizes_values(name):
    w = tensors()[name]
    buckets = value_buckets(w.ravel())
    for step in ecq.step_ladder(w)[::4]:
        expected = ecq.uniform_quantize(w, step, 0.05).values
        got = ecq.uniform_values(w, step, 0.05, buckets)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected) and np.array_equal(np.signbit(got), np.signbit(expected))
        assert np.array_equal(ecq.uniform_values(w, step, 0.05), expected)  # small: the direct path


def test_share_stats_count_the_used_levels_as_unique_does():
    from compressor.passes.share import _used_levels

    rng = np.random.default_rng(0)
    for levels in (rng.integers(-127, 128, 1000), rng.integers(-3, 1, 50), np.zeros(4), np.array([-(1 << 20), 0, 5])):
        levels = levels.astype(np.int64)
        expected = np.unique(levels[levels != 0])
        got = _used_levels(levels)
        assert np.array_equal(got, expected) and got.dtype == expected.dtype
