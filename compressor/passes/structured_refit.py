"""Least-squares refit of the layers that read pruned channels (structured pruning).

When channels of a group go, each *sink* (the Conv / Gemm / MatMul that reads them with a
constant weight) loses their contribution.  With calibration inputs X of the sink (im2col rows
for a Conv), the kept rows S of its weight W and its bias can instead take the values that best
reproduce the original output, a linear regression with intercept:

    W_S' = (Sigma_SS + lambda I)^-1 (Sigma W)_S,    b' = b + mu W - mu_S W_S'

with Sigma the centred covariance of X, mu its mean, lambda a small ridge (``DAMP`` x the mean of
diag Sigma_SS).  Every column shares the kept set, so it is one solve per sink.  Only mu and
X^T X (d_in x d_in) are kept per sink, accumulated in one capture pass of the original model.
A sink whose output has no bias to take the intercept (its own, a bias Add or a BatchNorm's
running mean that alone reads it), whose weight is shared, or whose refit would cost more than
``MAX_D_IN`` inputs, is left to the mean folding of ``passes.structured``.
"""

from __future__ import annotations

import numpy as np
import onnx

from .. import graph
from ..data import Dataset
from ..evaluate import capture_with_feeds
from .channels import Analysis, ChannelGroup, Sink
from .layers import Layer, conv_params

DAMP = 0.01
MAX_D_IN = 4096  # one (d_in x d_in) solve per sink and candidate


def _layer(node: onnx.NodeProto, weight: np.ndarray) -> Layer | None:
    """The sink as Y = X @ W_mat (``layers.Layer``), or None when not supported."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and weight.ndim == 2 and not attrs.get("transA", 0):
        tb = bool(attrs.get("transB", 0))
        if float(attrs.get("alpha", 1.0)) != 1.0:
            return None
        return Layer("gemm", node.input[0], weight.shape[1] if tb else weight.shape[0], transpose_w=tb)
    if node.op_type == "MatMul" and weight.ndim == 2:
        return Layer("matmul", node.input[0], weight.shape[0])
    if node.op_type == "Conv":
        conv = conv_params(node, weight.shape)
        if isinstance(conv, str):
            return None
        return Layer("conv", node.input[0], int(np.prod(weight.shape[1:])), conv=conv)
    return None


class SinkRefit:
    """The calibration statistics of the groups' sinks, and the refit of a candidate."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, groups: list[ChannelGroup], data: Dataset, targets):
        """`targets(sink)`: (constant, sign) that takes the sink's intercept, or None."""
        self.analysis = analysis
        self.layers: dict[str, tuple[Sink, Layer, tuple[str, float]]] = {}
        self.sums: dict[str, np.ndarray] = {}
        nodes = {(n.name, n.output[0]): n for n in model.graph.node}
        uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        for g in groups:
            for sink in g.sinks:
                weight = analysis.constants[sink.weight]
                if uses.get(sink.weight, 0) != 1 or sink.weight in analysis.aliases:
                    continue
                layer = _layer(nodes[(sink.node, sink.output)], weight)
                target = targets(sink)
                if layer is None or target is None or layer.d_in > MAX_D_IN:
                    continue
                self.layers[sink.weight] = (sink, layer, target)
        if not self.layers:
            return
        inputs = {vi.name for vi in graph.graph_inputs(model)}
        wanted = sorted({layer.x_name for _, layer, _ in self.layers.values()} - inputs)
        for feed, captured in capture_with_feeds(model, wanted, data):
            values = {**feed, **captured}
            for name, (_, layer, _) in self.layers.items():
                for rows in layer.rows_of(values[layer.x_name]):
                    layer.C += rows.T @ rows
                    layer.rows += rows.shape[0]
                    self.sums[name] = self.sums.get(name, 0.0) + rows.sum(axis=0)

    def covers(self, sink: Sink) -> bool:
        return sink.weight in self.layers

    def refit(self, removed_by_weight: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """New arrays of the refit weights, and deltas for their bias targets (by name).
        `removed_by_weight`: the removed channels each covered sink weight reads."""
        weights, deltas = {}, {}
        for name, removed in removed_by_weight.items():
            sink, layer, (target, sign) = self.layers[name]
            original = self.analysis.constants[name]
            w = layer.matrix(np.asarray(original, np.float64))  # d_in x d_out
            taps = layer.d_in // (original.shape[sink.axis] // sink.unit) if layer.kind == "conv" else sink.unit
            gone = (np.asarray(removed)[:, None] * taps + np.arange(taps)[None, :]).ravel()
            kept = np.setdiff1d(np.arange(layer.d_in), gone)
            n = max(layer.rows, 1)
            mu = self.sums[name] / n
            sigma = layer.C / n - np.outer(mu, mu)
            s_ss = sigma[np.ix_(kept, kept)]
            ridge = DAMP * max(float(np.mean(np.diag(s_ss))), 1e-12)
            try:
                w_kept = np.linalg.solve(s_ss + ridge * np.eye(len(kept)), (sigma @ w)[kept])
            except np.linalg.LinAlgError:
                continue
            if not np.all(np.isfinite(w_kept)):
                continue
            new = np.zeros_like(w)
            new[kept] = w_kept
            delta = mu @ w - mu[kept] @ w_kept
            if layer.kind == "conv":
                new = new.T.reshape(original.shape)
            elif layer.transpose_w:
                new = new.T
            weights[name] = new.astype(original.dtype)
            deltas[target] = deltas.get(target, 0.0) + sign * delta
        return weights, deltas
