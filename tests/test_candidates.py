"""search.candidates: a candidate's codes kept compactly decode to exactly its array."""

from __future__ import annotations

import numpy as np

from compressor.ecq import uniform_quantize
from compressor.kmeans import share_array
from compressor.search.candidates import PACK_ABOVE, PackedInts, compact, decoded, kmeans_code, uniform_code


def test_large_codes_are_kept_compressed_and_decode_bit_for_bit():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((PACK_ABOVE // 64 + 3, 64)).astype(np.float32)
    values[0, :5] = 0.0
    shared = share_array(values, 2**8)
    code = kmeans_code(shared)
    assert isinstance(code[1], PackedInts) and code[1].dtype == np.int16
    assert code[1].nbytes < values.size * 2  # the labels span a few bits of entropy per element
    assert decoded(values, code).tobytes() == shared.values.tobytes()
    fold = np.zeros(values.shape, bool)
    fold[:, :4] = True
    for step in (0.05, 0.5):
        uniform = uniform_quantize(values, step)
        plain = uniform_code(uniform.levels, uniform.step, values.dtype, None)
        assert isinstance(plain[1], PackedInts)
        assert decoded(values, plain).tobytes() == uniform.values.tobytes()
        folded = decoded(values, uniform_code(uniform.levels, uniform.step, values.dtype, fold))
        assert folded.tobytes() == np.where(fold, values, uniform.values).tobytes()


def test_small_codes_stay_plain_arrays_and_every_width_round_trips():
    small = np.arange(-3, 9, dtype=np.int64)
    assert isinstance(compact(small), np.ndarray) and compact(small).dtype == np.int8
    for a in (np.arange(PACK_ABOVE, dtype=np.int64) % 300 - 1, np.arange(PACK_ABOVE + 1, dtype=np.int64) * 7):
        packed = compact(a)
        assert isinstance(packed, PackedInts)
        assert np.array_equal(packed.array(), a) and packed.array().shape == a.shape
