"""Activation ranges from running ONNX Runtime on calibration data, batch by batch.

Only running statistics are kept per tensor (``quant_math.RangeCollector``: min, max and
a histogram), never the tensors: ``compressor.evaluate.capture`` yields one batch at a time,
its batches sized so that one batch of captures stays under ``evaluate.CAPTURE_BYTES``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import onnx

from ... import evaluate, graph
from ... import quant_math as qm
from ...data import Dataset
from .params import Groups
from .registry import Plan

FEED_CHUNK = 4096  # samples of a graph input folded into its collector at a time


def folded_relus(plans: list[Plan], groups: Groups) -> dict[str, str]:
    """{input: output} of the Relus folded into their producer's QuantizeLinear (``groups.clipped``
    inputs, read by nothing else).  Such an input's statistics are taken from the Relu's output:
    its range never sets parameters, and the noise estimate of a clamped tensor reads only its
    positive values and count (sensitivity.activation_noise), which the output has unchanged.
    Capturing one of the two halves a conv net's captures (passes over the data, bytes held)."""
    return {
        p.node.input[0]: p.node.output[0]
        for p in plans
        if p.kind == "activation" and p.node.op_type == "Relu" and p.node.input[0] in groups.clipped
    }


def collect(
    model: onnx.ModelProto,
    names,
    data: Dataset,
    batch_size: int | None = None,
    same_as: Mapping[str, str] | None = None,
) -> dict[str, qm.RangeCollector]:
    """Range statistics of every tensor in `names` over `data` (graph inputs read from the data,
    the others captured in one pass; `batch_size` None: bounded by bytes, see evaluate.capture).
    `same_as` {name: other}: `name` gets a copy of `other`'s statistics (both in `names`) and is
    not captured (see folded_relus)."""
    names = list(dict.fromkeys(names))
    same = {n: o for n, o in (same_as or {}).items() if n in names and o in names and o not in (same_as or {})}
    stats = {n: qm.RangeCollector() for n in names if n not in same}
    inputs = {vi.name for vi in graph.graph_inputs(model)}
    for name in stats:
        values = data.feed_values(name) if name in inputs else None
        if values is not None:
            for start in range(0, max(len(values), 1) if values.ndim else 1, FEED_CHUNK):
                stats[name].update(values[start : start + FEED_CHUNK] if values.ndim else values)
    inner = [n for n in stats if n not in inputs]
    if inner:
        for batch in evaluate.capture(model, inner, data, batch_size=batch_size):
            for name, value in batch.items():
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    stats[name].update(value)
    for name, other in same.items():
        stats[name] = copy.deepcopy(stats[other])
    return {n: stats[n] for n in names}
