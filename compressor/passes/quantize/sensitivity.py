"""Per-layer sensitivity: the model output's SNR when only one layer is quantized.

Layers whose SNR (against the float model, on up to ``MAX_SAMPLES`` calibration samples)
falls below the threshold are kept in float.  One ORT session per candidate layer.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from ... import evaluate
from ...data import Dataset

MAX_SAMPLES = 256


def output_snr(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    snrs = [evaluate.snr_db(r, o) for r, o in zip(reference, outputs) if r.dtype.kind == "f" and r.size]
    return min(snrs) if snrs else float("inf")


def layer_snrs(float_model: onnx.ModelProto, names: list[str], build_one: Callable[[str], onnx.ModelProto],
               data: Dataset) -> dict[str, float]:
    subset = data.take(MAX_SAMPLES)
    reference = evaluate.run_model(float_model, subset)
    result = {}
    for name in names:
        model = build_one(name)
        result[name] = output_snr(reference, evaluate.run_model(model, subset))
    return result
