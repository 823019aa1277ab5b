"""Low-rank factorisation: a Gemm / MatMul with a constant 2-D weight (or a 1x1 Conv, group 1)
becomes two products through a rank-r bottleneck, Y = (X A) B, where r·(m + n) < m·n.

The math is ``compressor.lowrank_math`` (truncated SVD, whitened by the layer's input
covariance when calibration data is given, so that it minimises the layer's output error);
this module picks the weights it applies to (``factorable_weights``: one consumer, in the main
graph, the weight as the second input, an initializer that is not a graph input), captures
their inputs' covariances (``layer_covariances``, one model run) and rewrites the graph
(``apply_ranks``).  The bias stays on the second node; the first carries a Conv's strides,
pads and dilations.  ``lowrank`` is the fixed-ratio pass; the budget search lives in
``search.lowrank_budget``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import graph
from ..data import Dataset
from ..errors import UsageError
from ..lowrank_math import (
    MARGIN,
    Factorization,
    factored_params,
    factorize,
    max_rank,
    output_error,
    rank_for_ratio,
    refit_right,
)
from .layers import Layer, accumulate_inputs, layers_for
from .selection import DEFAULT_MIN_PARAMS, Skipped, prunable_weights, unique_names

# Largest input width whose covariance is captured and whitened (an eigendecomposition of
# d_in x d_in); wider layers get the plain SVD.
MAX_D_IN = 4096
ROLES = ("gemm_b", "matmul_const", "conv_filter")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _why_not(w: graph.Weight, graph_inputs: set[str]) -> str | None:
    """Why weight `w` cannot be factorised (None: it can)."""
    if w.role not in ROLES:
        return f"role {w.role} (only Gemm/MatMul weights and 1x1 Conv filters)"
    if len(w.consumers) != 1:
        return f"shared by {len(w.consumers)} consumers"
    cons = w.consumers[0]
    if w.ref.graph_path or cons.graph_path:
        return "inside a subgraph"
    if w.ref.kind != "initializer":
        return "a Constant node, not an initializer"
    if w.name in graph_inputs:
        return "also a graph input (can be overridden at run time)"
    if w.via_identity or cons.input_index != 1:
        return f"{cons.node.op_type} input {cons.input_index} (only the weight input)"
    node, attrs = cons.node, _attrs(cons.node)
    if node.op_type == "Gemm":
        if len(w.shape) != 2:
            return "Gemm weight is not 2-D"
        if attrs.get("transA", 0):
            return "Gemm with transA"
    elif node.op_type == "MatMul":
        if len(w.shape) != 2:
            return "MatMul weight is not 2-D"
    elif node.op_type == "Conv":
        if len(w.shape) != 4 or tuple(w.shape[2:]) != (1, 1):
            return "Conv filter is not 1x1"
        if int(attrs.get("group", 1)) != 1:
            return "grouped Conv"
    else:
        return f"used by {node.op_type}"
    m, n = matrix_shape(w)
    if max_rank(m, n) < 1:
        return f"too narrow ({m} x {n}): no rank saves values"
    return None


def matrix_shape(w: graph.Weight) -> tuple[int, int]:
    """(inputs m, outputs n) of the layer Y = X W the weight makes."""
    node = w.consumers[0].node
    if node.op_type == "Conv":
        return w.shape[1], w.shape[0]
    if node.op_type == "Gemm" and _attrs(node).get("transB", 0):
        return w.shape[1], w.shape[0]
    return w.shape[0], w.shape[1]


def weight_matrix(w: graph.Weight) -> np.ndarray:
    """The weight as the m x n matrix W of Y = X W (float64)."""
    values = w.array().astype(np.float64)
    node = w.consumers[0].node
    if node.op_type == "Conv":
        return values.reshape(values.shape[0], -1).T
    if node.op_type == "Gemm" and _attrs(node).get("transB", 0):
        return values.T
    return values


def factorable_weights(
    model: onnx.ModelProto, exclude: str | None = None, min_params: int = DEFAULT_MIN_PARAMS
) -> tuple[list[graph.Weight], list[Skipped]]:
    """The weights the pass can factorise, in model order, and the matrix weights it leaves (with why)."""
    selected, skipped = prunable_weights(model, exclude, min_params)
    selected = unique_names(selected, skipped)
    inputs = {i.name for i in model.graph.input}
    found = []
    for w in selected:
        reason = _why_not(w, inputs)
        if reason is None:
            found.append(w)
        else:
            skipped.append(Skipped(w.name, w.role, w.size, reason))
    return found, skipped


def layer_covariances(model: onnx.ModelProto, weights: Sequence[graph.Weight], data: Dataset) -> dict[str, Layer]:
    """Each weight's layer with its input covariance C = XᵀX on `data` (one model run for all);
    weights wider than ``MAX_D_IN`` inputs are left out."""
    known = {w.name for w in graph.weights(model, include_non_float=True)}
    layers = {}
    for w in weights:
        found = layers_for(w, 1, known, max_flops=float("inf"))
        if isinstance(found, list) and len(found) == 1 and found[0].d_in <= MAX_D_IN:
            layers[w.name] = found[0]
    if layers:
        accumulate_inputs(model, list(layers.values()), data)
        for layer in layers.values():
            layer.kept = None  # only the covariance is needed
    return layers


def covariance(layer: Layer | None) -> np.ndarray | None:
    return None if layer is None else layer.C * layer.scale


def factorize_weights(weights: Sequence[graph.Weight], layers: Mapping[str, Layer]) -> dict[str, Factorization]:
    """Every rank's factors of each weight: whitened by its layer's covariance when captured."""
    return {w.name: factorize(weight_matrix(w), covariance(layers.get(w.name))) for w in weights}


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _names_in(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer} | {v.name for v in (*g.input, *g.output, *g.value_info)}
    for node in g.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _rewrite(
    model: onnx.ModelProto, w: graph.Weight, a: np.ndarray, b: np.ndarray, taken: set[str]
) -> list[onnx.NodeProto]:
    """Replace w's consumer by two nodes computing X A then (X A) B; returns them (in order)."""
    node = w.consumers[0].node
    dtype = w.dtype
    base = w.name.replace("/", "_")
    a_name, b_name = _unique(f"{base}.lowrank_a", taken), _unique(f"{base}.lowrank_b", taken)
    mid = _unique(f"{base}.lowrank_mid", taken)
    label = node.name or w.name
    first_name, second_name = _unique(f"{label}/lowrank_a", taken), _unique(f"{label}/lowrank_b", taken)
    x, y = node.input[0], node.output[0]
    rank = a.shape[1]
    if node.op_type == "Conv":
        attrs = _attrs(node)
        first_attrs = {k: v for k, v in attrs.items() if k not in ("group",)}
        first_attrs["kernel_shape"] = [1, 1]
        a_array = a.T.reshape(rank, a.shape[0], 1, 1)
        b_array = b.T.reshape(b.shape[1], rank, 1, 1)
        first = helper.make_node("Conv", [x, a_name], [mid], name=first_name, **first_attrs)
        second = helper.make_node("Conv", [mid, b_name, *node.input[2:]], [y], name=second_name, kernel_shape=[1, 1])
    elif node.op_type == "Gemm":
        attrs = _attrs(node)
        a_array, b_array = a, b * float(attrs.get("alpha", 1.0))
        first = helper.make_node("MatMul", [x, a_name], [mid], name=first_name)
        bias = [c for c in node.input[2:3] if c]
        if bias:
            second = helper.make_node(
                "Gemm", [mid, b_name, *bias], [y], name=second_name, beta=float(attrs.get("beta", 1.0))
            )
        else:
            second = helper.make_node("MatMul", [mid, b_name], [y], name=second_name)
    else:
        a_array, b_array = a, b
        first = helper.make_node("MatMul", [x, a_name], [mid], name=first_name)
        second = helper.make_node("MatMul", [mid, b_name], [y], name=second_name)
    g = model.graph
    g.initializer.append(numpy_helper.from_array(a_array.astype(dtype), a_name))
    g.initializer.append(numpy_helper.from_array(b_array.astype(dtype), b_name))
    return [first, second]


