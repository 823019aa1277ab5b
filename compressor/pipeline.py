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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import graph
from .container import EncodingMemo, pack_model, unpack_container
from .data import Dataset, load_dataset, read_npz
from .errors import CompressorError, GateFailed, UsageError
from .evaluate import make_session, run_batch_size, run_model, speedup
from .heap import give_back
from .measure import Measure, load_metric
from .options import Recipe, check_value
from .passes.finetune import require_torch
from .passes.quantize import QuantizeSettings, quantize
from .paths import check_outputs, write_all_atomically
from .present import to_json
from .report import RunResult, StageRow, build_report, check_html_available, model_macs, render_html
from .search.layer_inputs import LayerInputs
from .sequences import confirmed, recurrent_pairs, split_sequences
from .stages import STAGES, StageContext, retry
from .stages.held_original import HeldOriginal
from .stages.ladder import model_bytes, rejection, rejection_text

# The report's per-stage packed-size column is measured up to this model size: packing a large
# float model costs minutes (xz on every float tensor).  The container row is always measured.
PACKED_COLUMN_MAX_BYTES = 64 << 20
# The int8-weights-only floor is built for models up to this size (its int8 model is a quarter).
FLOOR_MAX_BYTES = 4 * PACKED_COLUMN_MAX_BYTES
# A model no decision packed (the original, a stage's result a later stage replaced) is packed
# for the report's column only up to this size: above it that pack would be the report's alone,
# a pass of xz/zstd over every float tensor, and its row's packed bytes stay unmeasured (None,
# "-" in the table; report["packs"]["column"] says so).  The retry packs what it compares.
REPORT_PACK_MAX_BYTES = 4 << 20
# Pruning that bought less than this share of the container is undone when a later stage
# missed the budget by no more than pruning spent (see _retry_unpruned).
PRUNE_RETRY_MAX_GAIN = 0.05
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
    original, external_files = graph.load_model_and_files(model_path, max_bytes=None)
    outputs = {"-o": out_path, "--report": report_path, "--html": html_path}
    inputs = {
        "the input model": model_path,
        "the model's external data": external_files,
        "--data": data_path,
        "--calib": calib_path,
        "--recipe": recipe_path,
        "--train": _train_path(overrides),
    }
    check_outputs(outputs, inputs)
    original_bytes = (
        Path(model_path).stat().st_size + sum(Path(f).stat().st_size for f in external_files)
        if model_path != "-"
        else model_bytes(original)
    )  # with its external data: what the container replaces
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
    data, calib = (_with_recurrence(original, d, gate.recurrent) for d in (data, calib))
    verdict_path = data_path if data is not None else calib_path
    # A user metric reads the verdict's rows of its file: recurrent data is then not split by sequence.
    recurrent = (data or calib) is not None and bool((data or calib).recurrent)
    hold_out = gate.hold_out and not (recurrent and metric is not None)
    eval_data, search_data, verdict_index = verdict_and_search(data, calib, hold_out, original)
    calib_data = calibration_data(data, calib, search_data)
    train_data = None
    if recipe.finetune.enabled:
        require_torch()
        if recipe.finetune.train is None and calib is None:
            raise UsageError(
                "--finetune needs training inputs: --train T.npz (or --calib; never the --data it is judged on)"
            )
        train_data = load_dataset(recipe.finetune.train, original) if recipe.finetune.train else calib_data
    elif recipe.finetune.train is not None:
        log("--train is only used with --finetune EPOCHS; ignored")
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
    packer = Packer(log)
    first = StageRow("original", True, original_bytes, measure.start(original))
    # The stages search on `search_data`; the judge's verdict is on `eval_data` (see verdict_and_search).
    run_stages = _stage_runner(recipe, measure, search_data, calib_data, log, packer, train_data)
    # A large original is let go while the later stages run and read again after (held_original).
    held = HeldOriginal.for_run(model_path, external_files, original_bytes, recipe.finetune.enabled)
    start = Route([first], [original], [measure.last_outputs])
    if held is not None:
        original = None  # the route holds it until the first stage that changes the model
    route = run_stages(start, STAGES, held=held)
    if held is not None:
        original = held.read_again(route.models, start.models) or route.models[0]
    del start
    give_back()
    objective = recipe.run.objective
    _fill_packed_bytes(route, packer)
    _apply_objective(route, objective, log)
    route, retry = _retry_unpruned(route, recipe, measure, run_stages, packer, log)
    route, structured_compare = _compare_without_structured(route, recipe, run_stages, packer, log)
    floor = None
    if recipe.pack.enabled and objective == "size" and recipe.quantize.enabled and mode != "none":
        floor = _floor(route, original, recipe, measure, packer, log)
    shape_data = calib_data if calib_data is not None else eval_data
    _fill_macs(route, shape_data.sample_shapes() if shape_data is not None else None)
    model, outputs, rows = route.models[-1], route.outputs[-1], route.rows
    final_packing = packer.packing(model)
    shared_model = None
    if rows[-1].stage != "floor":
        shared_at = next((i for i, r in enumerate(rows) if r.stage == "share" and r.applied), None)
        if shared_at is not None:
            # The codebooks as the fine-tune after share left them, when it ran (the container's).
            tuned = [i for i in range(shared_at + 1, len(rows)) if rows[i].stage == "finetune" and rows[i].applied]
            shared_model = route.models[tuned[-1] if tuned else shared_at]

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
        if held is not None and original is route.models[0]:
            # Nothing packs or verifies the original: let go again while the container is unpacked
            # and its model run, read again for the report (held_original).
            held.let_go(route.models)
            original = None
        container_bytes, pack_stats, verified = _pack_and_verify(model, eval_data, outputs, final_packing)
        if held is not None and original is None:
            give_back()  # the unpacked model's and its session's pages, before the original is read
            original = held.read_again(route.models) or route.models[0]
        container = {"path": str(out_path), "bytes": len(container_bytes), "verified": verified}
        container["ratio"] = original_bytes / container["bytes"]
        note = (
            "unpacked model reproduces the last stage's outputs exactly (its first batch; the same SHA-256)"
            if verified == "outputs"
            else "tensors verified bit-identical"
        )
        rows.append(StageRow("pack", True, container["bytes"], final_metrics, time.perf_counter() - t0, note=note))
        rows[-1].macs = rows[-2].macs
    elif not recipe.pack.enabled and out_path is not None and gate_result["passed"]:
        if graph.model_bytes(model) > graph.EXTERNAL_DATA_THRESHOLD:  # beside its external data: written now
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
    report["objective"] = objective
    report["retry"] = retry
    if structured_compare is not None:
        report["structured_compare"] = structured_compare
    if eval_data is not None and any(r.applied and r.stage in SHAPE_STAGES for r in rows):
        # Shapes shrank: what that buys at run time, measured (the report's only timing of models).
        log("speed: ORT latency before and after")
        report["speed"] = speedup(original, model, eval_data)
    report["floor"] = floor
    report["packs"] = {"models": packer.packs, "seconds": round(packer.seconds, 3), "fields_reused": packer.memo.reused}
    if any(s["packed_bytes"] is None for s in report["stages"]):
        report["packs"]["column"] = (
            "packed bytes not measured for the stages shown '-': their models were not packed (over "
            f"{REPORT_PACK_MAX_BYTES >> 20} MiB, and no decision compared them); no estimate is given"
        )
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
    data: Dataset | None, calib: Dataset | None, hold_out: bool = True, model: onnx.ModelProto | None = None
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
    fewer than 2 * MIN_HOLD_OUT samples is not split.  Recurrent data (steps of sequences, see
    sequences) is split by sequence (the odd ones held out), never by step; not split when
    the sequences' axis is unclear (`model` declares the inputs' static axes)."""
    if data is not None and data.labels is not None:
        return data, data, None
    if data is not None and calib is not None:
        return data, calib, None
    only = data if data is not None else calib
    if only is not None and hold_out and only.recurrent:
        split = split_sequences(model, only, MIN_HOLD_OUT) if model is not None else None
        return (*split, None) if split is not None else (only, only, None)
    if only is None or not hold_out or only.size < 2 * MIN_HOLD_OUT:
        return only, only, None
    index = np.arange(only.size)
    return only.select(index[1::2]), only.select(index[0::2]), index[1::2]


def calibration_data(data: Dataset | None, calib: Dataset | None, search_data: Dataset | None) -> Dataset | None:
    """What calibration (ranges, captures, refits, fine-tuning) reads: --calib beside --data, else
    the searches' data.  With --calib alone the verdict is a split of it, and calibration never
    sees the verdict's samples."""
    return calib if calib is not None and data is not None else search_data


