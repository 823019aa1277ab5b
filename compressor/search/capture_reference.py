"""A search's reference outputs taken from the layers' capture run instead of a run of their own.

Prune captures every weighted layer's input over the calibration set (``layer_error.capture_layers``),
one whole-model run per batch; its search then runs the same model over its search samples for the
reference its judge compares candidates with.  When the search samples are calibration samples
(one unlabeled file split for a held-out verdict: the searched half is in the calibration set) the
capture run computed those outputs already.  They are taken from it only where they are the
outputs a plain run gives bit for bit: the capture ran one sample per batch, as the judge's own
run does for the model (``evaluate.run_batch_size`` 1: large activations, the models where one
run costs most), and each output has one row per sample.  Otherwise None: the caller runs it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx

from ..data import Dataset
from ..evaluate import run_batch_size


def sample_keys(data: Dataset) -> list[bytes]:
    """One digest per sample of its inputs' values, dtypes and shapes (the same sample, the same key)."""
    rows = [hashlib.sha256() for _ in range(data.size)]
    for name in sorted(data.inputs):
        values = np.ascontiguousarray(data.inputs[name])
        head = f"{name}:{values.dtype.str}:{values.shape[1:]}".encode()
        for i, row in enumerate(rows):
            row.update(head)
            row.update(values[i].tobytes())
    return [row.digest() for row in rows]


def rows_in(part: Dataset, whole: Dataset) -> np.ndarray | None:
    """The index in `whole` of each of `part`'s samples (found by their input values), or None
    when one is missing or the two are not plain batched data of the same inputs and constants."""
    if part.per_sample or whole.per_sample or part.recurrent or whole.recurrent:
        return None
    if set(part.inputs) != set(whole.inputs) or set(part.constants) != set(whole.constants):
        return None
    if any(not np.array_equal(part.constants[k], whole.constants[k]) for k in part.constants):
        return None
    where = {key: i for i, key in reversed(list(enumerate(sample_keys(whole))))}
    index = [where.get(key) for key in sample_keys(part)]
    if any(i is None for i in index):
        return None
    return np.asarray(index, dtype=np.int64)


def reference_from_capture(
    model: onnx.ModelProto, batches: list[list[np.ndarray]], whole: Dataset, part: Dataset
) -> list[np.ndarray] | None:
    """`model`'s outputs on `part` from a capture run's per-batch outputs (`batches`) over
    `whole`, when that run gave them bit for bit as the judge's run on `part` would (see the
    module docstring); else None."""
    if not batches or len(batches) != whole.size or part.size == 0:
        return None  # not one sample per batch
    if any(np.ndim(o) == 0 or np.shape(o)[0] != 1 for outs in batches for o in outs):
        return None  # some output has no row per sample
    if run_batch_size(model, part) != 1:
        return None
    index = rows_in(part, whole)
    if index is None:
        return None
    return [np.concatenate([batches[i][k] for i in index], axis=0) for k in range(len(batches[0]))]
