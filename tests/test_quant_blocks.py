"""quant_math's whole-tensor passes in blocks of rows give what one pass gives, in a narrow type."""

import numpy as np
import pytest

from compressor import quant_math as qm


def _reference_quantize(x, scale, zp, qmin, qmax, axis):
    s = qm._expand(np.asarray(scale, np.float32), x.ndim, axis)
    z = qm._expand(np.asarray(zp, np.int64), x.ndim, axis)
    return np.clip(np.rint(x / s).astype(np.int64) + z, qmin, qmax)


def _reference_dequantize(q, scale, zp, axis):
    s = qm._expand(np.asarray(scale, np.float32), q.ndim, axis)
    z = qm._expand(np.asarray(zp, np.int64), q.ndim, axis)
    return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
def test_blocks_match_one_pass(monkeypatch, block, axis, dtype):
    monkeypatch.setattr(qm, "BLOCK", block)
    rng = np.random.default_rng(1)
    x = rng.laplace(size=(9, 5, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0
    qmin, qmax = qm.qrange(dtype, symmetric=dtype != "uint8")
    qa = qm.quantize_array(x, axis, qmin, qmax, dtype != "uint8")
    assert qa.q.dtype == np.dtype(dtype)
    ref = _reference_quantize(x, qa.scale, qa.zero_point, qmin, qmax, axis)
    ref, _ = qm.keep_nonzero(x, ref, qa.zero_point, qmin, qmax, axis)
    np.testing.assert_array_equal(qa.q, ref)
    assert qa.symbols == np.unique(ref).size
    back = qa.dequantize()
    np.testing.assert_array_equal(
        back.view(np.uint32), _reference_dequantize(ref, qa.scale, qa.zero_point, axis).view(np.uint32)
    )
    # transposed (non-contiguous) input
    qt = qm.quantize_values(x.T, qa.scale, qa.zero_point, qmin, qmax, None if axis is None else 2 - axis)
    np.testing.assert_array_equal(qt, ref.T)


@pytest.mark.parametrize("block", [1, 13, 1 << 20])
def test_codebook_blocks_match_one_pass(monkeypatch, block):
    rng = np.random.default_rng(4)
    book = np.sort(rng.laplace(size=20)).astype(np.float32)
    x = rng.choice(book, size=(30, 17))
    x[rng.random(x.shape) < 0.3] = 0
    expected_book = qm.codebook(x)
    expected = qm.quantize_codebook(x, -127, 127, True, expected_book)
    monkeypatch.setattr(qm, "BLOCK", block)
    found = qm.codebook(x)
    np.testing.assert_array_equal(found[0], expected_book[0])
    np.testing.assert_array_equal(found[1], expected_book[1])
    qa = qm.quantize_codebook(x.T, -127, 127, True, found)
    np.testing.assert_array_equal(qa.q, expected.q.T)
    assert qa.q.dtype == np.int8 and qa.symbols == expected.symbols


def test_int_type_and_distinct_count():
    assert qm.int_type(-127, 127) == np.int8 and qm.int_type(0, 255) == np.uint8
    assert qm.int_type(-32768, 32767) == np.int16 and qm.int_type(-(2**31), 2**31 - 1) == np.int32
    q = np.array([[0, -3, 5], [5, 0, 127]], np.int8)
    assert qm.distinct_count(q) == 4 and qm.distinct_count(q, skip_zero=True) == 3
    assert qm.distinct_count(q.astype(np.int32), skip_zero=True) == 3