def _with_recurrence(model: onnx.ModelProto, data: Dataset | None, spec: str) -> Dataset | None:
    """`data` with the model's states fed back (sequences.recurrent_pairs); the pairs found by
    name are kept only when the output has the stored state's shape on the first step."""
    if data is None:
        return None
    pairs = recurrent_pairs(model, data, spec)
    if pairs and spec == "auto":
        pairs = confirmed(make_session(model), data, pairs)
    if not pairs:
        return data
    return Dataset(data.inputs, data.labels, data.constants, data.per_sample, pairs)


def _metric_arrays(path: str, total: int, index: np.ndarray | None) -> dict[str, np.ndarray]:
    """The verdict data file's arrays for the user metric: those with one row per sample (of
    the file's `total`) cut to the verdict's samples (`index`), the others whole."""
    arrays = read_npz(path)
    if index is None:
        return arrays
    return {k: a[index] if a.ndim and a.shape[0] == total else a for k, a in arrays.items()}


def _train_path(overrides: dict | None) -> str | None:
    """The fine-tune's training file as given (checked with the other inputs before any work)."""
    section = (overrides or {}).get("finetune")
    path = section.get("train") if isinstance(section, dict) else None
    return path if isinstance(path, str) else None


def _dataset_mode(data: Dataset | None, calib: Dataset | None) -> str:
    if data is not None and data.labels is not None:
        return "accuracy"
    if data is not None or calib is not None:
        return "fidelity"
    return "none"


