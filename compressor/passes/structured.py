"""Structured pruning: whole output channels (Conv filters, Gemm/MatMul neurons) removed.

The graph's channel groups (``channels.analyze``) say which channels go together and which
tensors carry them; ``channel_plan`` picks the channels (filter norms, one global ranking,
a cap per group).  ``remove_channels`` slices every weight, bias and per-channel parameter of a
pruned group along its axis, the rows a flatten feeds, the `group` of depthwise convs and the
shapes in ``value_info``; tensors and MACs shrink, and ONNX Runtime runs it as any model.

``mask_channels`` is the same choice as zeros: every Conv/Gemm/MatMul weight slice that
writes or reads a removed channel set to 0, shapes unchanged.  Both models give the same
outputs (up to float rounding): that is what the tests check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from .. import graph
from ..errors import UsageError
from .channel_plan import DEFAULT_MAX_RATIO, NORMS, batchnorm_scale, channel_norms, global_keep, group_scores
from .channels import Analysis, ChannelGroup, analyze
from .channels import constants as graph_constants

__all__ = [
    "DEFAULT_MAX_RATIO",
    "Analysis",
    "analyze",
    "check_structured_options",
    "importance",
    "mask_channels",
    "plan_keep",
    "remove_channels",
    "selectable",
    "structured_prune",
    "structured_stats",
]

Keep = Mapping[int, np.ndarray]  # group id -> sorted kept channel indices


def check_structured_options(sparsity: float, max_ratio: float, norm: str) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise UsageError(f"--sparsity must be in [0, 1), got {sparsity}")
    if not 0.0 < max_ratio < 1.0:
        raise UsageError(f"the per-group cap must be in (0, 1), got {max_ratio}")
    if norm not in NORMS:
        raise UsageError(f"--norm must be one of {', '.join(NORMS)}, got {norm}")


def _batchnorm_after(model: onnx.ModelProto, analysis: Analysis, output: str) -> np.ndarray | None:
    """|gamma| / sqrt(var + eps) of the BatchNorm that alone reads `output` (through at most
    one constant bias Add), else None."""
    consumers = graph.consumers_of(model.graph)
    value = output
    for _ in range(2):
        users = consumers.get(value, [])
        if len(users) != 1:
            return None
        node, _index = users[0]
        if node.op_type == "BatchNormalization":
            gamma, var = analysis.constants.get(node.input[1]), analysis.constants.get(node.input[4])
            if gamma is None or var is None:
                return None
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            return batchnorm_scale(gamma, var, eps)
        if node.op_type != "Add" or not any(i in analysis.constants for i in node.input):
            return None
        value = node.output[0]
    return None


def importance(model: onnx.ModelProto, analysis: Analysis, groups: list[ChannelGroup], norm: str = "l2"):
    """One score per channel of each group: its sources' filter norms (times the BatchNorm
    scale when one follows), normalised per source, averaged."""
    scores = []
    for g in groups:
        norms = []
        for s in g.sources:
            n = channel_norms(analysis.constants[s.weight], s.axis, norm)
            scale = _batchnorm_after(model, analysis, s.output)
            norms.append(n * scale if scale is not None and scale.shape == n.shape else n)
        scores.append(group_scores(norms))
    return scores


def selectable(analysis: Analysis, exclude: str | None = None) -> list[ChannelGroup]:
    """The prunable groups, without those with a source weight matching `exclude`."""
    pattern = re.compile(exclude) if exclude else None
    return [g for g in analysis.prunable() if not (pattern and any(pattern.search(s.weight) for s in g.sources))]


def plan_keep(
    groups: list[ChannelGroup], scores, sparsity: float, max_ratio: float = DEFAULT_MAX_RATIO
) -> dict[int, np.ndarray]:
    """Kept channels of each group that loses some, for a global channel ratio `sparsity`."""
    keep = global_keep(scores, sparsity, max_ratio, [g.blocks for g in groups])
    return {g.id: k for g, k in zip(groups, keep) if len(k) < g.size}


def _slices(analysis: Analysis, keep: Keep) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Stored constant -> [(axis, kept indices)] for every pruned group it carries."""
    found: dict[str, list[tuple[int, np.ndarray]]] = {}
    for gid, kept in keep.items():
        g = analysis.groups[gid]
        for name, axis in g.slots:
            if name in analysis.constants and name not in analysis.aliases:
                found.setdefault(name, []).append((axis, kept))
        for sink in g.expanded:
            rows = (kept[:, None] * sink.unit + np.arange(sink.unit)[None, :]).ravel()
            found.setdefault(sink.weight, []).append((sink.axis, rows))
    return found


def _replace_constant(model: onnx.ModelProto, name: str, values_of) -> None:
    for t in model.graph.initializer:
        if t.name == name:
            new = numpy_helper.from_array(values_of(numpy_helper.to_array(t)), name)
            t.CopyFrom(new)
            return
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(values_of(numpy_helper.to_array(a.t)), name))
            return


