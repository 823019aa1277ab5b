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
from ..data import Dataset
from ..errors import UsageError
from ..evaluate import capture
from .channel_plan import (
    DEFAULT_ALIGN,
    DEFAULT_MAX_RATIO,
    NORMS,
    batchnorm_scale,
    channel_norms,
    global_keep,
    group_scores,
)
from .channels import Analysis, ChannelGroup, Sink, analyze
from .channels import constants as graph_constants
from .structured_refit import SinkRefit

# Input name -> one feed's shape (``Dataset.sample_shapes``): the dynamic dims MACs are counted at.
SampleShapes = Mapping[str, tuple[int, ...]] | None

__all__ = [
    "DEFAULT_ALIGN",
    "DEFAULT_MAX_RATIO",
    "Analysis",
    "analyze",
    "check_structured_options",
    "importance",
    "Pruner",
    "channel_statistics",
    "data_importance",
    "fold_removed_means",
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
        for member, unit in analysis.members(g):
            for s in member.sources:
                n = channel_norms(analysis.constants[s.weight], s.axis, norm)
                scale = _batchnorm_after(model, analysis, s.output)
                n = n * scale if scale is not None and scale.shape == n.shape else n
                per = n.reshape(-1, unit)
                norms.append(per.sum(axis=1) if norm == "l1" else np.sqrt((per * per).sum(axis=1)))
        scores.append(group_scores(norms))
    return scores


# --------------------------------------------------------------------------- data-aware


def _sink_key(sink: Sink) -> tuple[str, int, int]:
    return (sink.value, sink.value_axis, sink.unit)


def channel_statistics(
    model: onnx.ModelProto, groups: list[ChannelGroup], data: Dataset
) -> dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]]:
    """(mean, variance) of every channel the groups' sinks read, on `data` (one pass): per
    channel, or per channel and flattened position ([C, unit]) for a flatten's sinks."""
    keys = sorted({_sink_key(s) for g in groups for s in g.sinks})
    if not keys:
        return {}
    sums: dict[tuple, list] = {}
    for batch in capture(model, sorted({k[0] for k in keys}), data):
        for key in keys:
            name, axis, unit = key
            x = np.asarray(batch[name], np.float64)
            if unit == 1:
                rows = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
            else:
                rows = x.reshape(x.shape[0], -1)
            acc = sums.setdefault(key, [0, 0.0, 0.0])
            acc[0] += rows.shape[0]
            acc[1] = acc[1] + rows.sum(axis=0)
            acc[2] = acc[2] + np.einsum("ij,ij->j", rows, rows)
    found = {}
    for (name, axis, unit), (n, total, squares) in sums.items():
        mean = total / max(n, 1)
        var = np.maximum(squares / max(n, 1) - mean * mean, 0.0)
        found[(name, axis, unit)] = (mean.reshape(-1, unit), var.reshape(-1, unit))
    return found