class Packer:
    """Packs models in memory, once each: the packings of the models a run still holds (the
    container of the one it keeps is then written without packing it again)."""

    def __init__(self, log: Log = _quiet):
        self.log = log
        self.packs = 0  # models packed (each costs an xz/zstd pass over every tensor)
        self.seconds = 0.0  # and the time that took (for the report; no plan reads it)
        self._done: dict[int, tuple[onnx.ModelProto, tuple[bytes, dict]]] = {}
        # The last model's field encodings, reused for the same bytes (models up to PACKED_COLUMN_MAX_BYTES).
        self.memo = EncodingMemo()

    def packing(self, model: onnx.ModelProto) -> tuple[bytes, dict] | None:
        entry = self._done.get(id(model))
        return entry[1] if entry is not None and entry[0] is model else None

    def size(self, model: onnx.ModelProto) -> int:
        packed = self.packing(model)
        if packed is None:
            self.packs += 1
            t0 = time.perf_counter()
            packed = pack_model(model, memo=self.memo if graph.model_bytes(model) <= PACKED_COLUMN_MAX_BYTES else None)
            self.seconds += time.perf_counter() - t0
            self._done[id(model)] = (model, packed)
        return len(packed[0])

    def size_within(self, model: onnx.ModelProto, what: str, max_bytes: int = PACKED_COLUMN_MAX_BYTES) -> int | None:
        """The packed size, or None for a model not packed yet over `max_bytes` (minutes of xz)."""
        if self.packing(model) is None and graph.model_bytes(model) > max_bytes:
            self.log(f"not measuring the packed size {what}: model over {max_bytes / (1 << 20):g} MiB, not packed")
            return None
        return self.size(model)

    def keep_only(self, models: list[onnx.ModelProto]) -> None:
        """Forget the packings (and the models) the run no longer holds: a ladder's losers."""
        alive = {id(m) for m in models}
        self._done = {k: v for k, v in self._done.items() if k in alive}


