"""Weights the calibration data never runs: every use of them inside an If branch it never takes.

A model with one branch per input kind (silero VAD: a 16 kHz and an 8 kHz network under one
If on the sample rate) runs only one of them on data of one kind.  A weight used only in the
other branch changes no output on that data: sharing it costs nothing the judge can see.
The If nodes of the main graph are read (their condition's values over the data: from the
feeds, a constant, or one capture run); an If nested inside a branch counts as taking both of
its branches (its condition lives in a subgraph, which a capture cannot read).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .. import graph
from ..data import Dataset
from ..evaluate import capture_with_feeds

BRANCHES = {True: "then_branch", False: "else_branch"}


def main_ifs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node id as ``graph.iter_graphs`` names it, condition tensor) of each If of the main graph."""
    return [
        (node.name or f"{node.op_type}_{i}", node.input[0])
        for i, node in enumerate(model.graph.node)
        if node.op_type == "If" and node.domain in ("", "ai.onnx") and node.input and node.input[0]
    ]


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The main graph's initializers and Constant tensors by name."""
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def untaken_branches(model: onnx.ModelProto, data: Dataset) -> tuple[list[str], int]:
    """The graph paths (``graph.iter_graphs``' "If_0/else_branch") of the main graph's If
    branches that no sample of `data` takes, and the capture runs made for them (0 or 1)."""
    ifs = main_ifs(model)
    if not ifs or data.size == 0:
        return [], 0
    constants = _constant_values(model)
    inputs = {vi.name for vi in graph.graph_inputs(model)}
    conds = sorted({c for _, c in ifs})
    wanted = [c for c in conds if c not in constants and c not in inputs]
    taken: dict[str, set[bool]] = {c: set() for c in conds}
    for c in conds:
        if c in constants:
            taken[c].update(bool(v) for v in np.unique(np.asarray(constants[c]).astype(bool)))
    batches = capture_with_feeds(model, wanted, data) if wanted else ((f, {}) for f in data.batches(1 << 30))
    for feed, captured in batches:
        values = {**feed, **captured}
        for c in conds:
            if c in values:
                taken[c].update(bool(v) for v in np.unique(np.asarray(values[c]).astype(bool)))
    untaken = [f"{node_id}/{BRANCHES[side]}" for node_id, c in ifs for side in (True, False) if side not in taken[c]]
    return untaken, int(bool(wanted))


def unused_weights(weights: Sequence[graph.Weight], untaken: Sequence[str]) -> dict[str, str]:
    """Weight name -> the untaken branch it lives in, for the weights every consumer of which
    sits inside one of the `untaken` branch paths (weights without consumers are not listed)."""

    def inside(path: str) -> str | None:
        return next((b for b in untaken if path == b or path.startswith(b + "/")), None)

    found = {}
    for w in weights:
        where = [inside(c.graph_path) for c in w.consumers]
        if where and all(where):
            found[w.name] = where[0]
    return found
