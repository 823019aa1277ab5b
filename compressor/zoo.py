"""`compressor batch` (the Python API: compressor.batch): the pipeline over a model zoo, resumable,
optionally in parallel or on a Dask cluster.

For each model ``<stem>.onnx`` it writes ``<stem>.cmpz`` and ``<stem>.report.json`` into the
output folder, then ``summary.json`` and ``summary.csv`` for the whole zoo.  Data for a model is
looked up in ``--data-dir`` (or beside the model) as ``<stem>_test.npz`` or ``<stem>.npz``
(evaluation) and ``<stem>_calib.npz`` (calibration).  A model whose report already says it is
complete is skipped, so a rerun resumes an interrupted batch: only when the model, its data and
the options are the ones that run used (SHA-256s in the report) and the container is the one it
wrote.  Output names do not depend on the order of the arguments.
A failing model is recorded with its error and the others go on.

Where the models run: one after the other; in ``jobs`` local processes; or, with a Dask
scheduler address, one task per model on an existing ``dask.distributed`` cluster (the optional
``dask`` extra).  A task reads its model and data and writes its container and report itself, so
the workers must see the same paths as the client (a shared filesystem); the client only checks
what is already done, collects the rows and writes the summary.  A model's own failure is a row,
never an exception, so Dask never runs a model again for it: the scheduler reschedules the model
of a worker that died (up to its ``allowed-failures``), and ``retries=1`` covers an exception
from the worker's side of the task.  A worker that dies mid-model leaves no partial file (every
output is named only once complete).
"""

from __future__ import annotations

import csv
import ctypes
import glob
import hashlib
import io
import json
import signal
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

from .errors import CompressorError, UsageError
from .options import check_value
from .paths import atomic_write_bytes, check_outputs
from .pipeline import GateFailedWithReport, run_pipeline
from .present import to_json

PR_SET_PDEATHSIG = 1  # linux/prctl.h
DASK_INSTALL = "pip install 'compressor[dask]'"
# Seconds to reach a Dask scheduler before giving up with one line.
DASK_CONNECT_TIMEOUT = 30

SUMMARY_FIELDS = [
    "model",
    "status",
    "original_bytes",
    "container_bytes",
    "ratio",
    "accuracy_before",
    "accuracy_after",
    "accuracy_drop",
    "top1_agreement",
    "mode",
    "error",
]


def expand_models(patterns) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found += sorted(p.rglob("*.onnx"))
        elif any(ch in pattern for ch in "*?["):
            found += sorted(Path(m) for m in glob.glob(pattern, recursive=True))
        elif p.exists():
            found.append(p)
        else:
            raise UsageError(f"no such model, folder or glob match: {pattern}")
    unique = list(dict.fromkeys(f.resolve() for f in found))
    if not unique:
        raise UsageError("no models found")
    return unique


def _stem_names(models: list[Path]) -> dict[Path, str]:
    """Output names: the file stem; stems that clash get their folder's name and, if that
    still clashes, a short hash of the model's path, so that a model keeps its name whatever
    the order of the arguments."""
    stems: dict[str, int] = {}
    for m in models:
        stems[m.stem] = stems.get(m.stem, 0) + 1
    names = {m: m.stem if stems[m.stem] == 1 else f"{m.parent.name}_{m.stem}" for m in models}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {
        m: name if counts[name] == 1 else f"{name}_{hashlib.sha256(str(m).encode()).hexdigest()[:8]}"
        for m, name in names.items()
    }


