"""The Python API, for notebooks and scripts: the same runs as the CLI, as functions.

    import compressor
    report = compressor.run("model.onnx", out="model.cmpz", data="test.npz", max_accuracy_drop=1.0)
    report = compressor.run(model_proto, data={"x": x, "y": y}, recipe={"share": {"bits_fc": 4}})
    compressor.pack("model.onnx", "model.cmpz")
    model = compressor.unpack("model.cmpz")
    summary = compressor.batch("zoo/", "out/", scheduler="tcp://host:8786")

A model is a path or an ``onnx.ModelProto``; data and calibration an ``.npz`` path or a dict of
numpy arrays (``x`` or one array per input name, optional ``y`` labels); a recipe a TOML path or a
dict of overrides ``{section: {key: value}}`` checked like the CLI's.  In-memory values are written
to a temporary folder for the run (arrays with np.savez: numeric arrays only, never pickled) and
the folder is removed afterwards.  Errors are the CLI's exceptions with the CLI's messages
(compressor.errors: CompressorError, UsageError, GateFailed with ``.report`` on a failed gate).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from . import graph
from .container import pack_file, pack_model, unpack_container, unpack_file
from .container.unpack import DEFAULT_MAX_DECODED_BYTES, read_container_file
from .errors import CompressorError, UsageError
from .options import validate_overrides
from .paths import atomic_write_bytes, check_outputs
from .pipeline import run_pipeline
from .recipe import read_recipe
from .zoo import Log, Step, run_batch

PathLike = str | os.PathLike
Model = PathLike | onnx.ModelProto
Arrays = PathLike | Mapping[str, np.ndarray]
RecipeLike = PathLike | Mapping[str, Mapping]

__all__ = ["batch", "pack", "run", "unpack"]


def _quiet(_msg: str) -> None:
    pass


def run(
    model: Model,
    out: PathLike | None = None,
    data: Arrays | None = None,
    calib: Arrays | None = None,
    max_accuracy_drop: float | None = None,
    recipe: RecipeLike | None = None,
    report: PathLike | None = None,
    log: Log = _quiet,
) -> dict:
    """`compressor run`: compress `model`; the report (dict).  The container is written to `out`
    and the JSON report to `report` when given (both or neither, once everything succeeded)."""
    with _scratch() as scratch:
        model_path = scratch.model(model)
        data_path = scratch.arrays(data, "data")
        calib_path = scratch.arrays(calib, "calib")
        overrides, recipe_path = _recipe(recipe)
        # The pipeline writes a container: without `out`, into the scratch folder, then dropped.
        out_path = str(out) if out is not None else str(scratch.folder / "model.cmpz")
        result = run_pipeline(
            model_path,
            out_path,
            overrides,
            data_path,
            calib_path,
            max_accuracy_drop,
            log,
            report_path=None if report is None else str(report),
            recipe_path=recipe_path,
        )
        if out is None and result.get("container"):
            result["container"]["path"] = None
        if isinstance(model, onnx.ModelProto):
            result["model"] = "<onnx.ModelProto>"
        return result


def pack(model: Model, out: PathLike) -> dict:
    """`compressor pack`: `model` losslessly into the container `out`; the pack stats."""
    if not isinstance(model, onnx.ModelProto):
        return pack_file(model, out)
    check_outputs({"-o": out}, {})
    data, stats = pack_model(model)
    atomic_write_bytes(out, data)
    return {"input": "<onnx.ModelProto>", "output": str(Path(out)), **stats}


def unpack(
    container: PathLike,
    out: PathLike | None = None,
    *,
    verify: bool = True,
    max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
) -> onnx.ModelProto | dict:
    """`compressor unpack`: the model packed in `container`, or, with `out`, the model written
    there and the unpack info (dict).  `verify` checks it against the SHA-256 recorded at pack time."""
    if out is None:
        model, _ = unpack_container(read_container_file(container), verify=verify, max_decoded_bytes=max_decoded_bytes)
        return model
    check_outputs({"-o": out}, {"the container": container})
    return unpack_file(container, out, verify=verify, max_decoded_bytes=max_decoded_bytes)


def batch(
    models: PathLike | Iterable[PathLike],
    out_dir: PathLike,
    scheduler: str | None = None,
    jobs: int = 1,
    data_dir: PathLike | None = None,
    recipe: RecipeLike | None = None,
    max_accuracy_drop: float | None = None,
    log: Log = _quiet,
    step: Step = lambda done, total, failed: None,
) -> dict:
    """`compressor batch`: every model of `models` (files, folders or globs) into `out_dir`, in
    `jobs` local processes or on the Dask cluster at `scheduler`; the summary (dict).  Models
    that fail are rows of the summary (status 'failed' or 'gate'), not exceptions."""
    patterns = [str(models)] if isinstance(models, str | os.PathLike) else [str(m) for m in models]
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise UsageError(f"jobs must be a positive integer, got {jobs!r}")
    overrides, _ = _recipe(recipe)
    data_dir = None if data_dir is None else str(data_dir)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(f"no such data folder: {data_dir}")
    return run_batch(
        patterns, str(out_dir), overrides, data_dir, jobs, max_accuracy_drop, log, scheduler=scheduler, step=step
    )


def _recipe(recipe: RecipeLike | None) -> tuple[dict, str | None]:
    """(overrides, the recipe's path if it is a file)."""
    if recipe is None:
        return {}, None
    if isinstance(recipe, Mapping):
        return validate_overrides(recipe), None
    return read_recipe(recipe), str(recipe)


class _Scratch:
    """A temporary folder holding the in-memory values of a call as the files the pipeline reads."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.labels: dict[str, str] = {}  # temporary path -> what the caller gave, for messages

    def model(self, model: Model) -> str:
        if isinstance(model, str | os.PathLike):
            return str(model)
        if not isinstance(model, onnx.ModelProto):
            raise UsageError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")
        path = self.folder / "model.onnx"
        graph.save_model(model, path)
        self.labels[str(path)] = "<onnx.ModelProto>"
        return str(path)

    def arrays(self, value: Arrays | None, name: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str | os.PathLike):
            return str(value)
        if not isinstance(value, Mapping):
            raise UsageError(f"{name} must be an .npz path or a dict of numpy arrays, got {type(value).__name__}")
        arrays = {}
        for key, array in value.items():
            if not isinstance(key, str):
                raise UsageError(f"{name}: array names must be strings, got {key!r}")
            arrays[key] = np.asarray(array)
            if arrays[key].dtype.hasobject:
                raise UsageError(f"{name}: array {key!r} holds Python objects; give numeric arrays")
        path = self.folder / f"{name}.npz"
        np.savez(path, **arrays)  # numeric arrays only (checked above): nothing is pickled
        self.labels[str(path)] = f"<{name} dict>"
        return str(path)

    def relabel(self, message: str) -> str:
        for path, label in self.labels.items():
            message = message.replace(path, label)
        return message


@contextlib.contextmanager
def _scratch() -> Iterator[_Scratch]:
    """A scratch folder, removed afterwards; errors name what the caller gave, not its temporary files."""
    with tempfile.TemporaryDirectory(prefix="compressor-") as folder:
        scratch = _Scratch(Path(folder))
        try:
            yield scratch
        except CompressorError as e:
            if e.args and isinstance(e.args[0], str):
                e.args = (scratch.relabel(e.args[0]), *e.args[1:])
            raise
