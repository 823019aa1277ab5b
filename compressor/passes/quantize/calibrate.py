"""Activation ranges from running ONNX Runtime on calibration data, batch by batch.

Only running statistics are kept per tensor (``quant_math.RangeCollector``: min, max and
a histogram), never the tensors: ``compressor.evaluate.capture`` yields one batch at a time.
"""

from __future__ import annotations

import numpy as np
import onnx

from ... import evaluate, graph
from ... import quant_math as qm
from ...data import Dataset

CALIB_BATCH = 64


def collect(
    model: onnx.ModelProto, names, data: Dataset, batch_size: int | None = None
) -> dict[str, qm.RangeCollector]:
    names = list(dict.fromkeys(names))
    stats = {n: qm.RangeCollector() for n in names}
    inputs = {vi.name for vi in graph.graph_inputs(model)}
    for name in names:
        values = data.feed_values(name) if name in inputs else None
        if values is not None:
            for start in range(0, max(len(values), 1) if values.ndim else 1, 4096):
                stats[name].update(values[start : start + 4096] if values.ndim else values)
    inner = [n for n in names if n not in inputs]
    if inner:
        bs = batch_size or evaluate.batch_size_for(model, CALIB_BATCH)
        for batch in evaluate.capture(model, inner, data, batch_size=bs):
            for name, value in batch.items():
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    stats[name].update(value)
    return stats
