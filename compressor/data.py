"""The data-file convention shared by every command, and batching.

A data file is an ``.npz`` with one array per model input, named after the input
(a single-input model may use ``x``), and optionally ``y``: integer class labels.
Arrays are cast to the input's element type when the kinds agree (float64 -> float32),
never across kinds (float -> int is an error).  Loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from .errors import CompressorError, UsageError
from .graph import graph_inputs

LABEL_KEY = "y"


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]  # model input name -> array, all with the same first dimension
    labels: np.ndarray | None

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.size, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.inputs.items()}

    def take(self, n: int) -> "Dataset":
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[:n])


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such data file: {path}")
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CompressorError(f"cannot read data file {path}: {str(e).splitlines()[0] if str(e) else 'not a valid .npz'}")


def _elem_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)


def load_dataset(path: str | Path, model: onnx.ModelProto) -> Dataset:
    """Read an .npz and match it to the model's inputs (names, dtypes, ranks, static dims)."""
    arrays = read_npz(path)
    inputs = graph_inputs(model)
    result: dict[str, np.ndarray] = {}
    for vi in inputs:
        if vi.name in arrays:
            arr = arrays[vi.name]
        elif len(inputs) == 1 and "x" in arrays:
            arr = arrays["x"]
        else:
            raise CompressorError(f"data file {path} has no array for model input {vi.name!r} (has: {', '.join(sorted(arrays)) or 'nothing'})")
        want = _elem_dtype(vi)
        if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
            raise CompressorError(f"input {vi.name!r}: data has dtype {arr.dtype}, the model expects {want}")
        arr = arr.astype(want, copy=False)
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape"):
            if arr.ndim != len(dims):
                raise CompressorError(f"input {vi.name!r}: data has shape {arr.shape}, the model expects rank {len(dims)}")
            for axis, d in enumerate(dims):
                if axis > 0 and d.HasField("dim_value") and d.dim_value > 0 and arr.shape[axis] != d.dim_value:
                    want_shape = tuple(dd.dim_value if dd.HasField("dim_value") else dd.dim_param or "?" for dd in dims)
                    raise CompressorError(f"input {vi.name!r}: data has shape {arr.shape}, the model expects {want_shape}")
        if arr.ndim == 0:
            raise CompressorError(f"input {vi.name!r}: data must have a batch dimension")
        result[vi.name] = np.ascontiguousarray(arr)
    sizes = {a.shape[0] for a in result.values()}
    if len(sizes) > 1:
        raise CompressorError(f"data file {path}: inputs have different numbers of samples {sorted(sizes)}")
    labels = arrays.get(LABEL_KEY)
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise CompressorError(f"data file {path}: labels 'y' must be a 1-D integer array")
        if result and labels.shape[0] != next(iter(sizes)):
            raise CompressorError(f"data file {path}: {labels.shape[0]} labels for {next(iter(sizes))} samples")
        labels = labels.astype(np.int64)
    if result and next(iter(sizes)) == 0:
        raise CompressorError(f"data file {path} holds no samples")
    return Dataset(result, labels)


def fixed_batch_size(model: onnx.ModelProto) -> int | None:
    """The batch size a model with a static first dimension insists on, else None."""
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None
