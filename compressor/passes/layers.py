"""Layers seen as Y = X @ W for a data-aware refit of their weight W: which consumers of a
weight qualify (``layers_for``: Gemm, MatMul, non-grouped 2-D Conv via im2col, in the main
graph) and the covariance C = X^T X of their inputs on calibration data (``accumulate_inputs``).
Used by share's centroid refit and by compensate's refit of the weights pruning keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from .. import graph
from ..data import Dataset
from ..evaluate import capture_with_feeds
from .layer_threads import LayerPool

# Refit cost cap: k · d_in · d_in · d_out multiply-adds per layer (~ a few seconds).
REFIT_MAX_FLOPS = 2e10
# A layer's covariance is estimated from at most max(COVARIANCE_ROWS_PER_INPUT · d_in,
# COVARIANCE_MAX_FLOPS / d_in²) input rows spread evenly over the data (every k-th row,
# scaled by k): a conv over a long spectrogram has 10⁵ rows per sample, and all of them cost
# minutes of float64 products and a gigabyte of im2col per sample for no better estimate.
COVARIANCE_ROWS_PER_INPUT = 16
COVARIANCE_MAX_FLOPS = 1e10
# Float64 elements of the rows formed at once (im2col of selected positions).
ROW_CHUNK_ELEMENTS = 1 << 22


class Layer:
    """One consumer of a shared weight, seen as Y = X_mat @ W_mat (for the refit)."""

    def __init__(
        self,
        kind: str,
        x_name: str,
        d_in: int,
        transpose_w: bool = False,
        trans_a: bool = False,
        scale: float = 1.0,
        conv: dict | None = None,
    ):
        self.kind, self.x_name, self.d_in = kind, x_name, d_in
        self.transpose_w, self.trans_a, self.scale, self.conv = transpose_w, trans_a, scale, conv
        self.C = np.zeros((d_in, d_in))
        self.total = np.zeros(d_in)  # the rows' sum: the inputs' means
        self.rows = 0
        self.kept: list[np.ndarray] | None = []  # the rows themselves, while there are at most d_in
        self.stride = 1  # every stride-th input row is used (see row_stride), weighted by it
        self._seen = 0  # input rows seen, used or not (where the next stride starts)

    def matrix(self, a: np.ndarray) -> np.ndarray:
        """The weight (or labels) as the d_in x d_out matrix of this layer."""
        if self.kind == "conv":
            return a.reshape(a.shape[0], -1).T
        return a.T if self.transpose_w else a

    def row_count(self, x: np.ndarray) -> int:
        """The number of input rows (of d_in values) in a captured input `x`."""
        x = np.asarray(x)
        if self.kind == "conv":
            return x.shape[0] * int(np.prod(conv_output_hw(x.shape[2:], **self.conv)))
        if self.kind == "gemm":
            return x.shape[1] if self.trans_a else x.shape[0]
        return x.size // self.d_in

    def rows_of(self, x: np.ndarray) -> Iterable[np.ndarray]:
        """The input rows of `x` this layer uses (every `stride`-th, continuing across calls),
        in float64, a bounded chunk at a time."""
        x = np.asarray(x)
        total = self.row_count(x)
        start = (-self._seen) % self.stride
        self._seen += total
        if self.kind == "conv":
            if self.stride == 1:
                step = max(1, ROW_CHUNK_ELEMENTS // max(1, int(np.prod(x.shape[1:]))))
                for s in range(0, x.shape[0], step):
                    yield im2col(x[s : s + step].astype(np.float64), **self.conv)
                return
            picked = np.arange(start, total, self.stride)
            step = max(1, ROW_CHUNK_ELEMENTS // self.d_in)
            windows = conv_windows(x, **self.conv)
            for s in range(0, picked.size, step):
                yield window_rows(windows, picked[s : s + step])
            return
        if self.kind == "gemm":
            mat = x.T if self.trans_a else x
        else:
            mat = x.reshape(-1, self.d_in)
        yield mat[start :: self.stride].astype(np.float64)

    def accumulate(self, x: np.ndarray) -> None:
        for rows in self.rows_of(x):
            self.C += (rows.T @ rows) * self.stride
            self.total += rows.sum(axis=0) * self.stride
            self.rows += rows.shape[0] * self.stride
            if self.kept is not None:
                self.kept = self.kept + [rows] if self.rows <= self.d_in and self.stride == 1 else None

    def row_stride(self, rows_per_sample: float, samples: int) -> int:
        """The stride that keeps the rows used within the covariance's row budget."""
        budget = max(COVARIANCE_ROWS_PER_INPUT * self.d_in, COVARIANCE_MAX_FLOPS / self.d_in**2)
        return max(1, int(np.ceil(rows_per_sample * samples / budget)))

    def constant_inputs(self, rtol: float = 1e-6) -> np.ndarray:
        """Which inputs took one value over every row (variance within `rtol` of the second moment)."""
        if self.rows == 0:
            return np.zeros(self.d_in, dtype=bool)
        second = np.diag(self.C) / self.rows
        mean = self.total / self.rows
        return second - mean * mean <= rtol * second

    def factor(self) -> np.ndarray:
        """R (r x d_in) with R^T R = scale * C (up to a 1e-10 ridge when r = d_in).

        With at most d_in calibration rows, R is the rows themselves (exact, r small);
        otherwise a Cholesky factor of C (cheap and robust; no eigendecomposition).
        """
        if self.kept is not None:
            return np.concatenate(self.kept, axis=0) * np.sqrt(self.scale)
        C = self.C * self.scale
        ridge = 1e-10 * max(float(np.trace(C)) / self.d_in, 1e-300)
        return np.linalg.cholesky(C + ridge * np.eye(self.d_in)).T


