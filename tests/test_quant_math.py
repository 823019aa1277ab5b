"""quant_math: scales, zero points, rounding, codebooks, calibration statistics (pure numpy;
ONNX Runtime only as the oracle for QuantizeLinear's rounding)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compressor import quant_math as qm


def ort_quantize(x: np.ndarray, scale: float, zp: int, dtype: str) -> np.ndarray:
    from compressor.evaluate import make_session

    zp_arr = np.asarray(zp, dtype=dtype)
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(zp_arr.dtype), [x.size])],
        [numpy_helper.from_array(np.asarray(scale, dtype=np.float32), "s"), numpy_helper.from_array(zp_arr, "z")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return make_session(m).run(None, {"x": x.astype(np.float32)})[0]


def test_qrange():
    assert qm.qrange("int8") == (-128, 127)
    assert qm.qrange("int8", symmetric=True) == (-127, 127)
    assert qm.qrange("uint8") == (0, 255)
    assert qm.qrange("uint8", symmetric=True) == (1, 255)
    with pytest.raises(ValueError):
        qm.qrange("float32")


def test_rounding_matches_quantizelinear_half_to_even():
    scale = 0.5
    # exact halves: 0.25/0.5 = 0.5 -> 0, 0.75/0.5 = 1.5 -> 2, -0.25 -> -0, -0.75 -> -2
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 0.0, 63.9, -70.0, 1000.0], dtype=np.float32)
    for dtype, zp in (("uint8", 128), ("int8", 0), ("int8", -3)):
        qmin, qmax = qm.qrange(dtype)
        mine = qm.quantize_values(x, scale, zp, qmin, qmax)
        np.testing.assert_array_equal(mine, ort_quantize(x, scale, zp, dtype).astype(np.int64))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=40),
    st.floats(1e-3, 10.0),
    st.integers(0, 255),
)
def test_rounding_matches_ort_property(values, scale, zp):
    x = np.asarray(values, dtype=np.float32)
    scale = float(np.float32(scale))
    mine = qm.quantize_values(x, scale, zp, 0, 255)
    np.testing.assert_array_equal(mine, ort_quantize(x, scale, zp, "uint8").astype(np.int64))


@settings(max_examples=80, deadline=None)
@given(st.floats(-50, 0), st.floats(0, 50), st.sampled_from(["uint8", "int8"]), st.booleans())
def test_zero_is_exact_and_range_covered(rmin, rmax, dtype, symmetric):
    qmin, qmax = qm.qrange(dtype, symmetric)
    scale, zp = qm.scale_zero_point(rmin, rmax, qmin, qmax, symmetric)
    assert scale > 0 and qmin <= zp <= qmax
    assert qm.dequantize_values(qm.quantize_values(np.zeros(3), scale, zp, qmin, qmax), scale, zp)[0] == 0.0
    ends = np.array([rmin, rmax], dtype=np.float32)
    back = qm.dequantize_values(qm.quantize_values(ends, scale, zp, qmin, qmax), scale, zp)
    # within half a level, or one level when the zero point moved to give a tiny side a level
    assert np.all(np.abs(back - ends) <= float(scale) + 1e-5 * max(1.0, abs(rmin), abs(rmax)))


def test_scale_zero_point_edge_cases():
    s, z = qm.scale_zero_point(0.0, 0.0, 0, 255, False)
    assert float(s) == 1.0 and int(z) == 0
    s, z = qm.scale_zero_point(0.0, 2.55, 0, 255, False)  # non-negative: zero point at the bottom
    assert int(z) == 0 and np.isclose(float(s), 0.01)
    s, z = qm.scale_zero_point(-1.0, 3.0, -128, 127, False)
    assert int(z) == round(-128 + 1.0 / float(s))
    s, z = qm.scale_zero_point(np.array([-1.0, 0.0]), np.array([0.5, 0.0]), -127, 127, True)
    np.testing.assert_allclose(s, [1.0 / 127, 1.0])
    np.testing.assert_array_equal(z, [0, 0])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.booleans(), st.sampled_from([None, 0, 1]))
def test_quantize_array_keeps_zeros_and_nonzeros(seed, symmetric, axis):
    rng = np.random.default_rng(seed)
    w = rng.laplace(0, 0.05, (8, 16)).astype(np.float32)
    w[rng.random(w.shape) < 0.4] = 0.0  # pruned
    w[0, :3] = [1e-7, -1e-7, 3e-6]  # tiny non-zeros
    # ... in channels (row 0 and columns 0-2) that also hold normal weights, so that their
    # scales are far above them whatever the pruning left (seed 2053 left a column empty).
    w[0, 3], w[1, :3] = 0.3, [0.2, -0.2, 0.2]
    qmin, qmax = qm.qrange("int8", symmetric)
    qa = qm.quantize_array(w, axis, qmin, qmax, symmetric)
    assert qa.q.min() >= qmin and qa.q.max() <= qmax
    back = qa.dequantize()
    np.testing.assert_array_equal(back[w == 0], 0.0)  # pruned zeros stay zero
    assert np.all(back[w != 0] != 0.0)  # and nothing kept becomes zero
    assert np.all(np.sign(back[w != 0]) == np.sign(w[w != 0]))
    assert qa.clamped_nonzero >= 3
    scale = np.broadcast_to(qm._expand(qa.scale, 2, axis), w.shape)
    normal = (w != 0) & (np.abs(w) >= scale)
    tol = 0.5 if symmetric else 1.0  # asymmetric: the zero point may shift a level to give both signs one
    assert np.all(np.abs(back - w)[normal] <= scale[normal] * tol + 1e-7)


def test_per_channel_scale_per_output_channel():
    w = np.stack([np.linspace(-1, 1, 9), np.linspace(-0.01, 0.01, 9)]).astype(np.float32)
    qa = qm.quantize_array(w, 0, -127, 127, True)
    np.testing.assert_allclose(qa.scale, [1 / 127, 0.01 / 127], rtol=1e-6)
    assert np.abs(qa.q).max() == 127 and np.abs(qa.q[1]).max() == 127


def test_codebook_detection():
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(64, 64)).astype(np.float32)
    assert qm.codebook(dense) is None
    book = np.array([-0.3, -0.1, 0.05, 0.2], dtype=np.float32)
    shared = book[rng.integers(0, 4, size=(64, 64))]
    shared[:5] = 0.0
    values, counts = qm.codebook(shared)
    np.testing.assert_allclose(values, np.sort(book))
    assert counts.sum() == np.count_nonzero(shared)
    assert qm.codebook(np.zeros((4, 4))) is None
    many = rng.choice(rng.normal(size=300), size=10_000)  # 300 values > 256
    assert qm.codebook(many) is None


@pytest.mark.parametrize("k", [4, 16, 32, 100, 127])
def test_codebook_centroids_land_on_distinct_levels(k):
    rng = np.random.default_rng(k)
    # k-means-like centroids: dense near zero, a few large ones, some closer than a level apart
    centroids = np.sort(np.concatenate([rng.laplace(0, 0.02, k - 2), [0.31, -0.27]])).astype(np.float32)
    centroids = centroids[centroids != 0]
    w = centroids[rng.integers(0, centroids.size, size=(128, 64))]
    w[rng.random(w.shape) < 0.5] = 0.0
    book = qm.codebook(w)
    assert book is not None
    for qmin, qmax in ((-127, 127), (-64, 64)):
        qa = qm.quantize_codebook(w, qmin, qmax, True, book)
        assert qa.axis is None and qa.scale.shape == ()
        assert qa.symbols <= book[0].size  # never more integer symbols than centroids
        assert qa.symbols + qa.merged_centroids == book[0].size
        np.testing.assert_array_equal(qa.q[w == 0], 0)
        assert np.all(qa.q[w != 0] != 0)
        plain = qm.quantize_array(w, None, qmin, qmax, True)
        plain_merges = book[0].size - np.unique(plain.q[w != 0]).size
        assert qa.merged_centroids <= plain_merges


def test_codebook_separated_centroids_never_merge():
    rng = np.random.default_rng(7)
    for k in (8, 32, 100):
        gaps = rng.uniform(1.0, 3.0, k)  # at least one level (at the min/max scale) apart
        centroids = np.cumsum(gaps) - gaps.sum() / 2
        centroids = (centroids / np.abs(centroids).max()).astype(np.float32)
        centroids = centroids[centroids != 0]
        w = np.repeat(centroids, 3)
        qa = qm.quantize_codebook(w, -127, 127, True, qm.codebook(w))
        assert qa.merged_centroids == 0 and qa.symbols == centroids.size


def test_codebook_scale_search_separates_a_close_pair():
    s0 = 1.0 / 127
    centroids = np.array([-1.0, -0.5, 40.1 * s0, 40.4 * s0, 0.8, 1.0], dtype=np.float32)
    w = np.repeat(centroids, 4)
    plain = qm.quantize_array(w, None, -127, 127, True)
    assert np.unique(plain.q).size == centroids.size - 1  # 40.1 and 40.4 levels round together
    qa = qm.quantize_codebook(w, -127, 127, True, qm.codebook(w))
    assert qa.merged_centroids == 0 and qa.symbols == centroids.size


def test_codebook_with_more_centroids_than_levels_reports_merges():
    centroids = np.linspace(-1, 1, 256).astype(np.float32)
    centroids = centroids[centroids != 0]
    w = np.tile(centroids, 4).reshape(8, -1)
    qa = qm.quantize_codebook(w, -64, 64, True, qm.codebook(w))
    assert qa.symbols <= 128 and qa.merged_centroids == centroids.size - qa.symbols


def test_codebook_asymmetric_keeps_zero():
    vals = np.array([0.1, 0.2, 0.3, 0.9], dtype=np.float32)
    w = np.concatenate([np.repeat(vals, 5), np.zeros(5, np.float32)])
    qa = qm.quantize_codebook(w, -128, 127, False, qm.codebook(w))
    back = qa.dequantize()
    np.testing.assert_array_equal(back[w == 0], 0.0)
    assert qa.merged_centroids == 0 and np.all(back[w != 0] > 0)


# ------------------------------------------------------------------ calibration


def test_range_collector_minmax_and_growth():
    rng = np.random.default_rng(1)
    batches = [rng.normal(0, s, 1000).astype(np.float32) for s in (0.1, 1.0, 10.0, 0.5)]
    c = qm.RangeCollector()
    for b in batches:
        c.update(b)
    allv = np.concatenate(batches)
    assert c.minmax() == (float(allv.min()), float(allv.max()))
    assert c.count == allv.size
    assert c.pos.sum() + c.neg.sum() + c.zeros == allv.size
    assert c.limit >= max(-allv.min(), allv.max())


def test_range_collector_histogram_growth_is_exact():
    # Power-of-two ranges: rebinning by pair merges must equal a direct histogram.
    c = qm.RangeCollector(bins=64)
    a = np.array([0.1, 0.5, 0.99, 1.0], dtype=np.float32)
    c.update(a)  # limit 2
    assert c.limit == 2.0
    b = np.array([3.5, 2.0, 0.26], dtype=np.float32)
    c.update(b)  # limit 4
    assert c.limit == 4.0
    direct = np.bincount(np.minimum((np.concatenate([a, b]) * 64 / 4).astype(int), 63), minlength=64)
    np.testing.assert_array_equal(c.pos, direct)


def test_percentile_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_t(3, 200_000).astype(np.float32)
    c = qm.RangeCollector()
    for chunk in np.array_split(x, 7):
        c.update(chunk)
    lo, hi = c.percentile(99.9)
    ref_lo, ref_hi = np.percentile(x, [0.05, 99.95])
    width = c.limit / c.bins
    assert abs(hi - ref_hi) <= 2 * width and abs(lo - ref_lo) <= 2 * width
    assert c.percentile(100.0) == pytest.approx(c.minmax(), abs=width)


def test_entropy_threshold_clips_heavy_tails_only():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 500_000).astype(np.float32)
    c = qm.RangeCollector()
    c.update(x)
    lo, hi = c.entropy()
    assert 2.0 < hi <= x.max() and -x.min() >= -lo > 2.0
    # exact zeros (a ReLU's half) are represented exactly: they do not drag the threshold down
    r = qm.RangeCollector()
    relu = np.maximum(x, 0)
    r.update(relu)
    assert r.entropy(levels=256)[1] > 3.0
    # a uniform distribution has nothing worth clipping
    u = qm.RangeCollector()
    u.update(rng.uniform(0, 1, 100_000).astype(np.float32))
    assert u.entropy(levels=256)[1] > 0.9


def test_kl_threshold_small_histograms():
    assert qm.kl_threshold(np.zeros(10)) == 10
    assert qm.kl_threshold(np.array([5, 3, 0, 0]), levels=128) == 2


def test_merge_collectors():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 5000), rng.normal(2, 3, 5000)
    ca, cb = qm.RangeCollector(), qm.RangeCollector()
    ca.update(a)
    cb.update(b)
    m = ca.merge(cb)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert m.minmax() == (float(min(a32.min(), b32.min())), float(max(a32.max(), b32.max())))
    assert m.count == 10_000 and m.pos.sum() + m.neg.sum() + m.zeros == 10_000
    both = qm.RangeCollector()
    both.update(np.concatenate([a, b]))
    np.testing.assert_array_equal(m.pos, both.pos)  # power-of-two ranges: merging is exact
    np.testing.assert_array_equal(m.neg, both.neg)


def test_empty_and_nonfinite_batches():
    c = qm.RangeCollector()
    c.update(np.array([], dtype=np.float32))
    assert c.minmax() == (0.0, 0.0) and c.percentile() == (0.0, 0.0)
    c.update(np.array([np.inf, np.nan, 1.0, -2.0], dtype=np.float32))
    assert c.minmax() == (-2.0, 1.0)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(2.0**-100, 2.0**100, allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=50),
    st.integers(1, 22),
)
def test_round_mantissa_up_and_nearest(values, bits):
    x = np.array(values, dtype=np.float32)
    up = qm.round_mantissa(x, bits, up=True)
    near = qm.round_mantissa(x, bits)
    low = np.uint32((1 << (23 - bits)) - 1)
    assert np.all(up.view(np.uint32) & low == 0) and np.all(near.view(np.uint32) & low == 0)
    rel_up = (up.astype(np.float64) - x) / x
    rel_near = np.abs(near.astype(np.float64) - x) / x
    assert np.all(rel_up >= 0) and np.all(rel_up <= 2.0**-bits)
    assert np.all(rel_near <= 2.0 ** -(bits + 1))


def test_round_mantissa_leaves_what_it_cannot_round():
    x = np.array([0.0, -1.5, np.inf, np.nan, np.finfo(np.float32).max], dtype=np.float32)
    out = qm.round_mantissa(x, 7, up=True)
    np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))


def test_per_channel_scales_rounded_up_still_cover_the_range():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 40)).astype(np.float32)
    for symmetric in (True, False):
        exact = qm.quantize_array(w, 0, -127 if symmetric else -128, 127, symmetric)
        rounded = qm.quantize_array(w, 0, -127 if symmetric else -128, 127, symmetric, mantissa_bits=7)
        assert np.all(rounded.scale.view(np.uint32) & np.uint32(0xFFFF) == 0)
        assert np.all(rounded.scale >= exact.scale)
        # Nothing clips: every weight but the tiny ones kept off zero (keep_nonzero) is within half a level.
        levels = np.abs(rounded.dequantize() - w) / rounded.scale[:, None]
        big = np.abs(w) >= rounded.scale[:, None]
        assert np.all(levels[big] <= 0.5 + 1e-4) and np.all(levels <= 1.0 + 1e-4)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**30), 2**30), min_size=1, max_size=40), st.floats(0.5, 2.0**20, allow_nan=False))
def test_coarsen_bias_error_is_within_a_fraction_of_the_output_step(values, output_step):
    q = np.array(values, dtype=np.int64)
    out = qm.coarsen_bias(q, output_step, fraction=16)
    assert np.all(np.abs(out - q) <= output_step / 32)  # at most half of a step <= output_step / 16
    step = 2 ** int(np.floor(np.log2(output_step / 16))) if output_step >= 32 else 1
    assert np.all(out % step == 0)
    assert np.all(np.sign(out) * np.sign(q) >= 0)


def test_coarsen_bias_per_channel_and_degenerate_steps():
    q = np.array([1000, 1000, 1000, -1000])
    out = qm.coarsen_bias(q, np.array([16 * 64, 16, np.inf, np.nan]), fraction=16)
    np.testing.assert_array_equal(out, [1024, 1000, 1000, -1000])  # step 64; then 1 (unchanged) for the rest


def test_range_histograms_count_each_side_as_separate_masks_would():
    # One bincount over both sides gives the counts two masked histograms give, zeros (and -0.0) apart.
    rng = np.random.default_rng(3)
    x = (rng.laplace(size=50_000) * 3).astype(np.float32)
    x[:500], x[500:600] = 0.0, -0.0
    c = qm.RangeCollector(bins=128)
    c.update(x)
    scale = np.float32(128 / c.limit)
    pos, neg = x[x > 0], -x[x < 0]
    expect_pos = np.bincount(np.minimum((pos * scale).astype(np.int64), 127), minlength=128)
    expect_neg = np.bincount(np.minimum((neg * scale).astype(np.int64), 127), minlength=128)
    np.testing.assert_array_equal(c.pos, expect_pos)
    np.testing.assert_array_equal(c.neg, expect_neg)
    assert c.zeros == 600 and c.count == x.size
