"""Per-layer sensitivity: the model output's SNR when only one layer is quantized.

Layers whose SNR (against the float model, on up to ``MAX_SAMPLES`` calibration samples)
falls below the threshold are kept in float.  One ORT session per candidate layer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from ... import evaluate
from ...data import Dataset

MAX_SAMPLES = 256


def output_snr(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    snrs = [evaluate.snr_db(r, o) for r, o in zip(reference, outputs) if r.dtype.kind == "f" and r.size]
    return min(snrs) if snrs else float("inf")


class Reference:
    """The float model's outputs on the first MAX_SAMPLES calibration samples, computed once
    for every candidate measured against it (per-layer SNRs, the weight-range choice)."""

    def __init__(self, float_model: onnx.ModelProto, data: Dataset):
        self.subset = data.take(MAX_SAMPLES)
        self.outputs = evaluate.run_model(float_model, self.subset)

    def snr(self, model: onnx.ModelProto) -> float:
        return output_snr(self.outputs, evaluate.run_model(model, self.subset))


def layer_snrs(reference: Reference, names: list[str], build_one: Callable[[str], onnx.ModelProto]) -> dict[str, float]:
    result = {}
    for name in names:
        result[name] = reference.snr(build_one(name))
    return result
