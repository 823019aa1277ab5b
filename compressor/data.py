"""The data-file convention shared by every command, and batching.

A data file is an ``.npz`` with one array per model input, named after the input
(a single-input model may use ``x``), and optionally ``y``: integer class labels.
Arrays are cast to the input's element type when the kinds agree (float64 -> float32),
never across kinds (float -> int is an error).  Loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import CompressorError, UsageError
from .graph import graph_inputs

LABEL_KEY = "y"


@dataclass
class Dataset:
    """Samples for a model: ``inputs`` (input name -> array whose first axis is the sample) and
    optional integer ``labels``.

    Two layouts, chosen per file by the arrays' ranks (see ``load_dataset``):

    * batched (the usual case): each array has the input's own rank, samples along the
      model's batch axis 0; samples are fed ``batch_size`` at a time;
    * per-sample (``per_sample``): each array has one more dimension than the input, and
      ``array[i]`` is the whole feed of run i — for models whose batch axis is not first
      (recurrent state [layers, N, H], sequence-first [T, N, F]) or that have no batch axis.

    ``constants`` are fed unchanged to every run (a scalar sample rate, say).
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    per_sample: bool = False

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        if self.per_sample:
            for i in range(self.size):
                yield {**self.constants, **{k: v[i] for k, v in self.inputs.items()}}
            return
        for start in range(0, self.size, batch_size):
            yield {**self.constants, **{k: v[start : start + batch_size] for k, v in self.inputs.items()}}

    def select(self, index) -> Dataset:
        """The samples at `index` (a slice or an integer array), same layout and constants."""
        return Dataset(
            {k: v[index] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[index],
            self.constants,
            self.per_sample,
        )

    def take(self, n: int) -> Dataset:
        return self.select(slice(0, n))

    def feed_values(self, name: str) -> np.ndarray | None:
        """All values fed to input `name` (for calibration ranges)."""
        if name in self.inputs:
            return self.inputs[name]
        return self.constants.get(name)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such data file: {path}")
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CompressorError(
            f"cannot read data file {path}: {str(e).splitlines()[0] if str(e) else 'not a valid .npz'}"
        )


def _elem_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)


def load_dataset(path: str | Path, model: onnx.ModelProto) -> Dataset:
    """Read an .npz and match it to the model's inputs (names, dtypes, ranks, static dims).

    An array with the input's rank is batched along axis 0; one with an extra leading axis
    holds one whole feed per sample (per-sample layout); a 0-d array for a scalar input is a
    constant.  A file uses one layout for all its non-constant arrays.
    """
    arrays = read_npz(path)
    inputs = graph_inputs(model)
    result: dict[str, np.ndarray] = {}
    constants: dict[str, np.ndarray] = {}
    layouts: dict[str, str] = {}
    for vi in inputs:
        if vi.name in arrays:
            arr = arrays[vi.name]
        elif len(inputs) == 1 and "x" in arrays:
            arr = arrays["x"]
        else:
            raise CompressorError(
                f"data file {path} has no array for model input {vi.name!r} (has: {', '.join(sorted(arrays)) or 'nothing'})"
            )
        want = _elem_dtype(vi)
        if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
            raise CompressorError(f"input {vi.name!r}: data has dtype {arr.dtype}, the model expects {want}")
        # (np.ascontiguousarray would turn a 0-d array into 1-d)
        arr = np.require(arr.astype(want, copy=False), requirements="C")
        has_shape = vi.type.tensor_type.HasField("shape")
        dims = list(vi.type.tensor_type.shape.dim) if has_shape else None
        if dims is not None and len(dims) == 0 and arr.ndim == 0:
            constants[vi.name] = arr
            continue
        if dims is None:
            layout, per_sample_dims = "batched", None
        elif arr.ndim == len(dims):
            layout, per_sample_dims = "batched", None
        elif arr.ndim == len(dims) + 1:
            layout, per_sample_dims = "per-sample", arr.shape[1:]
        else:
            raise CompressorError(
                f"input {vi.name!r}: data has shape {arr.shape}, the model expects rank {len(dims)} "
                f"(batched) or {len(dims) + 1} (one feed per sample)"
            )
        if arr.ndim == 0:
            raise CompressorError(f"input {vi.name!r}: data must have a batch dimension")
        if dims is not None:
            shape = arr.shape if layout == "batched" else per_sample_dims
            first = 1 if layout == "batched" else 0  # the batch axis of a batched array may differ
            for axis, d in enumerate(dims):
                if axis >= first and d.HasField("dim_value") and d.dim_value > 0 and shape[axis] != d.dim_value:
                    want_shape = tuple(dd.dim_value if dd.HasField("dim_value") else dd.dim_param or "?" for dd in dims)
                    how = (
                        ""
                        if layout == "batched"
                        else " for each sample (an array of one more dimension holds one feed per sample)"
                    )
                    raise CompressorError(
                        f"input {vi.name!r}: data has shape {arr.shape}, the model expects {want_shape}{how}"
                    )
        layouts[vi.name] = layout
        result[vi.name] = arr
    if len(set(layouts.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in layouts.items())
        raise CompressorError(f"data file {path} mixes batched and per-sample arrays ({detail}); use one layout")
    if not result:
        raise CompressorError(f"data file {path} holds only constants: give at least one input with samples")
    per_sample = "per-sample" in layouts.values()
    sizes = {a.shape[0] for a in result.values()}
    if len(sizes) > 1:
        raise CompressorError(f"data file {path}: inputs have different numbers of samples {sorted(sizes)}")
    labels = arrays.get(LABEL_KEY)
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise CompressorError(f"data file {path}: labels 'y' must be a 1-D integer array")
        if labels.shape[0] != next(iter(sizes)):
            raise CompressorError(f"data file {path}: {labels.shape[0]} labels for {next(iter(sizes))} samples")
        labels = labels.astype(np.int64)
    if next(iter(sizes)) == 0:
        raise CompressorError(f"data file {path} holds no samples")
    return Dataset(result, labels, constants, per_sample)


def fixed_batch_size(model: onnx.ModelProto) -> int | None:
    """The batch size a model with a static first dimension insists on, else None."""
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None