@dataclass
class Route:
    """One way through the stages: the report's rows, the model after each and its outputs on
    the evaluation data (None: not measured)."""

    rows: list[StageRow]
    models: list[onnx.ModelProto]
    outputs: list[list | None]


def _stage_runner(recipe: Recipe, measure: Measure, search_data, calib_data, log: Log, packer: Packer, train_data=None):
    # One capture of the layers' input covariances, handed from prune to share (search/layer_inputs.py).
    layer_inputs = LayerInputs()

    def run_stages(route: Route, stages, keep: Route | None = None, held: HeldOriginal | None = None) -> Route:
        """`keep`: another route whose packings the packer keeps meanwhile.  `held`: the
        original (route.models[0]) is let go once a stage changed the model (held_original)."""
        rows, models, outputs = list(route.rows), list(route.models), list(route.outputs)
        kept = keep.models if keep is not None else []
        for stage in stages:
            options = getattr(recipe, stage.NAME)
            if not options.enabled and getattr(stage, "OPTIONAL", False):
                continue  # an optional stage (fine-tune) has no row unless asked for
            ctx = StageContext(
                models[-1],
                measure,
                search_data,
                calib_data,
                outputs[-1],
                tuple(rows),
                log,
                packer.size,
                original=route.models[0],
                train_data=train_data,
                objective=recipe.run.objective,
                layer_inputs=layer_inputs,
                packing=packer.packing,
            )
            result = stage.run(options, ctx) if options.enabled else ctx.skipped(stage.NAME, "disabled")
            rows.append(result.row)
            models.append(result.model)
            outputs.append(result.outputs)
            packer.keep_only(models + kept)
            if held is not None:
                held.let_go(models, route.models)
            give_back()  # what the stage freed (its searches, its rejected candidates)
        return Route(rows, models, outputs)

    return run_stages


def _fill_packed_bytes(route: Route, packer: Packer) -> None:
    """Each stage's packed bytes, so the report shows what each pass buys in the container: the
    last model whatever its size (it is the container `run` writes), the others as a ladder's
    comparison packed them already, else packed only up to REPORT_PACK_MAX_BYTES; the one before
    an applied quantize up to PACKED_COLUMN_MAX_BYTES (_apply_objective compares the two)."""
    last = len(route.models) - 1
    compared = last - 1 if route.rows[last].stage == "quantize" and route.rows[last].applied else None
    for i, (row, m) in enumerate(zip(route.rows, route.models)):
        limit = PACKED_COLUMN_MAX_BYTES if i == compared else REPORT_PACK_MAX_BYTES
        row.packed_bytes = packer.size(m) if i == last else packer.size_within(m, f"after {row.stage}", limit)


def _fill_macs(route: Route, sample_shapes: dict[str, tuple[int, ...]] | None) -> None:
    """Each stage row's MACs (batch 1, dynamic input dims as the data's), counted once per
    distinct model (a skipped stage's is its input's)."""
    counted: dict[int, int | None] = {}
    for row, m in zip(route.rows, route.models):
        if id(m) not in counted:
            counted[id(m)] = model_macs(m, sample_shapes)
        row.macs = counted[id(m)]