def _rows_by_channel(weight: np.ndarray, axis: int, unit: int) -> np.ndarray:
    """The weight as [channels, unit, everything else] (the slices a sink reads per channel)."""
    moved = np.moveaxis(np.asarray(weight, np.float64), axis, 0)
    return moved.reshape(moved.shape[0] // unit, unit, -1)


def data_importance(analysis: Analysis, groups: list[ChannelGroup], stats) -> list[np.ndarray]:
    """Per channel: at each sink, the output error energy its removal leaves (variance x the
    squared norm of the weights that read it; the mean is folded into a bias) as a fraction
    of the sink's total, summed over the sinks.  Fractions compare across layers."""
    scores = []
    for g in groups:
        total = np.zeros(g.size)
        for member, unit in analysis.members(g):
            for sink in member.sinks:
                rows = _rows_by_channel(analysis.constants[sink.weight], sink.axis, sink.unit)
                _mean, var = stats[_sink_key(sink)]
                energy = (var * np.einsum("cuk,cuk->cu", rows, rows)).sum(axis=1)
                if energy.sum() > 0:
                    total += (energy / energy.sum()).reshape(-1, unit).sum(axis=1)
        scores.append(total)
    return scores


def _bias_target(model: onnx.ModelProto, analysis: Analysis, sink: Sink) -> tuple[str, float] | None:
    """(constant, sign) that absorbs a constant added to the sink's output channels: its own
    bias, the bias Add that alone reads it, or the running mean of the BatchNorm that does
    (subtracted).  None when there is none or it is shared."""
    consumers = graph.consumers_of(model.graph)
    node = next(n for n in model.graph.node if n.name == sink.node and n.output[0] == sink.output)

    def own(name: str) -> bool:
        return name in analysis.constants and name not in analysis.aliases and len(consumers.get(name, [])) == 1

    if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
        return (node.input[2], 1.0) if own(node.input[2]) else None
    users = consumers.get(sink.output, [])
    if len(users) != 1:
        return None
    user, _ = users[0]
    if user.op_type == "Add":
        other = [i for i in user.input if i != sink.output]
        if len(other) == 1 and own(other[0]) and analysis.constants[other[0]].ndim == 1:
            return other[0], 1.0
    if user.op_type == "BatchNormalization" and own(user.input[3]):
        return user.input[3], -1.0
    return None


def fold_removed_means(
    model: onnx.ModelProto,
    analysis: Analysis,
    groups: list[ChannelGroup],
    keep: Keep,
    stats,
    refit: SinkRefit | None = None,
) -> tuple[onnx.ModelProto, int]:
    """A copy of the model where each sink's bias absorbs the mean contribution of the channels
    `keep` removes (so a removed channel takes its average away, not its value), or, for the
    sinks `refit` covers, their kept weights and bias refit by least squares; returns it and
    the number of sinks that had no bias to absorb it."""
    deltas: dict[str, np.ndarray] = {}
    missing = 0
    refit_removed: dict[str, np.ndarray] = {}
    for gid, kept in analysis.effective(keep).items():
        g = analysis.groups[gid]
        removed = np.setdiff1d(np.arange(g.size), kept)
        for sink in g.sinks:
            if refit is not None and refit.covers(sink):
                refit_removed[sink.weight] = removed
                continue
            target = _bias_target(model, analysis, sink) if sink.op != "ConvTranspose" else None
            if target is None:
                missing += 1
                continue
            mean, _var = stats[_sink_key(sink)]
            rows = _rows_by_channel(analysis.constants[sink.weight], sink.axis, sink.unit)[removed]
            if sink.op == "Conv":  # [O, C, k...]: rows are [C, 1, O * taps]
                out = rows.reshape(len(removed), 1, analysis.constants[sink.weight].shape[0], -1).sum(axis=-1)
            else:
                out = rows
            delta = np.einsum("cu,cuo->o", mean[removed], out)
            name, sign = target
            if analysis.constants[name].size != delta.size:
                missing += 1
                continue
            deltas[name] = deltas.get(name, 0.0) + sign * delta
    weights: dict[str, np.ndarray] = {}
    if refit_removed:
        weights, refit_deltas = refit.refit(refit_removed)
        for name, delta in refit_deltas.items():
            deltas[name] = deltas.get(name, 0.0) + delta
    if not deltas and not weights:
        return model, missing
    out_model = graph.copy_model(model)
    for name, values in weights.items():
        _replace_constant(out_model, name, lambda v, new=values: new)
    for name, delta in deltas.items():
        _replace_constant(out_model, name, lambda v, d=delta: (v + d.reshape(v.shape)).astype(v.dtype))
    return out_model, missing


def selectable(analysis: Analysis, exclude: str | None = None, heads: bool = False) -> list[ChannelGroup]:
    """The prunable groups, without those with a source weight matching `exclude`, and without
    attention heads unless `heads` (a head is a large step: softmax attention loses more than
    the refit restores, measured in benchmarks/README.md)."""
    pattern = re.compile(exclude) if exclude else None
    found = []
    for g in analysis.prunable():
        weights = [s.weight for m, _unit in analysis.members(g) for s in m.sources]
        if (pattern and any(pattern.search(w) for w in weights)) or (g.linked and not heads):
            continue
        found.append(g)
    return found


def plan_keep(
    groups: list[ChannelGroup],
    scores,
    sparsity: float,
    max_ratio: float = DEFAULT_MAX_RATIO,
    align: int = 1,
) -> dict[int, np.ndarray]:
    """Kept channels of each group that loses some, for a global channel ratio `sparsity`
    (kept counts rounded to multiples of `align`, see ``channel_plan.aligned_kept``)."""
    keep = global_keep(scores, sparsity, max_ratio, [g.blocks for g in groups], align)
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


def _set_concat_input(model: onnx.ModelProto, concat_output: str, index: int, size: int) -> None:
    """Replace input `index` of the Concat producing `concat_output` by the constant [size]."""
    name = f"{concat_output}_structured_{index}"
    model.graph.initializer.append(numpy_helper.from_array(np.array([size], np.int64), name))
    for node in model.graph.node:
        if node.op_type == "Concat" and node.output[0] == concat_output:
            node.input[index] = name


def remove_channels(model: onnx.ModelProto, analysis: Analysis, keep: Keep) -> onnx.ModelProto:
    """A copy of the model with the channels not in `keep` removed from their groups."""
    out = graph.copy_model(model)
    keep = analysis.effective(keep)
    for name, cuts in _slices(analysis, keep).items():

        def take(values, cuts=cuts):
            for axis, kept in cuts:
                values = np.take(values, kept, axis=axis)
            return np.ascontiguousarray(values)

        _replace_constant(out, name, take)
    sizes = {gid: len(kept) for gid, kept in keep.items()}
    targets: dict[str, dict[int, int]] = {}
    for gid in keep:
        for how in analysis.groups[gid].reshape_targets:
            if how[0] == "const":
                _kind, name, index = how
                if np.asarray(analysis.constants[name]).ravel()[index] > 0:  # not -1 (inferred) or 0 (copied)
                    targets.setdefault(name, {})[index] = sizes[gid]
            elif analysis.slot_group.get(how[3]) != gid:  # x.size(i) of a value that keeps its size
                _set_concat_input(out, how[1], how[2], sizes[gid])
    for name, entries in targets.items():

        def resized(values, entries=entries):
            values = np.array(values)
            flat = values.reshape(-1)
            for index, size in entries.items():
                flat[index] = size
            return values

        _replace_constant(out, name, resized)
    new_dims = {name: tuple(values.shape) for name, values in graph_constants(out).items()}
    for gid, kept in keep.items():
        for sink in analysis.groups[gid].expanded:
            new_dims[sink.value] = (None, len(kept) * sink.unit)
    depthwise = {output: sizes[gid] for gid in keep for output in analysis.groups[gid].depthwise}
    for node in out.graph.node:
        if node.op_type == "Conv" and node.output[0] in depthwise:
            for a in node.attribute:
                if a.name == "group":
                    a.i = depthwise[node.output[0]]
    for vi in list(out.graph.value_info) + list(out.graph.output) + list(out.graph.input):
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
    for name, cuts in _slices(analysis, analysis.effective(keep)).items():
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
    # Initializers and Constant-node tensors alike (exporters put weights in either).
    return int(
        sum(
            np.prod(r.proto.dims, dtype=np.int64)
            for r in graph.iter_tensors(model)
            if r.proto.data_type in graph.FLOAT_TYPES
        )
    )


def _macs(model: onnx.ModelProto, sample_shapes: SampleShapes = None) -> int:
    return int(sum(row["macs"] or 0 for row in graph.node_macs(model, sample_shapes)))


def _macs_unknown(model: onnx.ModelProto, sample_shapes: SampleShapes = None) -> int:
    """Layers whose MACs shape inference cannot tell (dynamic spatial sizes and no data to
    fix them): not in ``_macs``."""
    return sum(1 for row in graph.node_macs(model, sample_shapes) if row["macs"] is None)


def structured_stats(
    model, pruned, analysis: Analysis, groups: list[ChannelGroup], keep: Keep, sample_shapes: SampleShapes = None
) -> dict:
    """JSON-able: per prunable group its channels before/after; blocked groups that have a
    source, with why; params and MACs (batch 1) before and after."""
    rows = []
    for g in groups:
        sources = sorted({s.weight for m, _unit in analysis.members(g) for s in m.sources})
        kept = int(len(keep[g.id])) if g.id in keep else g.size
        rows.append({**g.describe(), "sources": sources, "heads": bool(g.linked), "kept": kept, "blocked": None})
    untouchable = [g.describe() for g in analysis.groups if g.sources and not g.prunable and g.size > 1]
    before, after = _params(model), _params(pruned)
    macs_before, macs_after = _macs(model, sample_shapes), _macs(pruned, sample_shapes)
    channels = sum(g.size for g in groups)
    removed = sum(g.size - len(k) for gid, k in keep.items() for g in [analysis.groups[gid]])
    return {
        "groups": rows,
        "kept_channels": {str(gid): [int(i) for i in kept] for gid, kept in keep.items()},
        "untouchable": untouchable,
        "totals": {
            "prunable_groups": len(groups),
            "channels": channels,
            "removed_channels": int(removed),
            "params_before": before,
            "params_after": after,
            "macs_before": macs_before,
            "macs_unknown_layers": _macs_unknown(model, sample_shapes),
            "macs_after": macs_after,
        },
        "warnings": [],
    }


def channel_costs(
    model: onnx.ModelProto, analysis: Analysis, groups: list[ChannelGroup], sample_shapes: SampleShapes = None
) -> list[float]:
    """MACs (batch 1, dynamic input dims from `sample_shapes`) one channel of each group costs:
    its share of every source's and sink's multiply-accumulates (none where shapes are unknown)."""
    macs = {row["node"]: row["macs"] for row in graph.node_macs(model, sample_shapes)}
    by_output = {}
    for i, node in enumerate(model.graph.node):
        by_output[node.output[0]] = macs.get(node.name or f"{node.op_type}_{i}")
    costs = []
    for g in groups:
        total = 0.0
        for member, _unit in analysis.members(g):
            for output in [s.output for s in member.sources] + [s.output for s in member.sinks]:
                m = by_output.get(output)
                total += (m if m is not None else 0) / g.size
        costs.append(total if total > 0 else 1.0)
    return costs


class Pruner:
    """One model's analysis and channel ranking, and candidates built from it: with
    calibration data the ranking is ``data_importance`` and removed channels' means are folded
    into biases; without, filter norms."""

    def __init__(
        self,
        model: onnx.ModelProto,
        calib: Dataset | None = None,
        norm: str = "l2",
        max_ratio: float = DEFAULT_MAX_RATIO,
        exclude: str | None = None,
        align: int = DEFAULT_ALIGN,
        cost: str = "macs",
        refit: bool = True,
        heads: bool = False,
    ):
        self.model, self.max_ratio, self.align = model, max_ratio, align
        self.sample_shapes = calib.sample_shapes() if calib is not None else None
        self.analysis = analyze(model)
        self.groups = selectable(self.analysis, exclude, heads)
        members = [m for g in self.groups for m, _unit in self.analysis.members(g)]
        self.stats = channel_statistics(model, members, calib) if calib is not None and self.groups else None
        self.refit = None
        if self.stats is not None and refit:
            self.refit = SinkRefit(
                model, self.analysis, members, calib, lambda sink: _bias_target(model, self.analysis, sink)
            )
        if self.stats is not None:
            self.scores = data_importance(self.analysis, self.groups, self.stats)
        else:
            self.scores = importance(model, self.analysis, self.groups, norm) if self.groups else []
        if cost == "macs" and self.groups:
            # A channel's importance per MAC it costs: what goes first is cheap to lose and
            # expensive to run (cost is uniform within a group: only the groups' balance moves).
            costs = channel_costs(model, self.analysis, self.groups, self.sample_shapes)
            self.scores = [s / c for s, c in zip(self.scores, costs)]
        self.unfolded = 0

    def keep(self, ratio: float) -> dict[int, np.ndarray]:
        return plan_keep(self.groups, self.scores, ratio, self.max_ratio, self.align) if self.groups else {}

    def prepared(self, keep: Keep) -> onnx.ModelProto:
        """The full-size model with the compensation for removing the channels not in `keep`
        (means folded, sinks refit) applied: its masked twin is the pruned model."""
        if self.stats is None or not keep:
            return self.model
        model, self.unfolded = fold_removed_means(self.model, self.analysis, self.groups, keep, self.stats, self.refit)
        return model

    def build(self, keep: Keep) -> onnx.ModelProto:
        return remove_channels(self.prepared(keep), self.analysis, keep)

    def report(self, pruned: onnx.ModelProto, keep: Keep) -> dict:
        stats = structured_stats(self.model, pruned, self.analysis, self.groups, keep, self.sample_shapes)
        stats["importance"] = "data" if self.stats is not None else "norm"
        stats["head_groups_left"] = sum(1 for g in self.analysis.prunable() if g.linked and g not in self.groups)
        if not self.groups:
            stats["warnings"].append("no channel group can be pruned (see 'untouchable')")
        return stats


def structured_prune(
    model: onnx.ModelProto,
    sparsity: float,
    norm: str = "l2",
    max_ratio: float = DEFAULT_MAX_RATIO,
    exclude: str | None = None,
    calib: Dataset | None = None,
    align: int = DEFAULT_ALIGN,
    heads: bool = False,
) -> tuple[onnx.ModelProto, dict]:
    """Remove the `sparsity` fraction of the prunable channels with the lowest importance
    (with `calib`: measured on it, and the removed channels' means folded into biases)."""
    check_structured_options(sparsity, max_ratio, norm)
    pruner = Pruner(model, calib, norm, max_ratio, exclude, align, heads=heads)
    keep = pruner.keep(sparsity)
    pruned = pruner.build(keep)
    stats = pruner.report(pruned, keep)
    return pruned, stats
