"""A stage's context for unit tests of one stage: the model measured once as the "original" row."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import graphs
import numpy as np
import onnx
import onnxruntime as ort

from compressor.data import Dataset
from compressor.measure import Measure
from compressor.pipeline import run_pipeline
from compressor.report import StageRow
from compressor.stages.ladder import StageContext


def self_labeled(model: onnx.ModelProto, x: np.ndarray) -> Dataset:
    """Inputs `x` labeled with the model's own top-1 (accuracy mode without a dataset)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return Dataset({"x": x}, session.run(None, {"x": x})[0].argmax(1))


def measured_context(
    model: onnx.ModelProto,
    data: Dataset,
    mode: str,
    budget: float,
    size: Callable[[onnx.ModelProto], int],
    *,
    search_data: Dataset | None = None,
    original_bytes: int = 0,
    **options,
) -> StageContext:
    """`model` measured on `data` as the original row (`original_bytes` its size); candidates' sizes by `size`."""
    measure = Measure(data, mode, budget, search_data=search_data)
    first = StageRow("original", True, original_bytes, measure.start(model))
    return StageContext(model, measure, data, data, measure.last_outputs, (first,), lambda msg: None, size, **options)


def run_if_model(tmp_path: Path, min_snr_db: float) -> dict:
    """`run` of graphs.if_subgraph_model (pruning off, an SNR floor) calibrated on 64 samples
    that never take its then branch; the report."""
    model = graphs.if_subgraph_model()
    path, calib = tmp_path / "if.onnx", tmp_path / "calib.npz"
    onnx.save(model, path)
    np.savez(calib, **graphs.make_inputs(model, 64, 1).inputs)  # flags False: the then branch never runs
    return run_pipeline(
        str(path),
        str(tmp_path / "if.cmpz"),
        calib_path=str(calib),
        overrides={"prune": {"enabled": False}, "gate": {"min_snr_db": min_snr_db}},
    )