def conv_params(node: onnx.NodeProto, w_shape: tuple[int, ...]) -> dict | str:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if len(w_shape) != 4:
        return "refit supports 2-D convolutions only"
    if int(attrs.get("group", 1)) != 1:
        return "refit does not support grouped/depthwise convolutions"
    kshape = tuple(int(v) for v in attrs.get("kernel_shape", w_shape[2:]))
    if kshape != tuple(w_shape[2:]):
        return "kernel_shape does not match the filter"
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return {
        "kshape": kshape,
        "strides": tuple(int(v) for v in attrs.get("strides", (1, 1))),
        "dilations": tuple(int(v) for v in attrs.get("dilations", (1, 1))),
        "pads": tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0))),
        "auto_pad": auto_pad,
    }


def im2col(x: np.ndarray, kshape, strides, dilations, pads, auto_pad="NOTSET") -> np.ndarray:
    """Patches of an (N, C, H, W) input as rows of length C·kh·kw, in the filter's (C, kh, kw) order."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kshape, strides, dilations
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    pt, pl, pb, pr = _conv_padding(h, w, kshape, strides, dilations, pads, auto_pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)


def _conv_padding(h: int, w: int, kshape, strides, dilations, pads, auto_pad) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding of a conv input of spatial size (h, w)."""
    (kh, kw), (sh, sw), (dh, dw) = kshape, strides, dilations
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_hw = []
        for size, s, e in ((h, sh, eh), (w, sw, ew)):
            total = max((-(-size // s) - 1) * s + e - size, 0)
            small = total // 2
            pads_hw.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
        (pt, pb), (pl, pr) = pads_hw
        return pt, pl, pb, pr
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    pt, pl, pb, pr = pads
    return pt, pl, pb, pr


def conv_output_hw(hw, kshape, strides, dilations, pads, auto_pad="NOTSET") -> tuple[int, int]:
    """The output's spatial size of a conv with input spatial size `hw`."""
    h, w = int(hw[0]), int(hw[1])
    pt, pl, pb, pr = _conv_padding(h, w, kshape, strides, dilations, pads, auto_pad)
    (kh, kw), (sh, sw), (dh, dw) = kshape, strides, dilations
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    return (h + pt + pb - eh) // sh + 1, (w + pl + pr - ew) // sw + 1


def im2col_rows(x: np.ndarray, rows: np.ndarray, kshape, strides, dilations, pads, auto_pad="NOTSET") -> np.ndarray:
    """The rows of ``im2col(x)`` at the indices `rows` (into its N·Ho·Wo rows), in float64,
    without forming the others."""
    return window_rows(conv_windows(x, kshape, strides, dilations, pads, auto_pad), rows)


def conv_windows(x: np.ndarray, kshape, strides, dilations, pads, auto_pad="NOTSET") -> np.ndarray:
    """Every conv window of an (N, C, H, W) input, as a view (N, C, Ho, Wo, kh, kw) of the
    zero-padded input: ``window_rows`` picks rows of it (one padded copy for all the picks)."""
    n, c, h, w = x.shape
    pt, pl, pb, pr = _conv_padding(h, w, kshape, strides, dilations, pads, auto_pad)
    (kh, kw), (sh, sw), (dh, dw) = kshape, strides, dilations
    ho, wo = conv_output_hw((h, w), kshape, strides, dilations, pads, auto_pad)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if pt or pl or pb or pr else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :ho, :wo]


def window_rows(windows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The im2col rows at `rows` (into N·Ho·Wo) of ``conv_windows``' view, in float64: one gather
    of whole windows (indexed by sample and position, not element by element)."""
    n, c, ho, wo, kh, kw = windows.shape
    sample, pos = np.divmod(rows, ho * wo)
    oy, ox = np.divmod(pos, wo)
    picked = windows[sample, :, oy, ox]  # (rows, C, kh, kw): the advanced axes first
    return picked.reshape(rows.size, c * kh * kw).astype(np.float64)


def layers_for(w: graph.Weight, k: int, known: set[str], max_flops: float | None = None) -> list[Layer] | str:
    """The refit view of every consumer of w (clustered into k values), or the reason the refit
    does not apply: one consumer in a subgraph, another op, or a refit costing more than
    `max_flops` (default ``REFIT_MAX_FLOPS``)."""
    if not w.consumers:
        return "no consumers"
    layers = []
    for cons in w.consumers:
        node, idx = cons.node, cons.input_index
        if cons.graph_path:
            return "consumer inside a subgraph"
        if idx != 1 or not node.input or not node.input[0]:
            return f"{node.op_type} input {idx} not supported"
        x_name = node.input[0]
        if x_name in known:
            return f"{node.op_type} input is a constant"
        if node.op_type == "Gemm" and len(w.shape) == 2:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            tb = bool(attrs.get("transB", 0))
            d_in = w.shape[1] if tb else w.shape[0]
            layers.append(
                Layer(
                    "gemm",
                    x_name,
                    d_in,
                    transpose_w=tb,
                    trans_a=bool(attrs.get("transA", 0)),
                    scale=float(attrs.get("alpha", 1.0)) ** 2,
                )
            )
        elif node.op_type == "MatMul" and len(w.shape) == 2:
            layers.append(Layer("matmul", x_name, w.shape[0]))
        elif node.op_type == "Conv":
            conv = conv_params(node, w.shape)
            if isinstance(conv, str):
                return conv
            layers.append(Layer("conv", x_name, int(np.prod(w.shape[1:])), conv=conv))
        else:
            return f"refit supports Gemm, MatMul and Conv (not {node.op_type} with a {len(w.shape)}-D weight)"
    d_out = w.size // layers[0].d_in
    flops = float(k) * sum(layer.d_in for layer in layers) * layers[0].d_in * d_out
    max_flops = REFIT_MAX_FLOPS if max_flops is None else max_flops
    if flops > max_flops:
        return f"too expensive ({flops / 1e9:.0f} GFLOP > {max_flops / 1e9:.0f})"
    return layers


def accumulate_inputs(
    model: onnx.ModelProto, layers: list[Layer], data: Dataset, outputs: list[list[np.ndarray]] | None = None
) -> None:
    """Run `model` over `data` once and accumulate each layer's input covariance (X^T X);
    the captures are batched under evaluate.CAPTURE_BYTES.  `outputs`: when given (a list),
    each batch's model outputs are appended to it, in the graph's output order (the same run:
    nothing appended when no layer input needs a run)."""
    input_names = {vi.name for vi in graph.graph_inputs(model)}
    wanted = sorted({layer.x_name for layer in layers})
    to_capture = [n for n in wanted if n not in input_names]
    output_names = [o.name for o in model.graph.output] if outputs is not None else []
    batches = (
        capture_with_feeds(model, to_capture, data, extra=output_names)
        if to_capture
        else ((f, {}) for f in data.batches(1 << 30))
    )
    first = True
    with LayerPool() as pool:  # the layers' sums on both cores, the same sums (passes/layer_threads.py)
        for feed, captured in batches:
            values = {**feed, **captured}
            if outputs is not None and to_capture:
                outputs.append([captured[n] for n in output_names])
            if first:
                # The first batch's rows per sample set each layer's stride for the whole data.
                fed = (
                    1
                    if data.per_sample
                    else max(1, next(iter(np.asarray(v).shape[0] for v in feed.values() if np.ndim(v))))
                )
                for layer in layers:
                    layer.stride = layer.row_stride(layer.row_count(values[layer.x_name]) / fed, data.size)
                first = False
            pool.accumulate(layers, values)
