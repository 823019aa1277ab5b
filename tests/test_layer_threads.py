"""The layers' covariance sums on two threads: the same sums as one thread, bit for bit
(passes/layer_threads.py)."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.passes.layer_threads import LayerPool
from compressor.passes.layers import Layer

CONV = dict(kshape=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), auto_pad="NOTSET")


def _layers() -> list[Layer]:
    strided = Layer("conv", "x", 36, conv=CONV)
    strided.stride = 5
    return [Layer("conv", "x", 36, conv=CONV), strided, Layer("matmul", "h", 8), Layer("gemm", "h2", 8)]


def _accumulated(threads: int, batches: list[dict]) -> list[Layer]:
    layers = _layers()
    with LayerPool(threads) as pool:
        for values in batches:
            pool.accumulate(layers, values)
    return layers


def test_two_threads_give_the_one_thread_sums_bit_for_bit():
    rng = np.random.default_rng(0)
    batches = [
        {
            "x": rng.standard_normal((2, 4, 9, 7)).astype(np.float32),
            "h": rng.standard_normal((3, 5, 8)).astype(np.float32),
            "h2": rng.standard_normal((6, 8)).astype(np.float32),
        }
        for _ in range(3)
    ]
    one, two = _accumulated(1, batches), _accumulated(2, batches)
    for a, b in zip(one, two):
        assert a.rows == b.rows and a.rows > 0
        assert np.array_equal(a.C, b.C) and np.array_equal(a.total, b.total)
        assert (a.kept is None) == (b.kept is None)


def test_an_error_in_one_layer_reaches_the_caller():
    class Broken(Layer):
        def accumulate(self, x):
            raise ValueError("broken layer")

    layers = [Layer("matmul", "h", 8), Broken("matmul", "h", 8)]
    with LayerPool(2) as pool, pytest.raises(ValueError, match="broken layer"):
        pool.accumulate(layers, {"h": np.ones((4, 8), dtype=np.float32)})
