"""Layer-local pruning errors: what each tensor's layer loses at each ratio, without running the model.

A layer Y = X W (Gemm, MatMul, non-grouped Conv via im2col; ``passes.layers``) pruned to W - ΔW
changes its output by X ΔW, whose energy over the calibration inputs is tr(ΔWᵀ C ΔW) with
C = XᵀX.  Relative to the layer's own output energy tr(Wᵀ C W) this is the layer's relative
output error e(r) at ratio r: one capture run over the data gives C for every layer, and then
every tensor x ratio is a few matrix products (no ONNX Runtime run).  With the refit on
(``passes.compensate``), ΔW is what the refit of the kept weights leaves.

A Gather table's error is that of the rows looked up, weighted by how often (``row_use``;
the share searches ask for it).
Tensors without a usable covariance (grouped/depthwise conv, several consumers, other ops,
embeddings, more than ``MAX_D_IN`` inputs per output) get the weight-space proxy
||ΔW||² / ||W||² instead; each curve says which measure it is (``method``) and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from .. import graph
from ..data import Dataset
from ..passes.compensate import Compensator, refit_kept
from ..passes.layers import Layer, accumulate_inputs, layers_for
from ..passes.magnitude import layer_pruned
from ..passes.row_use import RowUse, is_table, row_use_for

# Largest covariance kept per layer (d_in x d_in float64): above it the weight proxy is used.
MAX_D_IN = 4096
# Largest ratios x d_in x d_in x d_out multiply-adds the error curve of one tensor may cost.
MAX_CURVE_FLOPS = 2e10
# Output channels whose refit stands for the layer's in the error curves (one solve each), and
# the ratios of the ladder (evenly spread, the ends included) at which that refit is solved.
REFIT_COLUMNS = 32
REFIT_RATIOS = 12
# Tensors above this many values get their weight-proxy curve from a partition, not a sort.
PARTITION_ABOVE = 1 << 22
# Error stacks (ratios x d_in x d_out float64) are evaluated in chunks of at most this many elements.
CHUNK_ELEMENTS = 1 << 23

COVARIANCE = "covariance"
WEIGHT = "weight"
ROWS = "rows"


def curve_method(layer: Layer | RowUse | None) -> str:
    """How a tensor's errors are measured: its layer's output (covariance), a Gather table's
    looked-up rows, or the weight-space proxy."""
    return WEIGHT if layer is None else ROWS if isinstance(layer, RowUse) else COVARIANCE


def output_errors(w: np.ndarray, deltas: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """tr(Δᵀ C Δ) / tr(Wᵀ C W) for each Δ of a stack (k, d_in, d_out), W and C (d_in x d_in)."""
    w = np.asarray(w, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    total = float(np.sum((cov @ w) * w))
    deltas = np.asarray(deltas, dtype=np.float64)
    k, d_in, d_out = deltas.shape
    out = np.empty(k)
    step = max(1, CHUNK_ELEMENTS // max(d_in * d_out, 1))
    for s in range(0, k, step):
        d = deltas[s : s + step]
        flat = d.transpose(1, 0, 2).reshape(d_in, -1)  # all deltas side by side: one product
        out[s : s + step] = ((cov @ flat) * flat).reshape(d_in, d.shape[0], d_out).sum(axis=(0, 2))
    return out / total if total > 0 else np.where(out > 0, np.inf, 0.0)


def weight_errors(values: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """||ΔW||² / ||W||² of layer magnitude pruning at each ratio (the smallest magnitudes zeroed)."""
    if np.size(values) > PARTITION_ABOVE:
        return _partitioned_weight_errors(values, ratios)
    squares = np.sort(np.square(np.asarray(values, dtype=np.float64).reshape(-1)))
    total = float(squares.sum())
    cumulative = np.concatenate([[0.0], np.cumsum(squares)])
    k = np.array([int(round(r * squares.size)) for r in ratios], dtype=np.int64)
    errors = cumulative[np.clip(k, 0, squares.size)]
    return errors / total if total > 0 else np.zeros(len(ratios))


def _partitioned_weight_errors(values: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """``weight_errors`` of a large tensor: the squares partitioned in place at the ratios' counts
    (no sorted copy, no cumulative array), each stretch summed once."""
    squares = np.asarray(values, dtype=np.float64).reshape(-1).copy()
    np.square(squares, out=squares)
    n = squares.size
    k = np.array([int(round(r * n)) for r in ratios], dtype=np.int64).clip(0, n)
    cuts = sorted({int(c) for c in k if 0 < c < n})
    if cuts:
        squares.partition(cuts)
    bounds = [0, *cuts, n]
    below = {0: 0.0}
    running = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        running += float(squares[lo:hi].sum())
        below[hi] = running
    errors = np.array([below[int(c)] for c in k])
    total = below[n]
    return errors / total if total > 0 else np.zeros(len(ratios))


def variant_errors(values: np.ndarray, variants: Sequence[np.ndarray], layer: Layer | RowUse | None) -> np.ndarray:
    """The relative error of each variant of a tensor (pruned, shared, ...) against `values`:
    the layer's output error ``output_errors`` when it has a `layer` (its covariance captured),
    a Gather table's lookup-weighted row error (``RowUse.errors``), else the weight-space proxy
    ||ΔW||² / ||W||²."""
    if isinstance(layer, RowUse):
        return layer.errors(values, variants)
    w = np.asarray(values, dtype=np.float64)
    if layer is None:
        total = float(np.sum(np.square(w)))
        errors = np.array([float(np.sum(np.square(np.asarray(v, dtype=np.float64) - w))) for v in variants])
        return errors / total if total > 0 else np.where(errors > 0, np.inf, 0.0)
    w_mat = layer.matrix(w)
    deltas = np.stack([w_mat - layer.matrix(np.asarray(v, dtype=np.float64)) for v in variants])
    return output_errors(w_mat, deltas, layer.C * layer.scale)


def _refit_share(w: np.ndarray, keep: np.ndarray, cov: np.ndarray, damp: float) -> float:
    """The share of a layer's pruning error the refit of the kept weights leaves: solved on at
    most ``REFIT_COLUMNS`` evenly spaced output channels (the refit is one solve per channel),
    their refit error over their plain error (exact when there are no more channels)."""
    cols = np.unique(np.linspace(0, w.shape[1] - 1, min(w.shape[1], REFIT_COLUMNS)).round().astype(np.int64))
    w, keep = w[:, cols], keep[:, cols]
    plain = np.where(keep, 0.0, w)
    left = w - refit_kept(w, keep, cov, damp)
    plain_error = float(np.sum((cov @ plain) * plain))
    if plain_error <= 0:
        return 1.0
    return float(np.sum((cov @ left) * left)) / plain_error


def capture_layers(
    model: onnx.ModelProto,
    weights: Sequence[graph.Weight],
    data: Dataset,
    n_ratios: int,
    captured: dict[str, Layer] | None = None,
    tables: bool = False,
    shared: dict[str, Layer] | None = None,
    outputs: list[list[np.ndarray]] | None = None,
) -> tuple[dict[str, Layer | RowUse], dict[str, str], int]:
    """The layer of each weight with its input covariance, from at most one capture run over `data`.

    `captured`: layers accumulated already (a ``Compensator``'s), reused as they are.  `tables`:
    a Gather table gets its row lookups counted in the same run (``row_use.RowUse``, whose
    errors ``variant_errors`` weighs by them).  `shared`: layers an earlier stage captured on
    `data` (``layer_inputs.LayerInputs``), reused for the weights that pass this call's checks
    (the same layers its own capture would make).  `outputs`: a list the capture run appends
    each batch's model outputs to (``passes.layers.accumulate_inputs``).
    Returns ({name: Layer}, {name: why the weight has none}, capture runs made: 0 or 1)."""
    constants = {w.name: w for w in graph.weights(model, include_non_float=True)}
    known = set(constants)
    captured = captured or {}
    layers: dict[str, Layer] = {}
    reasons: dict[str, str] = {}
    fresh: list[Layer] = []
    for w in weights:
        if w.name in captured:
            layers[w.name] = captured[w.name]
            continue
        if tables and is_table(w):
            use = row_use_for(w, constants)
            if isinstance(use, str):
                reasons[w.name] = use
            else:
                layers[w.name] = use
                if not use.constant:
                    fresh.append(use)
            continue
        found = layers_for(w, 1, known)
        if isinstance(found, str):
            reasons[w.name] = found
        elif len(found) != 1:
            reasons[w.name] = "several consumers"
        elif found[0].d_in > MAX_D_IN:
            reasons[w.name] = f"{found[0].d_in} inputs per output > {MAX_D_IN}"
        elif n_ratios * found[0].d_in * w.size > MAX_CURVE_FLOPS:
            reasons[w.name] = "error curve too expensive"
        elif shared is not None and _same_layer(shared.get(w.name), found[0]):
            layers[w.name] = shared[w.name]
        else:
            layers[w.name] = found[0]
            fresh.append(found[0])
    if not fresh:
        return layers, reasons, 0
    accumulate_inputs(model, fresh, data, outputs)
    for layer in fresh:
        layer.kept = None  # only the covariance is needed
    return layers, reasons, 1


def _same_layer(kept: Layer | None, layer: Layer) -> bool:
    """`kept` (captured before) reads the same input the same way as `layer`."""
    return (
        kept is not None
        and (kept.kind, kept.x_name, kept.d_in, kept.transpose_w, kept.trans_a, kept.scale, kept.conv)
        == (layer.kind, layer.x_name, layer.d_in, layer.transpose_w, layer.trans_a, layer.scale, layer.conv)
        and kept.rows > 0
    )


def layer_curves(
    weights: Sequence[graph.Weight],
    layers: dict[str, Layer],
    reasons: dict[str, str],
    ratios: Sequence[float],
    compensate: Compensator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Per tensor ``{"name", "params", "ratios", "errors", "method", "refit", "reason"}``: the
    layer's relative output error at each ratio (``method`` "covariance"), or the weight-space
    proxy (``method`` "weight", ``reason`` why).  With `compensate`, the covariance errors are
    those left after the refit of the kept weights (``refit`` True).  progress(done, total) is
    called after each tensor (for a progress bar)."""
    ratios = sorted(float(r) for r in ratios)
    curves = []
    for w in weights:
        values = w.array()
        layer = layers.get(w.name)
        curve = {"name": w.name, "params": w.size, "ratios": [float(r) for r in ratios]}
        if layer is None:
            errors = weight_errors(values, ratios)
            curve.update(method=WEIGHT, refit=False, reason=reasons.get(w.name, "no layer"))
        else:
            refit = compensate is not None and w.name in compensate
            w_mat = layer.matrix(values.astype(np.float64))
            cov = layer.C * layer.scale
            errors = np.empty(len(ratios))
            shares = {}
            # The refit's share is solved at a few ratios and interpolated between them.
            solved = set(np.unique(np.linspace(0, len(ratios) - 1, min(len(ratios), REFIT_RATIOS)).round()).tolist())
            # A few ratios' changes at a time (bounded memory, one product per group).
            group = max(1, CHUNK_ELEMENTS // max(w.size, 1))
            for s in range(0, len(ratios), group):
                pruned = [layer.matrix(layer_pruned(values, r).astype(np.float64)) for r in ratios[s : s + group]]
                errors[s : s + group] = output_errors(w_mat, w_mat[None] - np.stack(pruned), cov)
                for i, p in enumerate(pruned):
                    if refit and s + i in solved:
                        shares[ratios[s + i]] = _refit_share(w_mat, p != 0, cov, compensate.damp)
            if shares:
                errors *= np.interp(ratios, sorted(shares), [shares[r] for r in sorted(shares)])
            curve.update(method=COVARIANCE, refit=refit, reason=None)
        curve["errors"] = [float(e) for e in np.maximum.accumulate(np.maximum(errors, 0.0))]
        curves.append(curve)
        if progress is not None:
            progress(len(curves), len(weights))
    return curves


def layer_errors(
    model: onnx.ModelProto,
    weights: Sequence[graph.Weight],
    data: Dataset,
    ratios: Sequence[float],
    compensate: Compensator | None = None,
) -> dict:
    """The error curves of `weights` (``layer_curves``) from at most one capture run over `data`
    (none for the layers `compensate` captured already): ``{"ratios", "curves", "capture_runs"}``."""
    ladder = sorted(float(r) for r in ratios)
    captured = compensate.layers if compensate is not None else None
    layers, reasons, runs = capture_layers(model, weights, data, len(ladder), captured)
    return {
        "ratios": ladder,
        "curves": layer_curves(weights, layers, reasons, ladder, compensate),
        "capture_runs": runs,
    }
