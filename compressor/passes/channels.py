"""Channel groups of a graph: which output channels can be removed together, and where.

Structured pruning removes a channel from every tensor that carries it.  A *slot* is one axis
of one value, ``(name, axis)``; each node relates the slots of its inputs and outputs (a
Conv's output channel axis is its filter's axis 0 and its bias's axis 0, an Add's inputs share
the output's axes, a depthwise Conv ties its input channel to its output channel, ...).  The
slots joined by a union-find are a *channel group*: one index along all of them is one
channel.  A group can be pruned when

* some Conv / ConvTranspose / Gemm / MatMul with a constant weight produces it (a *source*),
* every node that touches it is understood: a node's slots that its rule does not relate are
  *blocked*, and so is every slot of an unknown op, of a node with subgraphs, of a value a
  subgraph reads, of a graph input or output.  Reshape/Flatten across the channel axis (except
  the flatten into a constant-weight Gemm/MatMul, an *expanded sink*), Concat, Split, Slice,
  LayerNormalization and Softmax over the channel axis, reductions over it: blocked.

Removing channel c of a group then changes nothing but that channel: every node on the way is
channel-wise, and every exit from the group is a weight slice that is removed with it (a
Conv's input-channel slice, a Gemm/MatMul row, a flatten's block of rows).  The same model with
those weight slices set to zero (``mask`` in ``passes.structured``) gives the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .. import graph

Slot = tuple[str, int]

ELEMENTWISE = frozenset(
    "Add Sub Mul Div Pow Max Min Sum Mean Where PRelu Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor "
    "Mod BitShift".split()
)
UNARY = frozenset(
    "Relu LeakyRelu Sigmoid Tanh Erf Exp Log Abs Neg Sqrt Reciprocal Floor Ceil Round Sign Softplus Softsign "
    "HardSigmoid HardSwish Elu Selu Celu Gelu Mish Clip Identity Cast Sin Cos Not IsNaN IsInf ThresholdedRelu "
    "Swish".split()
)
POOLS = frozenset("MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split())
REDUCES = frozenset(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
    "ReduceSumSquare ArgMax ArgMin".split()
)


@dataclass(frozen=True)
class Source:
    """A weight axis that produces the group's channels (a filter's output axis)."""

    weight: str
    axis: int
    node: str
    op: str
    output: str  # the node's output (where a BatchNorm that scales the channels would read)


@dataclass(frozen=True)
class Sink:
    """A constant-weight layer that reads the group's channels: channel c of `value` (along
    `value_axis`) meets the slice c of `weight` along `axis` (`unit` consecutive slices for a
    flatten into a Gemm/MatMul).  Where a channel's loss shows, and where its mean can be
    folded into a bias."""

    node: str
    op: str
    value: str
    value_axis: int
    weight: str
    axis: int
    output: str
    unit: int = 1


@dataclass(frozen=True)
class ExpandedSink:
    """A flatten of [N, C, ...] into a constant-weight Gemm/MatMul: channel c is the `unit`
    consecutive rows c*unit .. (c+1)*unit-1 of `weight` along `axis`."""

    weight: str
    axis: int
    unit: int
    value: str  # the flattened value [N, C * unit]


@dataclass
class ChannelGroup:
    id: int
    size: int
    slots: list[Slot]
    sources: list[Source] = field(default_factory=list)
    expanded: list[ExpandedSink] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    reshape_targets: list[tuple] = field(default_factory=list)  # target shape entries that state the size
    linked: list[tuple[int, int]] = field(default_factory=list)  # (group, unit): its axes hold `unit` per channel
    depthwise: list[str] = field(default_factory=list)  # outputs of Conv nodes whose `group` is this group's size
    blocks: int = 1  # grouped convs: the channels form `blocks` equal blocks that must stay equal
    blocked: str | None = None  # why the group cannot be pruned

    @property
    def prunable(self) -> bool:
        return self.blocked is None and bool(self.sources or self.linked) and self.size >= 2 * self.blocks

    def describe(self) -> dict:
        return {
            "group": self.id,
            "channels": self.size,
            "sources": sorted({s.weight for s in self.sources}),
            "blocked": self.blocked,
        }


@dataclass
class Analysis:
    groups: list[ChannelGroup]
    slot_group: dict[Slot, int]  # every slot -> its group id
    constants: dict[str, np.ndarray]  # main-graph initializers and Constant outputs (float and int)
    shapes: dict[str, tuple[int, ...]]  # static shapes at batch 1
    aliases: dict[str, str]  # Identity outputs of constants -> the constant they copy
    weight_slots: set[Slot]  # (stored constant, axis) of Conv/Gemm/MatMul weight operands

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def members(self, group: ChannelGroup) -> list[tuple[ChannelGroup, int]]:
        """The group and the groups linked to it, each with its channels per channel of `group`."""
        return [(group, 1)] + [(self.groups[gid], unit) for gid, unit in group.linked]

    def effective(self, keep: dict) -> dict:
        """`keep` over every group it touches: a group split into heads keeps, in each linked
        group, the `unit` consecutive channels of each kept head."""
        found = dict(keep)
        for gid, kept in keep.items():
            for linked, unit in self.groups[gid].linked:
                found[linked] = (np.asarray(kept)[:, None] * unit + np.arange(unit)[None, :]).ravel()
        return found


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Slot, Slot] = {}

    def find(self, a: Slot) -> Slot:
        self.parent.setdefault(a, a)
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: Slot, b: Slot) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # deterministic roots


class _Context:
    """What a node's rule sees: ranks, dims and constants, and how it relates slots."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], constants: dict[str, np.ndarray], opset: int):
        self.shapes = shapes
        self.constants = constants
        self.opset = opset
        self.uf = _UnionFind()
        self.blocked: dict[Slot, str] = {}
        self.sources: dict[Slot, list[Source]] = {}
        self.expanded: dict[Slot, list[ExpandedSink]] = {}
        self.sinks: dict[Slot, list[Sink]] = {}
        self.reshape_targets: dict[Slot, list[tuple]] = {}
        self.links: list[tuple[Slot, Slot, int]] = []  # (wide slot, heads slot, unit)
        self.producers: dict[str, onnx.NodeProto] = {}
        self.target_readers: dict[str, int] = {}  # target shapes -> Reshapes understood that read them
        self.depthwise: dict[Slot, list[str]] = {}
        self.blocks: dict[Slot, int] = {}
        self.touched: set[Slot] = set()
        self.weight_slots: set[Slot] = set()  # axes of Conv/Gemm/MatMul weight operands
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.aliases: dict[str, str] = {}

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def dim(self, name: str, axis: int) -> int:
        return self.shapes[name][axis]

    def join(self, a: Slot, b: Slot) -> None:
        self.touched.update((a, b))
        self.uf.union(a, b)

    def sink(self, node: onnx.NodeProto, value: str, value_axis: int, weight: str, axis: int, unit: int = 1) -> None:
        found = Sink(node.name, node.op_type, value, value_axis, weight, axis, node.output[0], unit)
        self.sinks.setdefault((value, value_axis), []).append(found)

    def weight(self, name: str) -> None:
        self.weight_slots.update((name, axis) for axis in range(self.rank(name)))

    def ok(self, slot: Slot) -> None:
        self.touched.add(slot)
        self.uf.find(slot)

    def block_value(self, name: str, reason: str) -> None:
        for axis in range(self.rank(name) or 0):
            self.blocked.setdefault((name, axis), reason)
            self.uf.find((name, axis))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _axes(ctx: _Context, node: onnx.NodeProto, input_index: int = 1) -> list[int] | None:
    """A node's `axes` (attribute, or constant input from opset 13/18); None when absent or
    not constant ([] stands for "given but empty")."""
    value = _attr(node, "axes")
    if value is not None:
        return [int(a) for a in value]
    if len(node.input) > input_index and node.input[input_index]:
        const = ctx.constants.get(node.input[input_index])
        return None if const is None else [int(a) for a in np.asarray(const).ravel()]
    return None


