"""Activation ranges from running ONNX Runtime on calibration data, batch by batch.

Only running statistics are kept per tensor (``quant_math.RangeCollector``: min, max and
a histogram), never the tensors: ``compressor.evaluate.capture`` yields one batch at a time,
its batches sized so that one batch of captures stays under ``evaluate.CAPTURE_BYTES``.
"""

from __future__ import annotations

import numpy as np
import onnx

from ... import evaluate, graph
from ... import quant_math as qm
from ...data import Dataset

FEED_CHUNK = 4096  # samples of a graph input folded into its collector at a time


def collect(
    model: onnx.ModelProto, names, data: Dataset, batch_size: int | None = None
) -> dict[str, qm.RangeCollector]:
    """Range statistics of every tensor in `names` over `data` (graph inputs read from the data,
    the others captured in one pass; `batch_size` None: bounded by bytes, see evaluate.capture)."""
    names = list(dict.fromkeys(names))
    stats = {n: qm.RangeCollector() for n in names}
    inputs = {vi.name for vi in graph.graph_inputs(model)}
    for name in names:
        values = data.feed_values(name) if name in inputs else None
        if values is not None:
            for start in range(0, max(len(values), 1) if values.ndim else 1, FEED_CHUNK):
                stats[name].update(values[start : start + FEED_CHUNK] if values.ndim else values)
    inner = [n for n in names if n not in inputs]
    if inner:
        for batch in evaluate.capture(model, inner, data, batch_size=batch_size):
            for name, value in batch.items():
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    stats[name].update(value)
    return stats
