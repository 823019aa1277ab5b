"""`compressor batch`: the pipeline over a model zoo, resumable, optionally in parallel.

For each model ``<stem>.onnx`` it writes ``<stem>.cmpz`` and ``<stem>.report.json`` into the
output folder, then ``summary.json`` and ``summary.csv`` for the whole zoo.  Data for a model is
looked up in ``--data-dir`` (or beside the model) as ``<stem>_test.npz`` or ``<stem>.npz``
(evaluation) and ``<stem>_calib.npz`` (calibration).  A model whose report already says it is
complete is skipped, so a rerun resumes an interrupted batch: only when the model, its data and
the options are the ones that run used (SHA-256s in the report) and the container is the one it
wrote.  Output names do not depend on the order of the arguments.
A failing model is recorded with its error and the others go on.
"""

from __future__ import annotations

import csv
import ctypes
import glob
import hashlib
import io
import json
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .errors import CompressorError, UsageError
from .options import check_value
from .paths import atomic_write_bytes, check_outputs
from .pipeline import GateFailedWithReport, run_pipeline
from .present import to_json

PR_SET_PDEATHSIG = 1  # linux/prctl.h

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


def _one(args) -> dict:
    model, name, out_dir, overrides, data_dir, gate = args
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
    atomic_write_bytes(report_path, to_json(report).encode())
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


def run_batch(patterns, output_dir, overrides, data_dir, jobs, gate, log=lambda m: None) -> dict:
    gate = check_value("gate", "max_accuracy_drop", gate)
    models = expand_models(patterns)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_outputs({"summary.json": out / "summary.json", "summary.csv": out / "summary.csv"}, {"a model": models})
    names = _stem_names(models)
    rows: dict[Path, dict] = {}
    todo = []
    for m in models:
        done = _already_done(m, names[m], out, overrides, data_dir, gate)
        if done is not None:
            rows[m] = {**_summary_row({"model": str(m), "status": "ok", "error": None}, done), "status": "skipped"}
            log(f"skip (already done): {m}")
        else:
            todo.append((m, names[m], str(out), overrides, data_dir, gate))
    if jobs > 1 and len(todo) > 1:
        pool = ProcessPoolExecutor(max_workers=jobs, initializer=_die_with_parent)
        try:
            for args, row in zip(todo, pool.map(_one, todo)):
                rows[args[0]] = row
                log(f"{row['status']}: {args[0]}")
        except BaseException:
            # Interrupted (SIGINT/SIGTERM) or failed: stop the workers now rather than
            # waiting for their models; their outputs are written atomically, so none is partial.
            _stop_workers(pool)
            raise
        pool.shutdown()
    else:
        for args in todo:
            log(f"compressing {args[0]}")
            rows[args[0]] = _one(args)
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