def _join_broadcast(ctx: _Context, inputs: list[str], output: str) -> bool:
    """Elementwise with numpy broadcasting: an input axis joins the output axis it lines up
    with when their sizes agree (a size-1 broadcast axis carries no channel)."""
    out_rank = ctx.rank(output)
    for name in inputs:
        rank = ctx.rank(name)
        if rank is None or rank > out_rank:
            return False
        for axis in range(rank):
            out_axis = axis + out_rank - rank
            if ctx.dim(name, axis) == ctx.dim(output, out_axis):
                ctx.join((name, axis), (output, out_axis))
            elif ctx.dim(name, axis) == 1:
                ctx.ok((name, axis))
            else:
                return False
    return True


def _rule_elementwise(ctx, node) -> bool:
    inputs = [i for i in node.input if i]
    return _join_broadcast(ctx, inputs, node.output[0])


def _rule_unary(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    if ctx.shapes[x] != ctx.shapes[y]:
        return False
    for axis in range(ctx.rank(x)):
        ctx.join((x, axis), (y, axis))
    for extra in node.input[1:]:  # Clip's bounds, Cast has none: scalars
        if extra and ctx.rank(extra):
            return False
    return True


def _rule_dropout(ctx, node) -> bool:
    if not _rule_unary(ctx, node):
        return False
    for out in node.output[1:]:
        if out:
            for axis in range(ctx.rank(out)):
                ctx.join((node.input[0], axis), (out, axis))
    return True


def _join_same(ctx: _Context, x: str, y: str, axes) -> None:
    for axis in axes:
        ctx.join((x, axis), (y, axis))


def _rule_conv(ctx, node) -> bool:
    x, w, y = node.input[0], node.input[1], node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if w not in ctx.constants or ctx.rank(w) != ctx.rank(x):
        return False
    ctx.weight(w)
    group = int(_attr(node, "group", 1))
    c_in, c_out = ctx.dim(x, 1), ctx.dim(y, 1)
    ctx.join((x, 0), (y, 0))
    ctx.join((y, 1), (w, 0))
    if bias:
        ctx.join((y, 1), (bias, 0))
    if group == 1:
        ctx.join((x, 1), (w, 1))
        ctx.sink(node, x, 1, w, 1)
        ctx.sources.setdefault((w, 0), []).append(Source(w, 0, node.name, "Conv", y))
    elif group == c_in == c_out:  # depthwise: the channel passes through
        ctx.join((x, 1), (y, 1))
        ctx.ok((w, 1))
        ctx.sources.setdefault((w, 0), []).append(Source(w, 0, node.name, "Conv (depthwise)", y))
        ctx.depthwise.setdefault((y, 1), []).append(y)
    else:  # grouped: output channels removed evenly per group; input channels stay
        ctx.sources.setdefault((w, 0), []).append(Source(w, 0, node.name, "Conv (grouped)", y))
        previous = ctx.blocks.get((y, 1))
        ctx.blocks[(y, 1)] = group if previous in (None, group) else -1
    return True


def _rule_conv_transpose(ctx, node) -> bool:
    x, w, y = node.input[0], node.input[1], node.output[0]
    if w not in ctx.constants or int(_attr(node, "group", 1)) != 1 or ctx.rank(w) != ctx.rank(x):
        return False
    ctx.weight(w)
    ctx.join((x, 0), (y, 0))
    ctx.join((x, 1), (w, 0))
    ctx.sink(node, x, 1, w, 0)
    ctx.join((y, 1), (w, 1))
    if len(node.input) > 2 and node.input[2]:
        ctx.join((y, 1), (node.input[2], 0))
    ctx.sources.setdefault((w, 1), []).append(Source(w, 1, node.name, "ConvTranspose", y))
    return True


def _rule_gemm(ctx, node) -> bool:
    a, b, y = node.input[0], node.input[1], node.output[0]
    if ctx.rank(a) != 2 or ctx.rank(b) != 2:
        return False
    trans_a, trans_b = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))
    m_a, k_a = (1, 0) if trans_a else (0, 1)
    k_b, n_b = (1, 0) if trans_b else (0, 1)
    ctx.join((a, m_a), (y, 0))
    ctx.join((b, n_b), (y, 1))
    if b in ctx.constants:
        ctx.weight(b)
        ctx.join((a, k_a), (b, k_b))
        ctx.sink(node, a, k_a, b, k_b)
        ctx.sources.setdefault((b, n_b), []).append(Source(b, n_b, node.name, "Gemm", y))
    if len(node.input) > 2 and node.input[2]:
        return _join_broadcast(ctx, [node.input[2]], y)
    return True


