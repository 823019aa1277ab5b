"""When pruning that gained little stands in a later stage's way (pipeline._retry_unpruned): how
much pruning gained when the containers were not packed (large models), and which later stages
it blocked, counting a stage that fell back from its first rung (the per-tensor search)."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import weights
from ..measure import Measure
from ..report import StageRow
from .ladder import fits_without


def zeroed_share(before: onnx.ModelProto, after: onnx.ModelProto) -> float:
    """The share of `before`'s weight bytes that are zero in `after` but not in `before`: what
    pruning can have taken off the container, an upper bound counted without packing."""
    nonzero_before = {w.name: (int(np.count_nonzero(w.array())), w.array().itemsize) for w in weights(before)}
    total = sum(w.size * w.array().itemsize for w in weights(before))
    zeroed = 0
    for w in weights(after):
        if w.name in nonzero_before:
            count, itemsize = nonzero_before[w.name]
            zeroed += max(count - int(np.count_nonzero(w.array())), 0) * itemsize
    return zeroed / total if total else 0.0


def first_rung_rejected(row: StageRow) -> dict | None:
    """The metrics of an applied stage's first attempt when a measure other than its packed size
    rejected it (it fell back to a later rung), else None."""
    if not row.applied or not row.attempts:
        return None
    first = row.attempts[0]
    if not any(x["measure"] != "packed_bytes" for x in first.get("rejected_by") or []):
        return None
    return {k: v for k, v in first.items() if k not in ("option", "rejected_by")}


def blocked_by_pruning(measure: Measure, row: StageRow, pruned: StageRow) -> bool:
    """A later stage that missed the budget (or fell back from its first rung) by no more than
    pruning spent."""
    if not row.applied:
        return (
            row.rejected_metrics is not None
            and any(x["measure"] != "packed_bytes" for x in row.rejected_by)
            and fits_without(measure, row.rejected_metrics, pruned.metrics)
        )
    first = first_rung_rejected(row)
    return first is not None and fits_without(measure, first, pruned.metrics)
