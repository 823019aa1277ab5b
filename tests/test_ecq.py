"""ecq: entropy-constrained uniform quantization (pure numpy, no ONNX)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from compressor import ecq
from compressor.quant_math import choose_codebook_scale, codebook, quantize_codebook


def laplacian(n=20000, seed=0, zeros=0.0):
    rng = np.random.default_rng(seed)
    w = rng.laplace(0, 0.05, n).astype(np.float32)
    w[rng.random(n) < zeros] = 0
    return w


finite = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=2, max_side=40),
    elements=st.floats(-4, 4, width=32) | st.just(0.0),
)


@settings(max_examples=60, deadline=None)
@given(finite, st.floats(1e-3, 2.0), st.sampled_from([0.0, 0.1, 0.5]))
def test_values_are_the_step_times_the_levels_and_zeros_stay_zero(w, step, rd):
    u = ecq.uniform_quantize(w, step, rd_factor=rd)
    assert u.values.dtype == w.dtype and u.values.shape == w.shape == u.levels.shape
    assert np.array_equal(u.values, u.levels.astype(np.float32) * np.float32(u.step))
    assert np.all(u.levels[w == 0] == 0)
    assert np.all(np.abs(u.levels) <= ecq.MAX_LEVEL)
    # every level is one of the two around the value, or zero
    x = w.astype(np.float64) / u.step
    lo = np.clip(np.floor(x), -ecq.MAX_LEVEL, ecq.MAX_LEVEL)
    ok = (u.levels == lo) | (u.levels == np.clip(lo + 1, -ecq.MAX_LEVEL, ecq.MAX_LEVEL)) | (u.levels == 0)
    assert ok.all()
    if rd == 0:
        # plain rounding: within half a step wherever the value is inside the grid's range
        inside = np.abs(x) <= ecq.MAX_LEVEL
        assert np.all(np.abs(x - u.levels)[inside] <= 0.5 + 1e-6)


def test_rate_distortion_rounding_trades_a_little_error_for_fewer_bits():
    w = laplacian()
    step = 0.05
    plain = ecq.uniform_quantize(w, step, rd_factor=0.0)
    rdo = ecq.uniform_quantize(w, step, rd_factor=0.3)
    bits_plain, bits_rdo = ecq.entropy_bits(plain.levels), ecq.entropy_bits(rdo.levels)
    err_plain = np.sum((plain.values - w) ** 2)
    err_rdo = np.sum((rdo.values - w) ** 2)
    assert bits_rdo < 0.95 * bits_plain
    assert err_plain < err_rdo
    # the trade is worth it at the quantizer's own slope: the cost J = D + λR went down
    lam = 0.3 * step**2
    assert err_rdo + lam * bits_rdo < err_plain + lam * bits_plain


def test_weights_of_zero_importance_go_to_the_cheapest_level():
    w = laplacian(4000).reshape(40, 100)
    importance = np.ones((1, 100))
    importance[0, :30] = 0.0  # inputs that never vary
    u = ecq.uniform_quantize(w, 0.02, rd_factor=0.1, importance=importance)
    assert np.all(u.levels[:, :30] == 0)
    assert np.count_nonzero(u.levels[:, 30:]) > 0.5 * u.levels[:, 30:].size


def test_entropy_bits():
    assert ecq.entropy_bits(np.array([0, 0, 1, 1])) == pytest.approx(4.0)
    assert ecq.entropy_bits(np.zeros(10, dtype=np.int64)) == 0.0
    assert ecq.entropy_bits(np.array([], dtype=np.int64)) == 0.0


def test_the_step_ladder_grows_and_never_overflows_the_levels():
    w = laplacian(zeros=0.5)
    steps = ecq.step_ladder(w)
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert steps[0] >= ecq.smallest_step(w) * (1 - 1e-12)
    for s in steps:
        assert np.max(np.abs(np.rint(w / s))) <= ecq.MAX_LEVEL
    assert ecq.step_ladder(np.zeros(5)) == []


def test_invalid_steps_are_refused():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ecq.rdo_levels(np.ones(3), bad)


@settings(max_examples=50, deadline=None)
@given(st.floats(1e-4, 10.0), st.lists(st.integers(-60, 60), min_size=1, max_size=30))
def test_grid_step_recovers_a_uniform_grid(step, levels):
    levels = np.array(levels)
    if not np.any(levels):
        return
    values = (levels.astype(np.float32) * np.float32(step)).astype(np.float32)
    found = ecq.grid_step(values)
    assert found is not None
    n = values[values != 0] / found
    assert np.allclose(n, np.rint(n), atol=1e-3)


def test_grid_step_refuses_a_kmeans_codebook():
    assert ecq.grid_step(np.array([0.013, 0.031, -0.05, 0.0777])) is None
    assert ecq.grid_step(np.zeros(3)) is None


def test_quantize_keeps_a_uniform_grid_exactly():
    # share and quantize meet in one grid: the step is the scale, the levels the int8 values
    w = laplacian(5000, zeros=0.6)
    u = ecq.uniform_quantize(w, 0.031, rd_factor=0.2)
    book = codebook(u.values)
    assert book is not None
    for qmin, qmax in ((-127, 127), (-63, 63)):
        scale, zp, _, merges = choose_codebook_scale(*book, qmin, qmax, True)
        assert merges == 0 and zp == 0
        qa = quantize_codebook(u.values, qmin, qmax, True, book)
        assert np.array_equal(qa.dequantize().astype(np.float32), u.values)


def test_rounding_in_blocks_gives_the_whole_array_rounding(monkeypatch):
    rng = np.random.default_rng(5)
    w = rng.laplace(size=(64, 50)).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0
    importance = rng.random(w.shape[1])  # broadcast over the rows
    step = ecq.step_ladder(w)[6]
    whole = ecq.rdo_levels(w, step, 0.3, importance=importance)
    monkeypatch.setattr(ecq, "RDO_BLOCK", 7)
    assert np.array_equal(ecq.rdo_levels(w, step, 0.3, importance=importance), whole)
