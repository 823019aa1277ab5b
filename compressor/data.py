"""The data-file convention shared by every command, and batching.

A data file is an ``.npz`` with one array per model input, named after the input
(a single-input model may use ``x``), and optionally ``y``: integer class labels.
Arrays are cast to the input's element type when the kinds agree (float64 -> float32),
never across kinds (float -> int is an error).  Loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
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

    ``recurrent``: (output, input) pairs of a model that feeds a state back (``sequences``):
    the samples of a per-sample file are the steps of sequences in order, and a run feeds each
    step the state output of the step before (``evaluate.run_batches``).
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    per_sample: bool = False
    recurrent: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the shape of one run's feed of one sample (batch axis 1)."""
        return {k: (v[0].shape if self.per_sample else v[:1].shape) for k, v in self.inputs.items()}

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
            self.recurrent,
        )

    def spread(self, n: int) -> Dataset:
        """`n` samples evenly spread over the data; the first `n` steps of a recurrent sequence
        (a step is only meaningful after the ones before it)."""
        if self.recurrent or n >= self.size:
            return self.take(n)
        return self.select((np.arange(n) * (self.size / n)).astype(np.int64))

    def take(self, n: int) -> Dataset:
        return self.select(slice(0, n))

    def feed_values(self, name: str) -> np.ndarray | None:
        """All values fed to input `name` (for calibration ranges)."""
        if name in self.inputs:
            return self.inputs[name]
        return self.constants.get(name)


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"  # every zip (an .npz is one) starts with a "PK" record


def _first_line(e: Exception, default: str) -> str:
    return str(e).splitlines()[0] if str(e).strip() else default


def _open_npz(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such data file: {path}")
    try:
        with open(p, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise CompressorError(f"cannot read data file {path}: {e.strerror}")
    if head == NPY_MAGIC:  # np.load would read the whole array; an .npz names its arrays
        raise CompressorError(f"data file {path} is one .npy array, not an .npz archive (save it with np.savez)")
    if not head.startswith(ZIP_MAGIC):  # np.load takes any other bytes for a pickle and says so
        raise CompressorError(f"cannot read data file {path}: not an .npz archive (save the arrays with np.savez)")
    try:
        npz = np.load(p, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CompressorError(f"cannot read data file {path}: {_first_line(e, 'not a valid .npz')}")
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CompressorError(f"cannot read data file {path}: not an .npz archive")
    return npz


def npz_names(path: str | Path) -> list[str]:
    """The names of the arrays of an .npz (its directory only: no array is read)."""
    with _open_npz(path) as npz:
        return list(npz.files)


def read_npz(path: str | Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz; with `names`, only those (of them present): np.load reads an array
    when it is asked for, so an unused array, however large, is never read."""
    with _open_npz(path) as npz:
        wanted = npz.files if names is None else [k for k in dict.fromkeys(names) if k in npz.files]
        arrays = {}
        for key in wanted:
            try:
                arrays[key] = npz[key]
            except MemoryError:
                raise CompressorError(f"cannot read data file {path}: array {key!r} is larger than the memory")
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
                raise CompressorError(f"cannot read data file {path}: {_first_line(e, 'not a valid .npz')}")
        return arrays


def _count_non_finite(arr: np.ndarray) -> int:
    if arr.dtype.kind not in "fc":
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def class_count(model: onnx.ModelProto) -> int | None:
    """The number of classes of the model's first output when its shape says so (batch axis
    first, the other dims static: what `evaluate.top1` takes the argmax over), else None."""
    if not model.graph.output:
        return None
    tensor_type = model.graph.output[0].type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = list(tensor_type.shape.dim)[1:]
    if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return int(np.prod([d.dim_value for d in dims]))


def _check_labels(labels: np.ndarray, classes: int | None, path) -> None:
    bad = labels < 0 if classes is None else (labels < 0) | (labels >= classes)
    n = int(np.count_nonzero(bad))
    if n:
        first = int(labels[np.argmax(bad)])
        what = "non-negative" if classes is None else f"in [0, {classes}) for the model's {classes} classes"
        raise CompressorError(f"data file {path}: labels 'y' must be {what}; {n} are not (first: {first})")


def _elem_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)


def load_dataset(path: str | Path, model: onnx.ModelProto) -> Dataset:
    """Read an .npz and match it to the model's inputs (names, dtypes, ranks, static dims).

    An array with the input's rank is batched along axis 0; one with an extra leading axis
    holds one whole feed per sample (per-sample layout); a 0-d array for a scalar input is a
    constant.  A file uses one layout for all its non-constant arrays.
    """
    inputs = graph_inputs(model)
    names = npz_names(path)
    used = [vi.name for vi in inputs if vi.name in names]
    if len(inputs) == 1 and not used:
        used.append("x")
    arrays = read_npz(path, [*used, LABEL_KEY])
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
                f"data file {path} has no array for model input {vi.name!r} (has: {', '.join(sorted(names)) or 'nothing'})"
            )
        key = vi.name if vi.name in arrays else "x"
        non_finite = _count_non_finite(arr)
        if non_finite:
            raise CompressorError(f"data file {path}: array {key!r} holds {non_finite} NaN or infinite values")
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
        _check_labels(labels, class_count(model) if not per_sample else None, path)
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