def _apply_objective(route: Route, objective: str, log: Log) -> None:
    """The quantize stage against its input's container (run.objective): with "size" a result
    that packs larger is not kept; with "int8-kernels" it is, and its row says what it cost."""
    i = len(route.rows) - 1
    row = route.rows[i]
    if row.stage != "quantize" or not row.applied:
        return
    before = route.rows[i - 1]
    if row.packed_bytes is None or before.packed_bytes is None:
        row.note = (row.note + "; " if row.note else "") + "packed size not compared with the stage before (too large)"
        return
    lost = row.packed_bytes - before.packed_bytes
    if lost <= 0:
        return
    if objective == "int8-kernels":
        row.cost_bytes = lost
        row.note = (
            f"kept for its int8 kernels (objective int8-kernels): packs {lost:,} bytes larger than {before.stage}'s "
            f"({row.packed_bytes:,} vs {before.packed_bytes:,})"
        )
        log(f"quantize: kept for int8 kernels, costs {lost:,} bytes of container")
        return
    setting = row.options.get("setting")
    log(f"quantize: {setting} packs {lost:,} bytes larger than {before.stage}'s, not kept (objective size)")
    route.rows[i] = StageRow(
        "quantize",
        False,
        before.bytes,
        before.metrics,
        row.seconds,
        note=(
            f"not kept: {setting} packs {lost:,} bytes larger than {before.stage}'s "
            f"({row.packed_bytes:,} vs {before.packed_bytes:,}); int8 kernels given up (objective size)"
        ),
        attempts=row.attempts,
        packed_bytes=before.packed_bytes,
        rejected_by=[{"measure": "packed_bytes", "value": row.packed_bytes, "limit": before.packed_bytes, "by": lost}],
        rejected_metrics=row.metrics,
    )
    route.models[i], route.outputs[i] = route.models[i - 1], route.outputs[i - 1]


def _run_without(
    route: Route, at: int, undone: StageRow, run_stages, recipe: Recipe, packer: Packer, log: Log
) -> Route:
    """The route's later stages run once more from the model before stage `at` (its row replaced
    by `undone`), with their packed bytes and the objective applied; `route`'s packings are kept."""
    rows = route.rows
    without = Route(
        rows[:at] + [undone],
        route.models[:at] + [route.models[at - 1]],
        route.outputs[:at] + [route.outputs[at - 1]],
    )
    later = [s for s in STAGES if s.NAME in {r.stage for r in rows[at + 1 :]}]
    other = run_stages(without, later, keep=route)
    _fill_packed_bytes(other, packer)
    _apply_objective(other, recipe.run.objective, log)
    return other