def _rule_matmul(ctx, node) -> bool:
    a, b, y = node.input[0], node.input[1], node.output[0]
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    if ra < 2 or rb < 2:
        return False
    for name, rank in ((a, ra), (b, rb)):  # batch axes broadcast like elementwise
        for axis in range(rank - 2):
            out_axis = axis + ry - rank
            if ctx.dim(name, axis) == ctx.dim(y, out_axis):
                ctx.join((name, axis), (y, out_axis))
            elif ctx.dim(name, axis) == 1:
                ctx.ok((name, axis))
            else:
                return False
    ctx.join((a, ra - 2), (y, ry - 2))
    ctx.join((b, rb - 1), (y, ry - 1))
    if b in ctx.constants or a in ctx.constants:  # a constant side: the contraction is a weight slice
        ctx.weight(b if b in ctx.constants else a)
        if b in ctx.constants and rb == 2:
            ctx.sink(node, a, ra - 1, b, 0)
        ctx.join((a, ra - 1), (b, rb - 2))
    if b in ctx.constants and rb == 2:
        ctx.sources.setdefault((b, 1), []).append(Source(b, 1, node.name, "MatMul", y))
    return True


def _rule_batchnorm(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    if len([o for o in node.output if o]) != 1 or ctx.shapes[x] != ctx.shapes[y]:
        return False
    _join_same(ctx, x, y, range(ctx.rank(x)))
    for p in node.input[1:]:
        if ctx.rank(p) != 1:
            return False
        ctx.join((y, 1), (p, 0))
    return True


def _rule_instancenorm(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    _join_same(ctx, x, y, range(ctx.rank(x)))
    for p in node.input[1:]:
        ctx.join((y, 1), (p, 0))
    return True


def _rule_layernorm(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    rank = ctx.rank(x)
    axis = int(_attr(node, "axis", -1)) % rank
    _join_same(ctx, x, y, range(axis))  # the normalised axes mix their channels: blocked
    return len([o for o in node.output if o]) == 1


def _rule_pool(ctx, node) -> bool:
    if len([o for o in node.output if o]) != 1:
        return False
    _join_same(ctx, node.input[0], node.output[0], (0, 1))
    return True


def _rule_reduce(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    rank = ctx.rank(x)
    keepdims = int(_attr(node, "keepdims", 1))
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [int(_attr(node, "axis", 0))]
    else:
        axes = _axes(ctx, node)
        if axes is None and len(node.input) > 1 and node.input[1]:
            return False
        if not axes:
            if int(_attr(node, "noop_with_empty_axes", 0)):
                return _rule_unary(ctx, node)
            axes = list(range(rank))
    reduced = {a % rank for a in axes}
    out_axis = 0
    for axis in range(rank):
        if axis in reduced:
            out_axis += keepdims
            continue
        ctx.join((x, axis), (y, out_axis))
        out_axis += 1
    return True


def _rule_softmax(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    rank = ctx.rank(x)
    if ctx.opset >= 13:
        axis = int(_attr(node, "axis", -1)) % rank
        _join_same(ctx, x, y, [a for a in range(rank) if a != axis])
    else:
        _join_same(ctx, x, y, range(int(_attr(node, "axis", 1)) % rank))
    return True


def _rule_transpose(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    rank = ctx.rank(x)
    perm = _attr(node, "perm") or list(reversed(range(rank)))
    for out_axis, in_axis in enumerate(perm):
        ctx.join((x, int(in_axis)), (y, out_axis))
    return True


def _rule_squeeze(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    rank = ctx.rank(x)
    axes = _axes(ctx, node)
    removed = {a % rank for a in axes} if axes else {a for a in range(rank) if ctx.dim(x, a) == 1}
    kept = [a for a in range(rank) if a not in removed]
    if len(kept) != ctx.rank(y):
        return False
    for out_axis, in_axis in enumerate(kept):
        ctx.join((x, in_axis), (y, out_axis))
    return True


def _rule_unsqueeze(ctx, node) -> bool:
    x, y = node.input[0], node.output[0]
    axes = _axes(ctx, node)
    if axes is None:
        return False
    out_rank = ctx.rank(y)
    inserted = {a % out_rank for a in axes}
    kept = [a for a in range(out_rank) if a not in inserted]
    if len(kept) != ctx.rank(x):
        return False
    for in_axis, out_axis in enumerate(kept):
        ctx.join((x, in_axis), (y, out_axis))
    return True


def _single_use_weight_consumers(ctx: _Context, value: str) -> list[tuple[onnx.NodeProto, str, int]] | None:
    """(weight, row axis) of every consumer of `value` when each is a Gemm/MatMul multiplying it
    by a constant 2-D weight used nowhere else; None otherwise."""
    found = []
    for consumer in ctx.consumers.get(value, []):
        if len(consumer.input) < 2 or consumer.input[0] != value:
            return None
        w = consumer.input[1]
        single = len(ctx.consumers.get(w, [])) == 1 and w not in ctx.aliases
        if w not in ctx.constants or ctx.rank(w) != 2 or not single:
            return None
        if consumer.op_type == "Gemm" and not int(_attr(consumer, "transA", 0)):
            found.append((consumer, w, 1 if int(_attr(consumer, "transB", 0)) else 0))
        elif consumer.op_type == "MatMul":
            found.append((consumer, w, 0))
        else:
            return None
    return found or None


def _rule_flatten(ctx, node) -> bool:
    """Flatten (or a Reshape to [N, -1]) of [N, C, ...]: channel c stays axis 1 when the rest
    is all ones; otherwise it becomes a block of rows of the constant weights that read it."""
    x, y = node.input[0], node.output[0]
    shape = ctx.shapes[x]
    if node.op_type == "Flatten":
        if int(_attr(node, "axis", 1)) % len(shape) != 1:
            return False
    else:
        target = ctx.constants.get(node.input[1])
        if target is None or target.size != 2 or int(target.ravel()[1]) != -1 or int(target.ravel()[0]) == -1:
            return False
    if len(shape) < 2 or ctx.shapes[y] != (shape[0], int(np.prod(shape[1:], dtype=np.int64))):
        return False
    ctx.join((x, 0), (y, 0))
    unit = int(np.prod(shape[2:], dtype=np.int64))
    if unit == 1:
        ctx.join((x, 1), (y, 1))
        for axis in range(2, len(shape)):
            ctx.ok((x, axis))
        return True
    sinks = _single_use_weight_consumers(ctx, y)
    if sinks is None:
        return False
    ctx.ok((x, 1))
    for consumer, w, axis in sinks:
        ctx.expanded.setdefault((x, 1), []).append(ExpandedSink(w, axis, unit, y))
        ctx.sink(consumer, x, 1, w, axis, unit)
    return True  # the spatial axes and the flat axis stay blocked (untouched)


def _target_pieces(ctx: _Context, name: str) -> list[tuple] | None:
    """The entries of a Reshape's target shape, each (value, how to rewrite it): a constant's
    element ``("const", name, index)``, or a Concat input computed from a Shape (an exporter's
    ``x.size(i)``: ``("concat", concat output, input index, (value, axis))``).  None when the
    target is anything else, or shared."""
    if name in ctx.aliases:
        return None
    if name in ctx.constants:  # may be shared: every reader must agree (see _check_targets)
        return [(int(v), ("const", name, i)) for i, v in enumerate(np.asarray(ctx.constants[name]).ravel())]
    if len(ctx.consumers.get(name, [])) != 1:
        return None
    node = ctx.producers.get(name)
    if node is None or node.op_type != "Concat" or int(_attr(node, "axis", 0)) != 0:
        return None
    pieces = []
    for index, part in enumerate(node.input):
        if part in ctx.constants and part not in ctx.aliases:
            values = np.asarray(ctx.constants[part]).ravel()
            pieces += [(int(v), ("const", part, i)) for i, v in enumerate(values)]
            continue
        dim = _shape_dim(ctx, part)
        if dim is None:
            return None
        pieces.append((int(ctx.shapes[dim[0]][dim[1]]), ("concat", name, index, dim)))
    return pieces


def _shape_dim(ctx: _Context, name: str) -> tuple[str, int] | None:
    """(value, axis) when `name` is Unsqueeze(Gather(Shape(value), axis)) (or without the Unsqueeze)."""
    node = ctx.producers.get(name)
    if node is not None and node.op_type == "Unsqueeze":
        node = ctx.producers.get(node.input[0])
    if node is None or node.op_type != "Gather" or node.input[1] not in ctx.constants:
        return None
    shape = ctx.producers.get(node.input[0])
    if shape is None or shape.op_type != "Shape" or len(shape.attribute) or ctx.rank(shape.input[0]) is None:
        return None
    return shape.input[0], int(np.asarray(ctx.constants[node.input[1]]).ravel()[0]) % ctx.rank(shape.input[0])


def _rule_reshape(ctx, node) -> bool:
    """A flatten (``_rule_flatten``), or a Reshape that keeps the order of the axes while it
    adds or drops size-1 axes (a bias [C] made [1, C, 1, 1]), splits one axis in two ([N, S, D]
    into heads [N, S, H, D/H]) or merges two: a split axis is *linked* to the heads axis (each
    head holds D/H consecutive channels), a merged one likewise.  Entries of the target shape
    that state a size are rewritten with the group (``reshape_targets``); an activation's batch
    axis must be copied (0, or its own ``x.size(0)``), so that batch-1 shapes mean any batch."""
    x, shape_name, y = node.input[0], node.input[1], node.output[0]
    target = ctx.constants.get(shape_name)
    if target is not None and target.size == 2 and int(target.ravel()[1]) == -1 and int(target.ravel()[0]) != -1:
        return _rule_flatten(ctx, node)
    pieces = _target_pieces(ctx, shape_name)
    if pieces is None:
        return False
    values = [v for v, _ in pieces]
    if int(_attr(node, "allowzero", 0)) and 0 in values:
        return False
    in_shape, out_shape = ctx.shapes[x], ctx.shapes[y]
    if len(values) != len(out_shape):
        return False
    start = 0
    if x not in ctx.constants:
        how = pieces[0][1] if pieces else None
        copies_batch = values[:1] == [0] or (how is not None and how[0] == "concat" and how[3][1] == 0)
        if not copies_batch or not in_shape or in_shape[0] != out_shape[0]:
            return False
        ctx.join((x, 0), (y, 0))
        start = 1
    ins = [a for a in range(start, len(in_shape)) if in_shape[a] != 1]
    outs = [b for b in range(start, len(out_shape)) if out_shape[b] != 1]
    targets: list[tuple[Slot, tuple]] = []
    links: list[tuple[Slot, Slot, int]] = []
    i = j = 0
    while i < len(ins) and j < len(outs):
        a, b = ins[i], outs[j]
        if values[b] == 0 and a != b:
            return False
        if in_shape[a] == out_shape[b]:
            ctx.join((x, a), (y, b))
            targets.append(((y, b), pieces[b][1]))
            i, j = i + 1, j + 1
        elif j + 1 < len(outs) and outs[j + 1] == b + 1 and in_shape[a] == out_shape[b] * out_shape[b + 1]:
            for slot in ((x, a), (y, b), (y, b + 1)):  # split: D into (heads, D / heads)
                ctx.ok(slot)
            links.append(((x, a), (y, b), out_shape[b + 1]))
            targets.append(((y, b), pieces[b][1]))
            i, j = i + 1, j + 2
        elif i + 1 < len(ins) and ins[i + 1] == a + 1 and out_shape[b] == in_shape[a] * in_shape[a + 1]:
            for slot in ((x, a), (x, a + 1), (y, b)):  # merge: (heads, D / heads) into D
                ctx.ok(slot)
            links.append(((y, b), (x, a), in_shape[a + 1]))
            targets.append(((y, b), pieces[b][1]))
            i, j = i + 2, j + 1
        else:
            return False
    if i != len(ins) or j != len(outs):
        return False
    for a in range(start, len(in_shape)):
        if in_shape[a] == 1:
            ctx.ok((x, a))
    for b in range(start, len(out_shape)):
        if out_shape[b] == 1:
            ctx.ok((y, b))
    ctx.links += links
    for slot, how in targets:
        ctx.reshape_targets.setdefault(slot, []).append(how)
    for name in {how[1] for _, how in pieces if how[0] == "const"}:
        ctx.target_readers[name] = ctx.target_readers.get(name, 0) + 1
    return True


RULES: dict[str, Callable[[_Context, onnx.NodeProto], bool]] = {
    **dict.fromkeys(ELEMENTWISE, _rule_elementwise),
    **dict.fromkeys(UNARY, _rule_unary),
    **dict.fromkeys(POOLS, _rule_pool),
    **dict.fromkeys(REDUCES, _rule_reduce),
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), _rule_softmax),
    "Dropout": _rule_dropout,
    "Conv": _rule_conv,
    "ConvTranspose": _rule_conv_transpose,
    "Gemm": _rule_gemm,
    "MatMul": _rule_matmul,
    "BatchNormalization": _rule_batchnorm,
    "InstanceNormalization": _rule_instancenorm,
    "LayerNormalization": _rule_layernorm,
    "Transpose": _rule_transpose,
    "Squeeze": _rule_squeeze,
    "Unsqueeze": _rule_unsqueeze,
    "Flatten": _rule_flatten,
    "Reshape": _rule_reshape,
}


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Main-graph initializers and Constant node outputs (with a `value` tensor) by name."""
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = _attr(node, "value")
            if isinstance(value, onnx.TensorProto):
                found[node.output[0]] = numpy_helper.to_array(value)
    return found


def _subgraph_names(g: onnx.GraphProto) -> set[str]:
    names = set()
    for node in g.node:
        names.update(node.input)
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                names |= _subgraph_names(sub)
    return names


def analyze(model: onnx.ModelProto) -> Analysis:
    """The channel groups of the model's main graph (see the module docstring)."""
    consts = constants(model)
    shapes = dict(graph.infer_shapes_batch1(model))
    for name, values in consts.items():
        shapes[name] = tuple(values.shape)
    ctx = _Context(shapes, consts, graph.opset_version(model))
    for node in model.graph.node:  # weights reached through Identity (some exporters do that)
        if node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
            ctx.aliases[node.output[0]] = ctx.aliases.get(node.input[0], node.input[0])
            shapes[node.output[0]] = shapes[node.input[0]]
    for node in model.graph.node:
        for name in node.input:
            if name:
                ctx.consumers.setdefault(name, []).append(node)
        for name in node.output:
            ctx.producers[name] = node
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        values = [n for n in list(node.input) + list(node.output) if n]
        subgraphs = [a for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") and not subgraphs else None
        ctx.touched = set()
        understood = False
        if rule is not None and all(ctx.rank(n) is not None for n in values):
            understood = rule(ctx, node)
        reason = f"{node.op_type} {node.name or node.output[0]}"
        for name in values:
            for axis in range(ctx.rank(name) or 0):
                slot = (name, axis)
                if not understood or slot not in ctx.touched:
                    ctx.blocked.setdefault(slot, reason)
                    ctx.uf.find(slot)
        for a in subgraphs:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                for name in _subgraph_names(sub):
                    ctx.block_value(name, f"read by the subgraph of {reason}")
    # Initializers listed as graph inputs (old exporters) are weights like any other.
    for vi in graph.graph_inputs(model) + list(model.graph.output):
        ctx.block_value(vi.name, "graph input/output")
    return _groups(ctx)


def _link_heads(ctx: _Context, groups: list[ChannelGroup], slot_group: dict[Slot, int]) -> None:
    """A wide group split into heads is pruned with them: it is linked to the heads' group
    (which then needs it clean) and never pruned on its own."""
    wide_of: dict[int, set[int]] = {}
    for wide_slot, heads_slot, unit in ctx.links:
        wide, heads = groups[slot_group[wide_slot]], groups[slot_group[heads_slot]]
        if wide.size != heads.size * unit or wide.id == heads.id:
            heads.blocked = heads.blocked or "heads of another size"
            continue
        if (wide.id, unit) not in heads.linked:
            heads.linked.append((wide.id, unit))
        wide_of.setdefault(wide.id, set()).add(heads.id)
    for wide_id, heads_ids in wide_of.items():
        wide = groups[wide_id]
        for hid in heads_ids:
            heads = groups[hid]
            if len(heads_ids) > 1 or wide.linked or hid in wide_of:
                heads.blocked = heads.blocked or "heads linked twice"
            elif wide.blocked is not None:
                heads.blocked = heads.blocked or wide.blocked
            elif wide.blocks != 1 or wide.expanded or wide.depthwise:
                heads.blocked = heads.blocked or "heads of a grouped or flattened axis"
        wide.blocked = wide.blocked or f"split into heads (pruned by heads, group {min(heads_ids)})"


def _check_targets(ctx: _Context, groups: list[ChannelGroup]) -> None:
    """A target shape entry rewritten for a group must be read only by Reshapes this analysis
    understood, and every entry by one group (else those groups are left as is)."""
    owners: dict[tuple, set[int]] = {}
    for g in groups:
        for how in g.reshape_targets:
            if how[0] == "const":
                owners.setdefault((how[1], how[2]), set()).add(g.id)
    for (name, _index), gids in owners.items():
        readers = len(ctx.consumers.get(name, []))
        if len(gids) > 1 or ctx.target_readers.get(name, 0) != readers:
            for gid in gids:
                groups[gid].blocked = groups[gid].blocked or f"target shape {name} read elsewhere"


def _groups(ctx: _Context) -> Analysis:
    members: dict[Slot, list[Slot]] = {}
    for slot in sorted(ctx.uf.parent):
        members.setdefault(ctx.uf.find(slot), []).append(slot)
    groups, slot_group = [], {}
    for gid, (_root, slots) in enumerate(sorted(members.items())):
        dims = {ctx.shapes[name][axis] for name, axis in slots if name in ctx.shapes}
        group = ChannelGroup(gid, min(dims) if dims else 0, slots)
        if len(dims) != 1:
            group.blocked = "axes of different sizes"
        for slot in slots:
            slot_group[slot] = gid
            group.sources += ctx.sources.get(slot, [])
            group.expanded += ctx.expanded.get(slot, [])
            group.sinks += ctx.sinks.get(slot, [])
            group.reshape_targets += ctx.reshape_targets.get(slot, [])
            group.depthwise += ctx.depthwise.get(slot, [])
            if slot in ctx.blocks:
                blocks = ctx.blocks[slot]
                if blocks < 0 or group.blocks not in (1, blocks):
                    group.blocked = group.blocked or "grouped convs with different groups"
                group.blocks = max(group.blocks, blocks)
            if group.blocked is None and slot in ctx.blocked:
                group.blocked = ctx.blocked[slot]
        groups.append(group)
    _check_targets(ctx, groups)
    _link_heads(ctx, groups, slot_group)
    weight_slots = {(ctx.aliases.get(name, name), axis) for name, axis in ctx.weight_slots}
    return Analysis(groups, slot_group, ctx.constants, ctx.shapes, ctx.aliases, weight_slots)