def remove_channels(model: onnx.ModelProto, analysis: Analysis, keep: Keep) -> onnx.ModelProto:
    """A copy of the model with the channels not in `keep` removed from their groups."""
    out = graph.copy_model(model)
    for name, cuts in _slices(analysis, keep).items():

        def take(values, cuts=cuts):
            for axis, kept in cuts:
                values = np.take(values, kept, axis=axis)
            return np.ascontiguousarray(values)

        _replace_constant(out, name, take)
    sizes = {gid: len(kept) for gid, kept in keep.items()}
    new_dims = {name: tuple(values.shape) for name, values in graph_constants(out).items()}
    for gid, kept in keep.items():
        for sink in analysis.groups[gid].expanded:
            new_dims[sink.value] = (None, len(kept) * sink.unit)
    depthwise = {n: sizes[gid] for gid in keep for n in analysis.groups[gid].depthwise}
    for node in out.graph.node:
        if node.name in depthwise and node.op_type == "Conv":
            for a in node.attribute:
                if a.name == "group":
                    a.i = depthwise[node.name]
    for vi in list(out.graph.value_info) + list(out.graph.output):
        dims = vi.type.tensor_type.shape.dim
        known = new_dims.get(analysis.aliases.get(vi.name, vi.name))
        for axis, d in enumerate(dims):
            gid = analysis.slot_group.get((vi.name, axis))
            if not d.HasField("dim_value"):
                continue
            if gid in sizes:
                d.dim_value = sizes[gid]
            elif known is not None and axis < len(known) and known[axis] is not None:
                d.dim_value = known[axis]
    return out


def mask_channels(model: onnx.ModelProto, analysis: Analysis, keep: Keep) -> onnx.ModelProto:
    """A copy of the model, same shapes, with the weight slices of the removed channels zeroed
    (every Conv/Gemm/MatMul weight that writes or reads them, the rows a flatten feeds)."""
    out = graph.copy_model(model)
    zero: dict[str, list[tuple[int, np.ndarray]]] = {}
    for name, cuts in _slices(analysis, keep).items():
        weight_cuts = [(axis, kept) for axis, kept in cuts if (name, axis) in analysis.weight_slots]
        if weight_cuts:
            zero[name] = weight_cuts
    for name, cuts in zero.items():

        def zeroed(values, cuts=cuts):
            values = np.array(values)
            for axis, kept in cuts:
                gone = np.setdiff1d(np.arange(values.shape[axis]), kept)
                index = [slice(None)] * values.ndim
                index[axis] = gone
                values[tuple(index)] = 0
            return values

        _replace_constant(out, name, zeroed)
    return out


def _params(model: onnx.ModelProto) -> int:
    return int(
        sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer if t.data_type in graph.FLOAT_TYPES)
    )


def _macs(model: onnx.ModelProto) -> int:
    return int(sum(row["macs"] or 0 for row in graph.node_macs(model)))


def structured_stats(model, pruned, analysis: Analysis, groups: list[ChannelGroup], keep: Keep) -> dict:
    """JSON-able: per prunable group its channels before/after; blocked groups that have a
    source, with why; params and MACs (batch 1) before and after."""
    rows = [{**g.describe(), "kept": int(len(keep[g.id])) if g.id in keep else g.size, "blocked": None} for g in groups]
    untouchable = [g.describe() for g in analysis.groups if g.sources and not g.prunable and g.size > 1]
    before, after = _params(model), _params(pruned)
    macs_before, macs_after = _macs(model), _macs(pruned)
    channels = sum(g.size for g in groups)
    removed = sum(g.size - len(k) for gid, k in keep.items() for g in [analysis.groups[gid]])
    return {
        "groups": rows,
        "untouchable": untouchable,
        "totals": {
            "prunable_groups": len(groups),
            "channels": channels,
            "removed_channels": int(removed),
            "params_before": before,
            "params_after": after,
            "macs_before": macs_before,
            "macs_after": macs_after,
        },
        "warnings": [],
    }


def structured_prune(
    model: onnx.ModelProto,
    sparsity: float,
    norm: str = "l2",
    max_ratio: float = DEFAULT_MAX_RATIO,
    exclude: str | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Remove the `sparsity` fraction of the prunable channels with the lowest importance."""
    check_structured_options(sparsity, max_ratio, norm)
    analysis = analyze(model)
    groups = selectable(analysis, exclude)
    keep = plan_keep(groups, importance(model, analysis, groups, norm), sparsity, max_ratio) if groups else {}
    pruned = remove_channels(model, analysis, keep)
    stats = structured_stats(model, pruned, analysis, groups, keep)
    stats["sparsity"] = sparsity
    if not groups:
        stats["warnings"].append("no channel group can be pruned (see 'untouchable')")
    return pruned, stats