def _retry_unpruned(
    route: Route, recipe: Recipe, measure: Measure, run_stages, packer: Packer, log: Log
) -> tuple[Route, dict | None]:
    """Pruning that gained little must not block a later stage that would gain much more: when
    pruning bought under PRUNE_RETRY_MAX_GAIN of the container and a later stage was rejected by
    no more than what pruning spent, or fell back from its first rung by no more (stages/retry;
    unpacked large models: pruning's gain bounded by the bytes it zeroed), the later stages run once more
    on the unpruned model and the smaller final container wins (the pruned one on a tie).
    Returns the route kept and what the report says (None when not tried)."""
    rows = route.rows
    prune = next((i for i, r in enumerate(rows) if r.stage == "prune"), None)
    if prune is None or not rows[prune].applied or recipe.prune.sparsity is not None:
        return route, None
    # Which stages pruning blocked first (no pack): only then is what pruning gained worth packing.
    blocked = [r.stage for r in rows[prune + 1 :] if retry.blocked_by_pruning(measure, r, rows[prune])]
    if not blocked:
        return route, None
    for i in (prune - 1, prune):
        if rows[i].packed_bytes is None:  # not packed for the report's column (REPORT_PACK_MAX_BYTES)
            rows[i].packed_bytes = packer.size_within(route.models[i], f"after {rows[i].stage}")
    before, after = rows[prune - 1].packed_bytes, rows[prune].packed_bytes
    if before is not None and after is not None:
        gain = 1 - after / before
    else:  # not packed (a large model): the bytes pruning zeroed bound its gain
        gain = retry.zeroed_share(route.models[prune - 1], route.models[prune])
    if gain > PRUNE_RETRY_MAX_GAIN:
        return route, None
    reason = (
        f"pruning gained {100 * gain:.1f} % of the container and {', '.join(blocked)} missed the budget "
        "by less than pruning spent"
    )
    log(f"retry: {reason}; running the later stages on the unpruned model")
    undone = StageRow(
        "prune",
        False,
        rows[prune - 1].bytes,
        rows[prune - 1].metrics,
        rows[prune].seconds,
        note=f"undone: gained {100 * gain:.1f} % of the container; the later stages fit better without it",
        attempts=rows[prune].attempts,
        packed_bytes=before,
    )
    other = _run_without(route, prune, undone, run_stages, recipe, packer, log)
    pruned_bytes, unpruned_bytes = rows[-1].packed_bytes, other.rows[-1].packed_bytes
    kept, dropped = (other, route) if unpruned_bytes < pruned_bytes else (route, other)
    packer.keep_only(kept.models)
    log(f"retry: {pruned_bytes:,} bytes with pruning, {unpruned_bytes:,} without")
    return kept, {
        "reason": reason,
        "kept": "without pruning" if kept is other else "with pruning",
        "packed_bytes_with_pruning": pruned_bytes,
        "packed_bytes_without_pruning": unpruned_bytes,
        "other_way": [
            {"stage": r.stage, "applied": r.applied, "setting": r.options.get("setting"), "note": r.note}
            for r in dropped.rows[prune:]
        ],
    }


# Stages that change tensor shapes (and MACs), so the report measures the latency they buy.
SHAPE_STAGES = ("structured", "lowrank")


def _compare_without_structured(
    route: Route, recipe: Recipe, run_stages, packer: Packer, log: Log
) -> tuple[Route, dict | None]:
    """Objective "size": the structured stage checks its model against its input, but the later
    stages may buy less on the smaller model than on the whole one (unstructured pruning and
    share then have fewer weights to spend the budget on).  The later stages run once more
    without it and the smaller final container wins (structured pruning on a tie: fewer MACs).
    Returns the route kept and what the report says (None when not compared)."""
    rows = route.rows
    at = next((i for i, r in enumerate(rows) if r.stage == "structured"), None)
    if at is None or not rows[at].applied or recipe.structured.objective != "size":
        return route, None
    log("structured: running the later stages without it, to compare the containers")
    undone = StageRow(
        "structured",
        False,
        rows[at - 1].bytes,
        rows[at - 1].metrics,
        rows[at].seconds,
        note="the later stages run without it",
        attempts=rows[at].attempts,
        packed_bytes=rows[at - 1].packed_bytes,
    )
    other = _run_without(route, at, undone, run_stages, recipe, packer, log)
    with_bytes, without_bytes = rows[-1].packed_bytes, other.rows[-1].packed_bytes
    kept = other if without_bytes < with_bytes else route
    if kept is other:
        undone.note = (
            f"undone: the later stages give a smaller container without it ({without_bytes:,} vs {with_bytes:,} bytes)"
        )
    packer.keep_only(kept.models)
    log(f"structured: {with_bytes:,} bytes with it, {without_bytes:,} without")
    return kept, {
        "kept": "with structured pruning" if kept is route else "without structured pruning",
        "packed_bytes_with": with_bytes,
        "packed_bytes_without": without_bytes,
        "other_way": [
            {
                "stage": r.stage,
                "applied": r.applied,
                "setting": r.options.get("setting"),
                "note": r.note,
                "packed_bytes": r.packed_bytes,
                "accuracy": r.metrics.get("accuracy"),
                "top1_agreement": r.metrics.get("top1_agreement"),
            }
            for r in (other if kept is route else route).rows[at:]
        ],
    }