def _file_sha256(path: str | Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _batch_key(model: Path, overrides, data: str | None, calib: str | None, gate) -> dict:
    """What a finished model's result depends on: a rerun skips it only when all of it matches."""
    return {
        "model_sha256": _file_sha256(model),
        "data_sha256": _file_sha256(data),
        "calib_sha256": _file_sha256(calib),
        "options": json.loads(to_json({"overrides": overrides or {}, "gate": gate})),
    }


def _find_data(model: Path, data_dir: str | None) -> tuple[str | None, str | None]:
    folders = [Path(data_dir)] if data_dir else []
    folders.append(model.parent)
    data = calib = None
    for folder in folders:
        for candidate in (f"{model.stem}_test.npz", f"{model.stem}.npz"):
            if data is None and (folder / candidate).is_file():
                data = str(folder / candidate)
        if calib is None and (folder / f"{model.stem}_calib.npz").is_file():
            calib = str(folder / f"{model.stem}_calib.npz")
    return data, calib


class Task(NamedTuple):
    """One model of the batch: everything a worker needs, as plain values (paths as seen by the worker)."""

    model: Path
    name: str
    out_dir: str
    overrides: dict | None
    data_dir: str | None
    gate: float | None


Log = Callable[[str], None]
# After each finished model: (models done, total, failed so far).
Step = Callable[[int, int, int], None]


def _one(task: Task) -> dict:
    """Compress one model and write its report; the summary row.  A failure of the model (or of
    writing its report) is a row with status 'failed', never an exception."""
    model, name, out_dir, overrides, data_dir, gate = task
    container = Path(out_dir) / f"{name}.cmpz"
    report_path = Path(out_dir) / f"{name}.report.json"
    data, calib = _find_data(model, data_dir)
    entry = {"model": str(model), "status": "ok", "error": None}
    report = None
    try:
        # The report is written here, whatever happened: it must not overwrite an input either.
        check_outputs(
            {"the report": report_path}, {"the model": str(model), "its data": data, "its calibration": calib}
        )
    except UsageError as e:
        return _summary_row({**entry, "status": "failed", "error": str(e)}, {})
    try:
        report = run_pipeline(str(model), str(container), overrides, data, calib, gate)
    except GateFailedWithReport as e:
        report = e.report
        entry.update(status="gate", error=str(e))
    except CompressorError as e:
        entry.update(status="failed", error=str(e))
    except Exception as e:  # one bad model must not stop the zoo
        entry.update(
            status="failed", error=f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
    if report is None:
        report = {"model": str(model), "error": entry["error"]}
    report["batch_status"] = entry["status"]
    try:
        report["batch_key"] = _batch_key(model, overrides, data, calib, gate)
        report["container_sha256"] = _file_sha256(container) if entry["status"] == "ok" else None
    except OSError as e:
        report["batch_key"] = None
        entry.update(status="failed", error=f"cannot read back {e.filename}: {e.strerror}")
        report["batch_status"] = entry["status"]
    try:
        atomic_write_bytes(report_path, to_json(report).encode())
    except (OSError, CompressorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        entry.update(status="failed", error=f"cannot write {report_path}: {reason}")
    return _summary_row(entry, report)


def _summary_row(entry: dict, report: dict) -> dict:
    stages = report.get("stages") or []
    first = stages[0] if stages else {}
    last = stages[-1] if stages else {}
    container = report.get("container") or {}
    return {
        **entry,
        "original_bytes": report.get("original_bytes"),
        "container_bytes": container.get("bytes"),
        "ratio": container.get("ratio"),
        "accuracy_before": first.get("accuracy"),
        "accuracy_after": last.get("accuracy"),
        "accuracy_drop": last.get("accuracy_drop"),
        "top1_agreement": last.get("top1_agreement"),
        "mode": report.get("mode"),
    }


def _already_done(model: Path, name: str, out_dir: Path, overrides, data_dir, gate) -> dict | None:
    """The report of a model finished by an earlier run with the same model, data and options,
    whose container is still the one that run wrote; None otherwise (then it runs again)."""
    report_path = out_dir / f"{name}.report.json"
    container = out_dir / f"{name}.cmpz"
    if not report_path.is_file() or not container.is_file():
        return None
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("batch_status") != "ok":
        return None
    try:
        data, calib = _find_data(model, data_dir)
        key = _batch_key(model, overrides, data, calib, gate)
        if report.get("batch_key") != key or report.get("container_sha256") != _file_sha256(container):
            return None
    except OSError:
        return None
    return report


def _die_with_parent() -> None:
    """In a worker: be sent SIGTERM when the batch process dies, so no worker is orphaned
    (Linux prctl PR_SET_PDEATHSIG; elsewhere the parent's own cleanup has to do)."""
    # A forked worker inherits the CLI's SIGTERM handler, which raises an exception that the
    # pool's worker loop catches and reports instead of ending: SIGTERM must end a worker.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _run_serial(todo: list[Task], log: Log) -> Iterator[tuple[Task, dict]]:
    for task in todo:
        log(f"compressing {task.model}")
        yield task, _one(task)


def _run_processes(todo: list[Task], jobs: int) -> Iterator[tuple[Task, dict]]:
    """The tasks in `jobs` local processes, yielded as they finish."""
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_die_with_parent)
    try:
        futures = {pool.submit(_one, task): task for task in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BaseException:
        # Interrupted (SIGINT/SIGTERM) or failed: stop the workers now rather than
        # waiting for their models; their outputs are written atomically, so none is partial.
        _stop_workers(pool)
        raise
    pool.shutdown()


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise UsageError(f"--scheduler needs Dask, which is not installed: {DASK_INSTALL}")
    return distributed


def _dask_client(distributed, scheduler: str):
    try:
        return distributed.Client(scheduler, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressorError(f"cannot reach the Dask scheduler at {scheduler}: {reason}")


def _lost_row(task: Task, error: BaseException) -> dict:
    """The row of a model whose task did not come back (its workers died, or the cluster failed)."""
    reason = str(error).splitlines()[0] if str(error).strip() else ""
    message = f"lost on the Dask cluster: {type(error).__name__}: {reason}".rstrip(": ")
    return _summary_row({"model": str(task.model), "status": "failed", "error": message}, {})


def _run_dask(todo: list[Task], scheduler: str) -> Iterator[tuple[Task, dict]]:
    """One task per model on the cluster at `scheduler`, yielded as they finish.  A worker that
    dies mid-model is replaced and its model rescheduled by Dask (up to the scheduler's
    ``distributed.scheduler.allowed-failures``); a model lost for good is a failed row."""
    distributed = _import_distributed()
    client = _dask_client(distributed, scheduler)
    futures = {}
    try:
        for task in todo:
            # pure=False and a fresh key: a rerun computes again instead of reusing a cached result.
            key = f"compress-{task.name}-{uuid.uuid4().hex}"
            futures[client.submit(_one, task, key=key, pure=False, retries=1)] = task
        for future in distributed.as_completed(futures, loop=client.loop):
            task = futures[future]
            try:
                row = future.result()
            except Exception as e:
                row = _lost_row(task, e)
            yield task, row
    except BaseException:
        # Interrupted: take the queued models back; a model already running finishes on its
        # worker (its outputs are complete or absent) and a rerun skips it.
        client.cancel(list(futures))
        raise
    finally:
        client.close()


def run_batch(
    patterns,
    output_dir,
    overrides,
    data_dir,
    jobs,
    gate,
    log: Log = lambda m: None,
    *,
    scheduler: str | None = None,
    step: Step = lambda done, total, failed: None,
) -> dict:
    """Compress every model of `patterns` into `output_dir` (serially, in `jobs` processes, or on
    the Dask cluster at `scheduler`), then write summary.json and summary.csv; the summary."""
    gate = check_value("gate", "max_accuracy_drop", gate)
    if scheduler is not None:
        _import_distributed()  # before any work: one line if Dask is missing
    models = expand_models(patterns)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_outputs({"summary.json": out / "summary.json", "summary.csv": out / "summary.csv"}, {"a model": models})
    names = _stem_names(models)
    rows: dict[Path, dict] = {}
    todo: list[Task] = []
    # Workers elsewhere see absolute paths only (their working folder is not ours).
    task_out = str(out.resolve()) if scheduler else str(out)
    task_data_dir = str(Path(data_dir).resolve()) if scheduler and data_dir else data_dir
    for m in models:
        done = _already_done(m, names[m], out, overrides, data_dir, gate)
        if done is not None:
            rows[m] = {**_summary_row({"model": str(m), "status": "ok", "error": None}, done), "status": "skipped"}
            log(f"skip (already done): {m}")
        else:
            todo.append(Task(m, names[m], task_out, overrides, task_data_dir, gate))
    if scheduler is not None and todo:
        finished = _run_dask(todo, scheduler)
    elif jobs > 1 and len(todo) > 1:
        finished = _run_processes(todo, jobs)
    else:
        finished = _run_serial(todo, log)
    failed = 0
    for count, (task, row) in enumerate(finished, start=1):
        rows[task.model] = row
        failed += row["status"] in ("failed", "gate")
        log(f"{row['status']}: {task.model}" + (f" ({row['error']})" if row.get("error") else ""))
        step(count, len(todo), failed)
    ordered = [rows[m] for m in models]
    summary = {
        "models": ordered,
        "ok": sum(r["status"] == "ok" for r in ordered),
        "skipped": sum(r["status"] == "skipped" for r in ordered),
        "failed": sum(r["status"] in ("failed", "gate") for r in ordered),
    }
    atomic_write_bytes(out / "summary.json", to_json(summary).encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in ordered:
        writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
    atomic_write_bytes(out / "summary.csv", buf.getvalue().encode())
    return summary
