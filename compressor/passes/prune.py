"""prune: magnitude pruning (global, layer-wise, random) and sensitivity-guided ratios.

The first pass of the pipeline (Deep Compression's first stage).  Weights with the
smallest magnitudes are set to exactly zero; the graph, names, dtypes and every
non-selected tensor stay as they were, so the output runs in ONNX Runtime unchanged and
pack later codes the zeros with its sparse index.

Which tensors (``prunable_weights``): ``Weight.is_matrix`` (conv / conv-transpose filters,
Gemm B, MatMul constant operand, recurrent W and R), at least ``min_params`` values, name
not matching ``exclude``, finite values.  Gather embeddings (and tensors used both as an
embedding and as a MatMul/Gemm operand) only with ``include_embeddings``.  A tensor shared
by several nodes is one ``Weight``, so it is pruned once and every user sees the same zeros.

Scopes, for a requested sparsity S:

* ``global``: one magnitude threshold over all selected tensors together, so exactly
  ``round(S * total)`` values are zero afterwards (Deep Compression's setting: large,
  redundant layers lose more than small sensitive ones).
* ``layer``: ``round(S * n)`` zeros in every selected tensor of n values.
* ``random``: ``round(S * n)`` zeros per tensor at seeded random positions; the baseline
  that shows how much choosing by magnitude matters.

Exactness: values are ranked by ``|w|`` in float32, ties broken by flat position (within a
tensor, then by the order of the tensors: the global concatenation).  The threshold comes
from ``np.partition`` (linear time), never a full sort; the global scope holds one float32
magnitude buffer the size of the selected weights, filled tensor by tensor.  Zeros already
present have the smallest magnitude, so they count towards the target: pruning a pruned
model to a higher ratio prunes only the difference.  When a tensor (or the selection)
already holds more zeros than requested, they stay (nothing is ever un-pruned) and the
stats say so.

Memory: besides the caller's model, the pass holds the output model, the float32
magnitude buffer (global scope, freed before the output is written) and one tensor's
temporaries; the output is built with each pruned tensor stored once (``_OutputModel``).
~100 M parameters (391 MB) prune in ~2.3 s with a peak RSS of ~1.04 GB, the input model
included (benchmarks/bench_prune.py).

``prune_with_ratios`` applies per-tensor ratios; the measured search that chooses them within
an accuracy budget is ``compressor.search.prune_budget.prune_to_budget``.

Stats (JSON-able): per tensor name, role, shape, params, zeros before/after, sparsity;
totals; nonzero MACs per Conv/Gemm/MatMul node (``graph.node_macs`` scaled by the density
of the node's pruned weight).

Where things live: the pure-numpy mask math in ``magnitude.py`` and the selection of tensors
in ``selection.py`` (both re-exported here).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable

import numpy as np
import onnx

from .. import graph
from ..errors import UsageError
from ..variants import weight_key
from .magnitude import (  # noqa: F401  (re-exported: prune's pure-numpy layer, see magnitude.py)
    SCOPES,
    Cut,
    CutApplier,
    check_ratio,
    check_scope,
    check_sparsity,
    find_cut,
    global_magnitude_masks,
    layer_magnitude_mask,
    layer_magnitude_masks,
    layer_pruned,
    magnitude_masks,
    magnitudes,
    random_mask,
    random_masks,
    smallest_k_masks,
    target_zeros,
)
from .selection import DEFAULT_MIN_PARAMS, EMBEDDING_ROLES, Skipped, prunable_weights, unique_names  # noqa: F401

# =========================================================================== the pass


def _tensor_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class _OutputModel:
    """The pass's output model, built so that each pruned tensor is held once.

    A copy of the input in which the selected main-graph initializers start as stubs (name,
    type, dims) and receive their values once: copying them and then replacing the bytes
    would hold every pruned tensor twice (protobuf keeps replaced bytes in the message's
    arena until the whole model is freed).  Other selected tensors (Constant nodes,
    subgraph initializers; rare and small) are copied and overwritten.
    """

    def __init__(self, model: onnx.ModelProto, selected: list[graph.Weight]):
        self.stub_keys = {weight_key(w) for w in selected if w.ref.kind == "initializer" and not w.ref.graph_path}
        self.model = graph.skeleton(model, {key[2] for key in self.stub_keys})
        self.targets = {weight_key(w): w.proto for w in graph.weights(self.model)}
        self.filled: set[tuple] = set()

    def store(self, w: graph.Weight, values: np.ndarray | None) -> None:
        """The new values of a selected weight (None: unchanged, keep the original bytes)."""
        key = weight_key(w)
        target = self.targets[key]
        self.filled.add(key)
        if values is None:
            if key in self.stub_keys:
                target.CopyFrom(w.proto)
            return
        stub = key in self.stub_keys
        if sys.byteorder == "little" and values.dtype == w.dtype and (stub or target.HasField("raw_data")):
            target.raw_data = np.ascontiguousarray(values).tobytes()
        else:
            graph.set_tensor_values(target, values)

    def finish(self) -> onnx.ModelProto:
        missing = self.stub_keys - self.filled
        if missing:  # a stub without data would be an invalid model: never hand it out
            raise RuntimeError(f"pruned tensors not written: {sorted(k[2] for k in missing)}")
        return self.model


def _apply_mask(values: np.ndarray, mask: np.ndarray, zeros_before: int) -> tuple[int, np.ndarray | None]:
    """Zero the masked entries: (zeros after, the new values or None when nothing changed)."""
    flat = values.reshape(-1)
    if not flat.flags.writeable:
        flat = flat.copy()
    np.putmask(flat, mask.reshape(-1), 0)
    zeros_after = int(np.count_nonzero(flat == 0))
    # Only nonzeros are ever written, so the count says whether anything changed.
    return zeros_after, (flat.reshape(values.shape) if zeros_after != zeros_before else None)


def _zero_count(values: np.ndarray) -> int:
    return int(np.count_nonzero(values == 0))


def _prune_weights(
    selected: list[graph.Weight],
    output: _OutputModel,
    scope: str,
    sparsity: float | None,
    seed: int,
    ratios: dict[str, float] | None = None,
    compensate=None,
) -> tuple[list[dict], float | None]:
    """Prune the selected weights (of the input model) into `output`; per-tensor rows and
    (global scope) the threshold.  `compensate(name, pruned)` (layer scope): see compensate.py."""
    rows: list[dict] = []
    threshold = None
    if scope == "global":
        total = sum(w.size for w in selected)
        k = target_zeros(sparsity, total)
        # Pass 1: the magnitude buffer, one tensor at a time (never all arrays at once).
        buffer = np.empty(total, dtype=np.float32)
        offset = 0
        for w in selected:
            magnitudes(w.array(), out=buffer[offset : offset + w.size])
            offset += w.size
        cut = find_cut(buffer, k)
        del buffer
        threshold = cut.threshold if cut.k else None
        applier = CutApplier(cut)
        # Pass 2: masks in the same order, so ties go to the first positions of the concatenation.
        for w in selected:
            values = w.array()
            before = _zero_count(values)
            zeros_after, new_values = _apply_mask(values, applier.mask(magnitudes(values)), before)
            output.store(w, new_values)
            rows.append(_row(w, before, zeros_after))
        return rows, threshold
    for w in selected:
        values = w.array()
        before = _zero_count(values)
        ratio = ratios[w.name] if ratios is not None else sparsity
        if scope == "layer":
            mask = layer_magnitude_mask(values, ratio)
        else:
            mask = random_mask(values, ratio, np.random.default_rng([seed, _tensor_key(w.name)]))
        zeros_after, new_values = _apply_mask(values, mask, before)
        refit = compensate is not None and new_values is not None and w.name in compensate
        if refit:
            new_values = compensate(w.name, new_values)
        output.store(w, new_values)
        row = _row(w, before, zeros_after)
        if ratios is not None:
            row["ratio"] = ratio
        if refit:
            row["compensated"] = True
        rows.append(row)
    return rows, threshold


def _row(w: graph.Weight, zeros_before: int, zeros_after: int) -> dict:
    row = {
        "name": w.name,
        "role": w.role,
        "shape": list(w.shape),
        "params": w.size,
        "zeros_before": zeros_before,
        "zeros_after": zeros_after,
        "sparsity_before": zeros_before / w.size if w.size else 0.0,
        "sparsity": zeros_after / w.size if w.size else 0.0,
    }
    if w.ref.graph_path:
        row["graph"] = w.ref.graph_path  # a weight inside an If/Loop body
    return row


def mac_stats(model: onnx.ModelProto, densities: dict[str, float], weights_to_strip: Iterable[str] = ()) -> dict:
    """MACs per Conv/ConvTranspose/Gemm/MatMul node at batch 1, and nonzero MACs (scaled by the
    density of the node's weight, when the weight is one of `densities`)."""
    try:
        table = graph.node_macs(graph.skeleton(model, set(weights_to_strip)))
    except Exception:  # shape inference is best effort
        table = []
    nodes = []
    total = nonzero = 0
    for row in table:
        density = densities.get(row["weight"], 1.0) if row["weight"] else 1.0
        nz = None if row["macs"] is None else int(round(row["macs"] * density))
        nodes.append({**row, "density": density, "nonzero_macs": nz})
        if row["macs"] is not None:
            total += row["macs"]
            nonzero += nz
    return {"nodes": nodes, "total_macs": total, "total_nonzero_macs": nonzero}


def _weight_aliases(model: onnx.ModelProto, selected: list[graph.Weight]) -> dict[str, str]:
    """Value name (as a node input in the main graph) -> weight name, following Identity nodes."""
    alias = {w.name: w.name for w in selected}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in alias:
            alias[node.output[0]] = alias[node.input[0]]
    return alias


def _finish_stats(model, scope, sparsity, seed, rows, skipped, threshold, warnings, selected) -> dict:
    params = sum(r["params"] for r in rows)
    zeros_before = sum(r["zeros_before"] for r in rows)
    zeros_after = sum(r["zeros_after"] for r in rows)
    density_by_weight = {r["name"]: 1.0 - r["sparsity"] for r in rows}
    densities = {value: density_by_weight[w] for value, w in _weight_aliases(model, selected).items()}
    all_float = graph.weights(model)
    model_params = sum(w.size for w in all_float)
    stats = {
        "scope": scope,
        "requested_sparsity": sparsity,
        "seed": seed,
        "threshold": threshold,
        "tensors": rows,
        "skipped": [s.as_dict() for s in skipped],
        "totals": {
            "pruned_tensors": len(rows),
            "params": params,
            "zeros_before": zeros_before,
            "zeros_after": zeros_after,
            "sparsity_before": zeros_before / params if params else 0.0,
            "sparsity": zeros_after / params if params else 0.0,
            "model_float_params": model_params,
            "model_sparsity": zeros_after / model_params if model_params else 0.0,
        },
        "macs": mac_stats(
            model, densities, [w.name for w in selected if w.ref.kind == "initializer" and not w.ref.graph_path]
        ),
        "warnings": warnings,
    }
    return stats


def prune(
    model: onnx.ModelProto,
    sparsity: float,
    scope: str = "global",
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    seed: int = 0,
    include_embeddings: bool = False,
) -> tuple[onnx.ModelProto, dict]:
    """Magnitude (or random) pruning to `sparsity` over the prunable weights; returns (new model, stats).

    The input model is not modified.  With nothing prunable the model is returned unchanged
    (a copy) and ``stats["warnings"]`` says why.
    """
    sparsity = check_sparsity(sparsity)
    scope = check_scope(scope)
    selected, skipped = prunable_weights(model, exclude, min_params, include_embeddings)
    warnings: list[str] = []
    if not selected:
        warnings.append(
            "nothing to prune: no weight tensor qualifies (matrix weights with at least "
            f"{min_params} values, not excluded); the model is unchanged"
        )
        model = graph.copy_model(model)
        return model, _finish_stats(model, scope, sparsity, seed, [], skipped, None, warnings, [])
    output = _OutputModel(model, selected)
    rows, threshold = _prune_weights(selected, output, scope, sparsity, seed)
    model = output.finish()
    total = sum(r["params"] for r in rows)
    before = sum(r["zeros_before"] for r in rows)
    if scope == "global" and before > target_zeros(sparsity, total):
        warnings.append(
            f"the pruned tensors already have sparsity {before / total:.4f} > requested {sparsity:g}; "
            "existing zeros are kept"
        )
    elif scope != "global":
        over = [r["name"] for r in rows if r["zeros_before"] > target_zeros(sparsity, r["params"])]
        if over:
            warnings.append(
                f"{len(over)} tensor(s) already sparser than {sparsity:g} keep their zeros: {', '.join(over[:5])}"
                + (" ..." if len(over) > 5 else "")
            )
    return model, _finish_stats(model, scope, sparsity, seed, rows, skipped, threshold, warnings, selected)


def prune_with_ratios(
    model: onnx.ModelProto,
    ratios: dict[str, float],
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    include_embeddings: bool = False,
    compensate=None,
) -> tuple[onnx.ModelProto, dict]:
    """Layer-wise magnitude pruning with one ratio per tensor name (missing names: ratio 0);
    `compensate`: a ``compensate.Compensator`` refitting the kept weights."""
    selected, skipped = prunable_weights(model, exclude, min_params, include_embeddings)
    unknown = set(ratios) - {w.name for w in selected}
    if unknown:
        raise UsageError(f"not prunable tensors in ratios: {', '.join(sorted(unknown))}")
    full = {w.name: check_ratio(ratios.get(w.name, 0.0)) for w in selected}
    output = _OutputModel(model, selected)
    rows, _ = _prune_weights(selected, output, "layer", None, 0, ratios=full, compensate=compensate)
    model = output.finish()
    return model, _finish_stats(model, "per-tensor", None, 0, rows, skipped, None, [], selected)