def _floor(route: Route, original: onnx.ModelProto, recipe: Recipe, measure: Measure, packer: Packer, log: Log) -> dict:
    """The int8-weights-only container of the original: when it fits the budget and packs
    smaller than the run's result, the run returns it (a row "floor").  Packed first and judged
    only when smaller: one quantize pass, one pack, at most one run over the data."""
    final = route.rows[-1].packed_bytes
    if graph.model_bytes(original) > FLOOR_MAX_BYTES:
        return {"computed": False, "note": f"not computed: model over {FLOOR_MAX_BYTES >> 20} MiB"}
    opts = recipe.quantize
    settings = QuantizeSettings(activations="none", per_channel=True, symmetric=opts.symmetric, exclude=opts.exclude)
    try:
        floor_model, stats = quantize(original, None, settings)
    except CompressorError as e:
        return {"computed": False, "note": f"not computed: {e}"}
    size = packer.size(floor_model)
    entry = {"computed": True, "setting": "int8 weights only (per channel)", "packed_bytes": size}
    if final is not None and size >= final:
        entry.update(kept=False, note=f"not smaller than the run's container ({size:,} vs {final:,} bytes)")
        packer.keep_only(route.models)
        return entry
    t0 = time.perf_counter()
    metrics, outputs = measure(floor_model)
    entry.update(
        {k: metrics.get(k) for k in ("accuracy", "accuracy_drop", "top1_agreement", "snr_db", "decision_risk")}
    )
    if not measure.within(metrics):
        entry.update(kept=False, rejected_by=rejection(measure, metrics))
        entry["note"] = f"smaller ({size:,} vs {final:,} bytes) but {rejection_text(entry['rejected_by'])}"
        packer.keep_only(route.models)
        return entry
    note = f"int8 weights + pack was smaller by {final - size:,} bytes"
    log(f"floor: {note}")
    entry.update(kept=True, note=note, smaller_by=final - size)
    row = StageRow(
        "floor",
        True,
        model_bytes(floor_model),
        metrics,
        time.perf_counter() - t0,
        options={"setting": entry["setting"]},
        stats=stats,
        note=note,
        packed_bytes=size,
    )
    route.rows.append(row)
    route.models.append(floor_model)
    route.outputs.append(outputs if outputs is not None else route.outputs[0])
    packer.keep_only(route.models)
    return entry


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit the same outputs; NaN where the model computes NaN counts as the same."""
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc")


def _pack_and_verify(model, eval_data, last_outputs, packed: tuple[bytes, dict] | None = None):
    """Pack (unless `packed` already holds it), unpack, check the unpacked model reproduces the
    outputs; returns the container's bytes, the pack stats and what was verified.

    The unpacked model's serialization hashes to the measured model's (SHA-256), so a run over
    all the data would repeat the last stage's own run: it runs the first batch (as that run
    batched it) and must reproduce those outputs bit for bit; recurrent data, all of it."""
    data, stats = packed if packed is not None else pack_model(model)
    # verify=True: the unpacked serialization must hash to what was packed (SHA-256 in the manifest).
    unpacked, _ = unpack_container(data, verify=True)
    verified = "tensors"
    if eval_data is not None and last_outputs is not None:
        if eval_data.recurrent:
            outputs, expected = run_model(unpacked, eval_data), last_outputs
        else:
            batch = run_batch_size(unpacked, eval_data)
            outputs = run_model(unpacked, eval_data.take(batch), batch)
            # Batches are joined along axis 0 (run_model): the first batch's are the leading rows.
            expected = [b[: np.shape(a)[0]] if np.ndim(a) and np.ndim(b) else b for a, b in zip(outputs, last_outputs)]
        if len(outputs) != len(last_outputs) or not all(_same_values(a, b) for a, b in zip(outputs, expected)):
            raise CompressorError("the unpacked container does not reproduce the model's outputs")
        verified = "outputs"
    else:
        make_session(unpacked)  # it must still load in ORT
    return data, stats, verified
