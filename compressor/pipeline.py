"""`compressor run`: recipe -> prune -> share -> quantize -> pack, each stage measured with ORT.

The default pipeline is Deep Compression made post-training, and it is *guarded*: every lossy
stage is measured on the user's data and kept only if the cumulative loss stays within the
budget, falling back to gentler settings first (more bits, fewer quantized activations), then
to skipping the stage.  Each stage is a ladder of attempts (compressor/stages/); what was
measured decides what is applied:

* labeled data (``--data`` with ``y``): the budget is top-1 accuracy, in points;
* unlabeled inputs (``--calib``, or ``--data`` without ``y``): the budget is fidelity to the
  original model: top-1 agreement (points below 100 %) *and* an output SNR floor in dB, so that
  detectors and regressors whose outputs are not class scores are protected too;
* no data at all: only data-free steps that cannot wreck a model run (int8 per-channel
  weight-only quantization and lossless packing), and the report says nothing was measured.

The container is unpacked at the end and its model must reproduce the last stage's outputs
exactly; a gate (``--max-accuracy-drop``) fails the run with exit code 3, writes the report
and no container.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from . import graph
from .container import pack_model, unpack_container
from .data import Dataset, load_dataset, read_npz
from .errors import CompressorError, GateFailed, UsageError
from .evaluate import make_session, run_model
from .measure import Measure, load_metric
from .options import Recipe, check_value
from .paths import check_outputs, write_all_atomically
from .present import to_json
from .report import RunResult, StageRow, build_report, check_html_available, render_html
from .stages import STAGES, StageContext
from .stages.ladder import model_bytes

# The report's per-stage packed-size column is measured up to this model size: packing a large
# float model costs minutes (xz on every float tensor).  The container row is always measured.
PACKED_COLUMN_MAX_BYTES = 64 << 20
# Calibration uses at most this many samples (ranges converge long before).
MAX_CALIB_SAMPLES = 512
# A single data set is split for a held-out verdict only when each part gets this many samples.
MIN_HOLD_OUT = 4

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


class GateFailedWithReport(GateFailed):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def run_pipeline(
    model_path: str,
    out_path: str | None,
    overrides: dict | None = None,
    data_path: str | None = None,
    calib_path: str | None = None,
    max_accuracy_drop: float | None = None,
    log: Log = _quiet,
    *,
    report_path: str | None = None,
    html_path: str | None = None,
    recipe_path: str | None = None,
) -> dict:
    """Run the pipeline; returns the report (dict).  Raises GateFailed (with .report) on a failed gate.

    Writes the container (`out_path`), the JSON report and the HTML report, all or none, once
    everything succeeded; the paths are checked before any work (see paths.check_outputs)."""
    started = time.perf_counter()
    max_accuracy_drop = check_value("gate", "max_accuracy_drop", max_accuracy_drop)
    if html_path is not None:
        check_html_available()
    original, external_files = graph.load_model_and_files(model_path)
    outputs = {"-o": out_path, "--report": report_path, "--html": html_path}
    inputs = {
        "the input model": model_path,
        "the model's external data": external_files,
        "--data": data_path,
        "--calib": calib_path,
        "--recipe": recipe_path,
    }
    check_outputs(outputs, inputs)
    original_bytes = Path(model_path).stat().st_size if model_path != "-" else model_bytes(original)
    data = load_dataset(data_path, original) if data_path else None
    calib = load_dataset(calib_path, original) if calib_path else None
    mode = _dataset_mode(data, calib)
    if max_accuracy_drop is not None and mode == "none":
        raise UsageError("--max-accuracy-drop needs --data (or --calib) to measure against")
    recipe = Recipe.for_mode(mode, overrides)
    gate = recipe.gate
    metric = None
    if gate.metric is not None:
        if mode == "none":
            raise UsageError("--metric needs --data (or --calib) to score the outputs on")
        metric = load_metric(gate.metric)
        mode = "metric"
    verdict_path = data_path if data is not None else calib_path
    eval_data, search_data, verdict_index = verdict_and_search(data, calib, gate.hold_out)
    calib_data = calib if calib is not None else search_data
    if calib_data is not None and calib_data.size > MAX_CALIB_SAMPLES:
        calib_data = calib_data.take(MAX_CALIB_SAMPLES)

    if max_accuracy_drop is None:
        max_accuracy_drop = gate.max_accuracy_drop
    budget = gate.budget if max_accuracy_drop is None else min(gate.budget, max_accuracy_drop)
    measure = Measure(
        eval_data,
        mode,
        budget,
        gate.min_snr_db,
        gate.explicit_snr,
        max_kl=gate.max_kl,
        metric=metric,
        metric_arrays=_metric_arrays(verdict_path, (data or calib).size, verdict_index) if metric else {},
        search_data=search_data,
    )

    log(f"original: {original_bytes:,} bytes; measuring on {eval_data.size if eval_data else 0} samples ({mode})")
    rows = [StageRow("original", True, original_bytes, measure.start(original))]
    model, outputs = original, measure.last_outputs
    stage_models = [original]  # the model after each row of `rows`, for the packed-size column
    for stage in STAGES:
        # The stages search on `search_data`; the judge's verdict is on `eval_data` (see verdict_and_search).
        ctx = StageContext(model, measure, search_data, calib_data, outputs, tuple(rows), log, _packed_size)
        options = getattr(recipe, stage.NAME)
        result = stage.run(options, ctx) if options.enabled else ctx.skipped(stage.NAME, "disabled")
        rows.append(result.row)
        model, outputs = result.model, result.outputs
        stage_models.append(model)
    final_packing = _fill_packed_bytes(rows, stage_models, log)
    shared_model = next((m for r, m in zip(rows, stage_models) if r.stage == "share" and r.applied), None)

    # ---- gate (before anything is written)
    final_metrics = rows[-1].metrics
    gate_result = {"max_accuracy_drop": max_accuracy_drop, "passed": True, "reason": ""}
    if max_accuracy_drop is not None:
        loss = measure.loss(final_metrics)
        if loss is not None and loss > max_accuracy_drop + 1e-9:
            what = {"accuracy": "accuracy drop", "metric": "task metric drop"}.get(mode, "fidelity loss")
            gate_result.update(
                passed=False, reason=f"{what} {loss:.2f} points exceeds --max-accuracy-drop {max_accuracy_drop:g}"
            )

    # ---- pack, or the model as it is (pack disabled); written with the reports at the end
    container = None
    container_bytes = None
    pack_stats = None
    if recipe.pack.enabled and gate_result["passed"]:
        if out_path is None:
            raise UsageError("run needs -o OUT.cmpz")
        t0 = time.perf_counter()
        log("pack: writing the container")
        container_bytes, pack_stats, verified = _pack_and_verify(model, eval_data, outputs, final_packing)
        container = {"path": str(out_path), "bytes": len(container_bytes), "verified": verified}
        container["ratio"] = original_bytes / container["bytes"]
        note = (
            "unpacked model reproduces the last stage's outputs exactly"
            if verified == "outputs"
            else "tensors verified bit-identical"
        )
        rows.append(StageRow("pack", True, container["bytes"], final_metrics, time.perf_counter() - t0, note=note))
    elif not recipe.pack.enabled and out_path is not None and gate_result["passed"]:
        if model.ByteSize() > graph.EXTERNAL_DATA_THRESHOLD:  # beside its external data: written now
            graph.save_model(model, out_path, input_path=model_path)
            size = Path(out_path).stat().st_size
        else:
            container_bytes = model.SerializeToString()
            size = len(container_bytes)
        container = {"path": str(out_path), "bytes": size, "verified": None, "ratio": original_bytes / size}

    run = RunResult(
        model_path=model_path,
        original=original,
        original_bytes=original_bytes,
        mode=mode,
        budget=budget,
        measure=measure,
        final_model=model,
        pack_stats=pack_stats,
        container=container,
        gate=gate_result,
        recipe=recipe.as_dict(),
        shared_model=shared_model,
    )
    report = build_report(run, rows)
    report["seconds"] = time.perf_counter() - started
    files = {out_path: container_bytes} if container_bytes is not None else {}
    if report_path is not None:
        files[report_path] = to_json(report).encode()
    if html_path is not None:
        files[html_path] = render_html(report).encode()
    write_all_atomically(files)
    if not gate_result["passed"]:
        raise GateFailedWithReport(gate_result["reason"], report)
    return report


def verdict_and_search(
    data: Dataset | None, calib: Dataset | None, hold_out: bool = True
) -> tuple[Dataset | None, Dataset | None, np.ndarray | None]:
    """(the verdict's data, the searches' data, the verdict's sample indices in its file).

    Labeled --data: the searches and the verdict both use it, as the task's own measure (the
    calibration set has no labels to search on; searching it in agreement, or on half of
    --data, made the sample models' containers 13 % larger for no accuracy gained, see
    benchmarks/README.md); the report says the verdict is not held out.  Unlabeled --data with
    --calib: the searches tune on the calibration set, the verdict is --data.  One unlabeled
    set and `hold_out`: split by index (counts only): the odd samples are held out for the
    verdict, the even ones searched on, so that the verdict is never taken on samples the
    searches tuned on; interleaved, since data files are often sorted by class.  A set of
    fewer than 2 * MIN_HOLD_OUT samples is not split."""
    if data is not None and data.labels is not None:
        return data, data, None
    if data is not None and calib is not None:
        return data, calib, None
    only = data if data is not None else calib
    if only is None or not hold_out or only.size < 2 * MIN_HOLD_OUT:
        return only, only, None
    index = np.arange(only.size)
    return only.select(index[1::2]), only.select(index[0::2]), index[1::2]


def _metric_arrays(path: str, total: int, index: np.ndarray | None) -> dict[str, np.ndarray]:
    """The verdict data file's arrays for the user metric: those with one row per sample (of
    the file's `total`) cut to the verdict's samples (`index`), the others whole."""
    arrays = read_npz(path)
    if index is None:
        return arrays
    return {k: a[index] if a.ndim and a.shape[0] == total else a for k, a in arrays.items()}


def _dataset_mode(data: Dataset | None, calib: Dataset | None) -> str:
    if data is not None and data.labels is not None:
        return "accuracy"
    if data is not None or calib is not None:
        return "fidelity"
    return "none"


def _packed_size(model: onnx.ModelProto) -> int:
    return len(pack_model(model)[0])


def _fill_packed_bytes(rows: list[StageRow], models: list[onnx.ModelProto], log: Log) -> tuple[bytes, dict] | None:
    """Pack every stage's model (in memory) so the report shows what each pass buys in the container.

    Returns the packing of the last model (bytes, stats), which is the container `run` writes,
    so that it is not packed twice; None when that model was too large to pack here.
    """
    sizes: dict[int, int | None] = {}
    last = None
    for row, m in zip(rows, models):
        if id(m) not in sizes and row.packed_bytes is not None and m is not models[-1]:
            sizes[id(m)] = row.packed_bytes  # packed already, to choose between two attempts (see run_ladder)
        if id(m) not in sizes and m.ByteSize() > PACKED_COLUMN_MAX_BYTES:
            log(f"not measuring the packed size after {row.stage}: model over {PACKED_COLUMN_MAX_BYTES >> 20} MiB")
            sizes[id(m)] = None
        if id(m) not in sizes:
            log(f"measuring the packed size after {row.stage}")
            packed = pack_model(m)
            sizes[id(m)] = len(packed[0])
            if m is models[-1]:
                last = packed
        row.packed_bytes = sizes[id(m)]
    return last


def _pack_and_verify(model, eval_data, last_outputs, packed: tuple[bytes, dict] | None = None):
    """Pack (unless `packed` already holds it), unpack, check the unpacked model reproduces the
    outputs; returns the container's bytes, the pack stats and what was verified."""
    data, stats = packed if packed is not None else pack_model(model)
    # verify=True: the unpacked serialization must hash to what was packed (SHA-256 in the manifest).
    unpacked, _ = unpack_container(data, verify=True)
    verified = "tensors"
    if eval_data is not None and last_outputs is not None:
        outputs = run_model(unpacked, eval_data)
        if len(outputs) != len(last_outputs) or not all(np.array_equal(a, b) for a, b in zip(outputs, last_outputs)):
            raise CompressorError("the unpacked container does not reproduce the model's outputs")
        verified = "outputs"
    else:
        make_session(unpacked)  # it must still load in ORT
    return data, stats, verified
