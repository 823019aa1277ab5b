"""Kept only when smaller: the check the shape-changing stages (lowrank, structured) share.

A candidate that changes shapes must pack smaller than the stage's input both as it is and
after a plain k-means share: a pruned sparse weight can pack smaller once shared than the dense
or narrower tensors that replace it, though not as float.
"""

from __future__ import annotations

import onnx

from ..passes.share import share
from ..report import StageRow
from .ladder import StageContext, StageResult, model_bytes


class SmallerGate:
    """Does a candidate pack smaller than the stage's input, as it is and after a plain k-means
    share (8 bits conv, 5 bits fc, every matrix weight)?  A pruned sparse weight can pack
    smaller once shared than the dense factors that replace it, though not as float.  Each
    model's sizes are computed once."""

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.sizes: dict[int, tuple[onnx.ModelProto, int, int]] = {}

    def sizes_of(self, model: onnx.ModelProto) -> tuple[int, int]:
        entry = self.sizes.get(id(model))
        if entry is None or entry[0] is not model:
            entry = (model, self.ctx.packed_size(model), self.ctx.packed_size(_shared(model)))
            self.sizes[id(model)] = entry
        return entry[1], entry[2]

    def why_not(self, candidate: onnx.ModelProto) -> str | None:
        """None when the candidate packs smaller both ways, else why not."""
        (size, shared), (before, shared_before) = self.sizes_of(candidate), self.sizes_of(self.ctx.model)
        if size >= before:
            return f"packs to {size:,} bytes, not smaller than its input's {before:,}"
        if shared >= shared_before:
            return f"packs once shared to {shared:,} bytes, not smaller than its input's {shared_before:,}"
        return None

    def note(self, candidate: onnx.ModelProto) -> str:
        (_, shared), (_, shared_before) = self.sizes_of(candidate), self.sizes_of(self.ctx.model)
        return f"after a plain share {shared:,} bytes packed vs {shared_before:,} without"


def kept_if_smaller(name: str, result: StageResult, ctx: StageContext, gate: SmallerGate) -> StageResult:
    """The stage's model only when it packs smaller than its input's, both as it is and after a
    plain share (``SmallerGate``); else the input, unchanged."""
    row = result.row
    if not row.applied:
        return result
    reason = gate.why_not(result.model)
    if reason is None:
        row.packed_bytes = ctx.packed_size(result.model)
        row.note = "; ".join(filter(None, [row.note, gate.note(result.model)]))
        return result
    ctx.log(f"{name}: {reason}; not kept")
    (size, shared), (before, shared_before) = gate.sizes_of(result.model), gate.sizes_of(ctx.model)
    value, limit = (size, before) if size >= before else (shared, shared_before)
    skipped = StageRow(
        name,
        False,
        model_bytes(ctx.model),
        ctx.previous.metrics,
        row.seconds,
        note=f"not kept: {reason}",
        attempts=row.attempts,
        packed_bytes=before,
        rejected_by=[{"measure": "packed_bytes", "value": value, "limit": limit, "by": value - limit}],
        rejected_metrics=row.metrics,
    )
    return StageResult(skipped, ctx.model, ctx.outputs)


def _shared(model: onnx.ModelProto) -> onnx.ModelProto:
    # Every matrix weight, the factors included whatever share.min_params: a factor left out
    # of share is still made int8 by quantize, not kept as float.
    return share(model, min_params=0)[0]