def apply_ranks(
    model: onnx.ModelProto,
    factorizations: Mapping[str, Factorization],
    ranks: Mapping[str, int],
    layers: Mapping[str, Layer] | None = None,
    refit: bool = False,
    margin: float = MARGIN,
) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` with each weight named in `ranks` (rank > 0, within `margin`) written
    as two factors; `refit`: the second factor solved again by least squares on the layer's
    captured inputs (``refit_right``).  Returns (model, stats)."""
    layers = layers or {}
    model = graph.copy_model(model)
    by_name = {w.name: w for w in graph.weights(model)}
    model_params = sum(w.size for w in by_name.values())
    taken = _names_in(model)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[str] = set()
    tensors = []
    for name, w in by_name.items():
        rank, f = int(ranks.get(name, 0)), factorizations.get(name)
        if f is None or rank <= 0:
            continue
        m, n = f.shape
        if rank > max_rank(m, n, margin):
            continue
        a, b = f.factors(rank)
        cov = covariance(layers.get(name))
        matrix = weight_matrix(w)
        if refit and cov is not None:
            b = refit_right(matrix, a, cov)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            continue
        replaced[id(w.consumers[0].node)] = _rewrite(model, w, a, b, taken)
        dropped.add(name)
        tensors.append(
            {
                "name": name,
                "op": w.consumers[0].node.op_type,
                "shape": list(w.shape),
                "rank": rank,
                "full_rank": min(m, n),
                "params": m * n,
                "factored_params": factored_params(m, n, rank),
                "error": output_error(matrix, a @ b, cov),
                "method": "covariance" if cov is not None else "weight",
                "refit": bool(refit and cov is not None),
            }
        )
    g = model.graph
    nodes = []
    for node in g.node:
        nodes.extend(replaced.get(id(node), [node]))
    del g.node[:]
    g.node.extend(nodes)
    kept = [t for t in g.initializer if t.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(kept)
    kept_info = [v for v in g.value_info if v.name not in dropped]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    before = sum(t["params"] for t in tensors)
    after = sum(t["factored_params"] for t in tensors)
    stats = {
        "tensors": tensors,
        "totals": {
            "factored_tensors": len(tensors),
            "params_before": before,
            "params_after": after,
            "model_params_before": model_params,
            "model_params_after": model_params - before + after,
        },
        "warnings": [],
    }
    return model, stats


def check_rank_ratio(ratio: float) -> float:
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise UsageError(f"--rank-ratio must be in (0, 1], got {ratio}")
    return float(ratio)


def lowrank(
    model: onnx.ModelProto,
    rank_ratio: float,
    data: Dataset | None = None,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    refit: bool = False,
) -> tuple[onnx.ModelProto, dict]:
    """Every factorable weight at rank `rank_ratio` x its full rank, where that saves values
    (``MARGIN``); whitened (and, with `refit`, refit) on `data`'s inputs when given."""
    check_rank_ratio(rank_ratio)
    weights, skipped = factorable_weights(model, exclude, min_params)
    layers = layer_covariances(model, weights, data) if data is not None and weights else {}
    factorizations = factorize_weights(weights, layers)
    ranks = {}
    for w in weights:
        m, n = factorizations[w.name].shape
        rank = rank_for_ratio(m, n, rank_ratio)
        if rank <= max_rank(m, n):
            ranks[w.name] = rank
        else:
            skipped.append(Skipped(w.name, w.role, w.size, f"rank {rank} of {m} x {n} saves no values"))
    new_model, stats = apply_ranks(model, factorizations, ranks, layers, refit)
    stats["skipped"] = [s.as_dict() for s in skipped]
    stats["rank_ratio"] = rank_ratio
    stats["capture_runs"] = 1 if layers else 0
    return new_model, stats
