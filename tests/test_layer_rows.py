"""Covariances of layer inputs from a bounded, evenly spread subset of their rows
(passes.layers: Layer.stride, im2col_rows)."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.passes import layers as layers_mod
from compressor.passes.layers import Layer, conv_output_hw, im2col, im2col_rows

CONVS = [
    dict(kshape=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), auto_pad="NOTSET"),
    dict(kshape=(3, 2), strides=(2, 1), dilations=(1, 2), pads=(0, 1, 2, 0), auto_pad="NOTSET"),
    dict(kshape=(3, 3), strides=(2, 2), dilations=(1, 1), pads=(0, 0, 0, 0), auto_pad="SAME_UPPER"),
    dict(kshape=(2, 3), strides=(1, 2), dilations=(1, 1), pads=(0, 0, 0, 0), auto_pad="SAME_LOWER"),
    dict(kshape=(1, 1), strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), auto_pad="VALID"),
]


@pytest.mark.parametrize("conv", CONVS)
def test_selected_im2col_rows_are_those_of_the_whole_im2col(conv):
    x = np.random.default_rng(0).standard_normal((3, 4, 9, 7)).astype(np.float32)
    full = im2col(x.astype(np.float64), **conv)
    ho, wo = conv_output_hw(x.shape[2:], **conv)
    assert full.shape[0] == 3 * ho * wo
    rows = np.arange(1, full.shape[0], 5)
    np.testing.assert_array_equal(im2col_rows(x, rows, **conv), full[rows])


def test_a_strided_covariance_estimates_the_whole_one():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 20, 20)).astype(np.float32)
    conv = CONVS[0]
    whole, strided = Layer("conv", "x", 27, conv=conv), Layer("conv", "x", 27, conv=conv)
    whole.accumulate(x)
    strided.stride = 7
    for part in np.split(x, 3):  # continued across batches: every row position is reachable
        strided.accumulate(part)
    assert whole.stride == 1 and whole.rows == 6 * 400 and strided.kept is None
    assert abs(strided.rows - whole.rows) <= 7
    # exactly the rows 0, 7, 14, ... of the whole im2col, weighted by the stride
    used = im2col(x.astype(np.float64), **conv)[::7]
    np.testing.assert_allclose(strided.C, 7 * used.T @ used)
    assert abs(np.trace(strided.C) / np.trace(whole.C) - 1) < 0.1
    # matmul rows too
    mat = Layer("matmul", "h", 8)
    mat.stride = 3
    h = rng.standard_normal((5, 10, 8)).astype(np.float32)
    mat.accumulate(h)
    used = h.reshape(-1, 8)[::3].astype(np.float64)
    np.testing.assert_allclose(mat.C, 3 * used.T @ used)


def test_the_row_budget_sets_the_stride(monkeypatch):
    layer = Layer("conv", "x", 1152, conv=CONVS[0])
    # a long spectrogram: 10^5 rows per sample, 32 samples
    stride = layer.row_stride(144_900, 32)
    budget = max(layers_mod.COVARIANCE_ROWS_PER_INPUT * 1152, layers_mod.COVARIANCE_MAX_FLOPS / 1152**2)
    assert stride > 1 and 144_900 * 32 / stride <= budget
    assert Layer("conv", "x", 25, conv=CONVS[0]).row_stride(576, 512) == 1  # small models: every row


@pytest.mark.parametrize("conv", CONVS)
def test_rows_picked_from_one_window_view_are_the_gathered_rows_in_chunks(conv):
    # rows_of takes the windows once per input and picks its chunks from them: the same rows.
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 9)).astype(np.float32)
    windows = layers_mod.conv_windows(x, **conv)
    full = im2col(x.astype(np.float64), **conv)
    for chunk in np.array_split(np.arange(0, full.shape[0], 3), 4):
        np.testing.assert_array_equal(layers_mod.window_rows(windows, chunk), full[chunk])
