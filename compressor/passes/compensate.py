"""Data-aware error compensation for pruning: the kept weights refit by least squares.

Magnitude pruning zeroes weights and leaves the others as they were.  With calibration
inputs X of a layer, the kept weights of each output channel can instead take the values
that best reproduce the unpruned layer's output (the Optimal Brain Surgeon update, solved
exactly per output channel as in SparseGPT's reconstruction step, without retraining):

    w_S = argmin ||X_S w_S - X w||^2  =  (C_SS + lambda I)^-1 (C w)_S,   C = X^T X

for the kept set S of each channel, with a small ridge lambda (``DAMP`` x the mean of
diag C).  Only C (d_in x d_in) is kept per layer, accumulated batch by batch from the
inputs ORT captures.  On the zoo's depthwise ResNet, the same sensitivity-guided ratios
lose 0.6 points plain and nothing refit; the pruning search, run with the refit, then
finds more zeros for the same budget.

``refit_kept`` is the math (pure numpy, batched over channels); ``Compensator`` binds it to
a model: which tensors it applies to (Gemm, MatMul, non-grouped Conv with the weight as the
second input and one consumer; within ``MAX_FLOPS``), the inputs captured from ``data``.
"""

from __future__ import annotations

import numpy as np
import onnx
from threadpoolctl import ThreadpoolController

from .. import graph
from ..data import Dataset
from .layers import Layer, accumulate_inputs, layers_for

DAMP = 0.01
# Largest refit (channels x d_in^3 / 3 multiply-adds) applied to a tensor: the search refits
# each tensor at a dozen ratios and every candidate, so it has to stay well under a second.
MAX_FLOPS = 4e8
# Channels solved together: at most this many float64 elements in the stacked systems.
CHUNK_ELEMENTS = 1 << 23
# The refit's many small solves run on one BLAS thread: OpenBLAS's threads synchronise inside
# every small factorisation (and tall-skinny product), and on a busy machine each of those waits
# costs a time slice (benchmarks/README.md, prune).
BLAS = ThreadpoolController()


def one_blas_thread():
    """A context in which numpy's BLAS/LAPACK run on one thread (ONNX Runtime's own threads are
    not affected)."""
    return BLAS.limit(limits=1, user_api="blas")


def refit_kept(w0: np.ndarray, keep: np.ndarray, cov: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Least-squares refit of the kept entries of each column of ``w0`` (d_in x d_out).

    ``keep`` (same shape, bool) marks the weights that stay; the others come back 0.
    ``cov`` is X^T X of the layer's inputs (d_in x d_in).  A column with every weight kept
    comes back unchanged (the ridge is applied to both sides of the normal equations).

    Each column's system is solved on its kept inputs only (size k, not d_in: a tensor pruned
    to ratio r costs (1 - r)^3 of the full solve); columns are solved together in groups of
    similar k, each padded to its largest k with identity rows (which solve to 0)."""
    w0 = np.asarray(w0, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    d_in, d_out = w0.shape
    c = np.asarray(cov, dtype=np.float64)
    c = c + damp * max(float(np.mean(np.diag(c))), 1e-12) * np.eye(d_in)
    out = np.where(keep, w0, 0.0)
    counts = keep.sum(axis=0)
    partial = np.flatnonzero((counts < d_in) & (counts > 0))
    if partial.size == 0:
        return out
    target = c @ w0[:, partial]  # (d_in, partial)
    # Most kept inputs first: each group's first column sets its padded size.
    order = np.argsort(-counts[partial], kind="stable")
    with one_blas_thread():
        _solve_groups(c, keep, counts, partial, order, target, out)
    return out


def _solve_groups(c, keep, counts, partial, order, target, out) -> None:
    """``refit_kept``'s systems, a group of columns at a time, written into `out`."""
    start = 0
    while start < order.size:
        size = int(counts[partial[order[start]]])
        step = max(1, CHUNK_ELEMENTS // (size * size))
        group = order[start : start + step]
        start += step
        cols = partial[group]
        k = keep[:, cols].T  # (m, d_in)
        # The kept input indices of each column first (ascending), padding after them.
        idx = np.argsort(~k, axis=1, kind="stable")[:, :size]  # (m, size)
        valid = np.arange(size)[None, :] < counts[cols][:, None]
        systems = c[idx[:, :, None], idx[:, None, :]]
        both = valid[:, :, None] & valid[:, None, :]
        systems = np.where(both, systems, 0.0) + (np.eye(size, dtype=bool)[None] & ~valid[:, :, None])
        rhs = np.where(valid, np.take_along_axis(target[:, group].T, idx, axis=1), 0.0)
        solved = np.linalg.solve(systems, rhs[:, :, None])[:, :, 0]
        rows, which = idx[valid], np.broadcast_to(cols[:, None], idx.shape)[valid]
        out[rows, which] = solved[valid]


class Compensator:
    """``compensator(name, pruned)``: the pruned array of tensor ``name`` with its kept
    weights refit (see module docstring), or ``pruned`` unchanged for tensors it does not
    cover (``skipped`` says why)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        weights,
        data: Dataset,
        damp: float = DAMP,
        captured: dict[str, Layer] | None = None,
    ):
        """`captured`: layers whose input covariance was accumulated on `data` already, by
        tensor name (``search.layer_error.capture_layers``): reused, not captured again."""
        self.damp = damp
        self.skipped: dict[str, str] = {}
        self.layers = {}
        self.originals: dict[str, np.ndarray] = {}
        known = {w.name for w in graph.weights(model, include_non_float=True)}
        captured = captured or {}
        for w in weights:
            layers = [captured[w.name]] if w.name in captured else layers_for(w, 1, known)
            if isinstance(layers, str):
                self.skipped[w.name] = layers
                continue
            if len(layers) != 1:
                self.skipped[w.name] = "several consumers"
                continue
            d_in = layers[0].d_in
            if (w.size // d_in) * d_in**3 / 3 > MAX_FLOPS:
                self.skipped[w.name] = f"refit too expensive ({d_in} inputs per channel)"
                continue
            self.layers[w.name] = layers[0]
            self.originals[w.name] = w.array()
        fresh = [layer for name, layer in self.layers.items() if name not in captured]
        if not fresh:
            return
        accumulate_inputs(model, fresh, data)
        for layer in fresh:
            layer.kept = None  # only the covariance is needed

    def __contains__(self, name: str) -> bool:
        return name in self.layers

    def __call__(self, name: str, pruned: np.ndarray) -> np.ndarray:
        layer = self.layers.get(name)
        if layer is None:
            return pruned
        original = self.originals[name]
        w0 = layer.matrix(original.astype(np.float64))
        keep = layer.matrix(np.asarray(pruned) != 0)
        fitted = refit_kept(w0, keep, layer.C * layer.scale, self.damp)
        if layer.kind == "conv":
            fitted = fitted.T.reshape(original.shape)
        elif layer.transpose_w:
            fitted = fitted.T
        if not np.all(np.isfinite(fitted)):
            return pruned  # a degenerate covariance: plain pruning rather than a wild refit
        fitted = fitted.astype(original.dtype)
        # A refit weight that rounds to exactly 0 in the tensor's type must not read as pruned.
        tiny = (fitted == 0) & (np.asarray(pruned) != 0)
        return np.where(tiny, np.asarray(pruned), fitted)
