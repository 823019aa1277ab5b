"""The ladder runner: a stage is a list of attempts, tried in order until one fits the budget.

Every stage policy (stages/prune.py, share.py, quantize.py) builds its attempts and hands them
to `run_ladder`, which measures each candidate with the run's judge and returns the stage's
row of the report with the model it keeps.  Nothing here knows which stage it runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

from .. import graph
from ..data import Dataset
from ..embedding_similarity import MIN_SNR_DB as EMBEDDING_MIN_SNR_DB
from ..errors import CompressorError
from ..measure import BUDGET_SLACK, Measure
from ..report import StageRow
from ..search.layer_inputs import LayerInputs

# A search on an evenly spread subset of the data (to fit its time allowance) never uses fewer
# samples than this: below it one sample is too many points to tell settings apart.
MIN_SEARCH_SAMPLES = 32

Log = Callable[[str], None]
Build = Callable[[], tuple[onnx.ModelProto, dict]]  # -> (candidate model, the pass's stats)


@dataclass(frozen=True)
class StageResult:
    row: StageRow
    model: onnx.ModelProto  # the model after the stage (its input when nothing was applied)
    outputs: list | None  # that model's outputs on the evaluation data (None: not measured)


@dataclass(frozen=True)
class StageContext:
    """What a stage policy sees of the run."""

    model: onnx.ModelProto  # the stage's input
    measure: Measure  # the judge
    eval_data: Dataset | None
    calib_data: Dataset | None
    outputs: list | None  # the input model's outputs on the evaluation data
    rows: Sequence[StageRow]  # the rows of the stages before (rows[-1].metrics: what was spent so far)
    log: Log
    packed_size: Callable[[onnx.ModelProto], int]  # bytes of the container a model packs to
    original: onnx.ModelProto | None = None  # the run's input model (the fine-tune's teacher)
    train_data: Dataset | None = None  # the fine-tune's inputs (--train, else --calib; never --data)
    objective: str = (
        "size"  # run.objective (options.OBJECTIVES): "size" keeps a quantized model only if it packs smaller
    )
    layer_inputs: LayerInputs | None = None  # the layers' input covariances a stage captured, for the next

    @property
    def previous(self) -> StageRow:
        return self.rows[-1]

    def skipped(self, stage: str, note: str) -> StageResult:
        """The stage leaves the model as it is."""
        row = StageRow(stage, False, model_bytes(self.model), self.previous.metrics, note=note)
        return StageResult(row, self.model, self.outputs)


@dataclass(frozen=True)
class MustShrink:
    """A candidate not smaller (ONNX bytes) than the stage's input is rejected, with these words."""

    error: str  # in the report's attempts
    log: str  # in the progress


@dataclass(frozen=True)
class Attempt:
    label: str
    build: Build
    budget: float | None = None  # a smaller budget than the run's for this attempt
    # Given the attempts tried so far (their metrics), why this one cannot fit: it is then
    # recorded as not built and not measured (the stage's own bound; None: try it).
    skip: Callable[[Sequence[dict]], str | None] | None = None
    # The candidate's verdict (metrics, outputs) when it was taken already (None: measure it).
    measured: Callable[[onnx.ModelProto], tuple[dict, list | None] | None] | None = None


@dataclass(frozen=True)
class Ladder:
    stage: str
    attempts: Sequence[Attempt]
    adaptive: bool  # False: the user fixed the stage; the first attempt is applied whatever it costs
    compare_first: bool = False  # the first attempt, if it fits, against the next that fits: smaller packed wins
    must_shrink: MustShrink | None = None


def model_bytes(model: onnx.ModelProto) -> int:
    # The size of the .onnx file this model saves to, counted without serialising it.
    return graph.model_bytes(model)


def loss_text(measure: Measure, metrics: dict) -> str:
    loss = measure.loss(metrics)
    snr = metrics.get("snr_db")
    text = f"loss {loss:.2f} points" if loss is not None else "unmeasured"
    if snr is not None:
        text += f", SNR {snr:.1f} dB"
    return text


def rejection(measure: Measure, metrics: dict, budget: float | None = None) -> list[dict]:
    """Which measures put `metrics` outside the budget, and by how much: a list of
    {"measure": "loss_points" | "snr_db", "value", "limit", "by"} (empty when it fits).
    The same rule as ``Measure.within``: the budget never below the allowance; the SNR floor
    only for the outputs it gates."""
    found = []
    limit = max(measure.budget if budget is None else budget, measure.allowance)
    loss = measure.loss(metrics)
    if loss is not None and not loss <= limit + BUDGET_SLACK:
        found.append({"measure": "loss_points", "value": loss, "limit": limit, "by": loss - limit})
    snr = metrics.get("snr_db")
    if measure.snr_gated and snr is not None and snr < measure.min_snr_db:
        found.append({"measure": "snr_db", "value": snr, "limit": measure.min_snr_db, "by": measure.min_snr_db - snr})
    if getattr(measure, "embedding_gated", False) and not measure.embedding_snr_fits(metrics):
        snr, floor = metrics["embedding_snr_db"], EMBEDDING_MIN_SNR_DB
        found.append({"measure": "embedding_snr_db", "value": snr, "limit": floor, "by": floor - snr})
    return found


def rejection_text(found: Sequence[dict]) -> str:
    """'loss 1.30 points > budget 1.00 (by 0.30)', 'SNR 19.6 dB < floor 20.0 dB (by 0.38 dB)', ..."""
    words = []
    for r in found:
        if r["measure"] == "loss_points":
            words.append(f"loss {r['value']:.2f} points > budget {r['limit']:.2f} (by {r['by']:.2f})")
        elif r["measure"] == "snr_db":
            words.append(f"SNR {r['value']:.2f} dB < floor {r['limit']:g} dB (by {r['by']:.2f} dB)")
        elif r["measure"] == "embedding_snr_db":
            words.append(f"embedding SNR {r['value']:.2f} dB < floor {r['limit']:g} dB (by {r['by']:.2f} dB)")
        elif r["measure"] == "packed_bytes":
            words.append(f"packs to {r['value']:,} bytes > {r['limit']:,} (by {r['by']:,} bytes)")
        else:
            words.append(f"{r['measure']} {r['value']} vs {r['limit']}")
    return "; ".join(words)


def fits_without(measure: Measure, rejected: dict, spent: dict) -> bool:
    """Would a candidate with metrics `rejected` fit if the loss of `spent` (an earlier stage's
    metrics) were not under it?  Points subtract; noise powers add, so they subtract too."""
    loss, spent_loss = measure.loss(rejected), measure.loss(spent)
    if loss is not None and loss - max(spent_loss or 0.0, 0.0) > max(measure.budget, measure.allowance) + BUDGET_SLACK:
        return False
    if getattr(measure, "embedding_gated", False) and not measure.embedding_snr_fits(rejected):
        return False  # a sanity floor: what an earlier stage spent does not excuse it
    snr, spent_snr = rejected.get("snr_db"), spent.get("snr_db")
    if not measure.snr_gated or snr is None or snr >= measure.min_snr_db:
        return True
    if spent_snr is None or not math.isfinite(spent_snr):
        return False
    noise = 10 ** (-snr / 10) - 10 ** (-spent_snr / 10)
    return noise <= 10 ** (-measure.min_snr_db / 10)


@dataclass(frozen=True)
class _Fit:
    label: str
    model: onnx.ModelProto
    stats: dict | None
    metrics: dict
    outputs: list | None


def run_ladder(ladder: Ladder, ctx: StageContext) -> StageResult:
    """Apply the first attempt whose result stays within the budget (or the first, if not adaptive).

    With `compare_first` the first attempt, if it fits, is kept aside and weighed against the
    first of the others that fits: the one that packs smaller wins.
    """
    stage, measure, log = ladder.stage, ctx.measure, ctx.log
    tried: list[dict] = []
    kept: tuple[int, _Fit] | None = None  # the first attempt and its packed size, if it fit
    t0 = time.perf_counter()

    def applied(fit: _Fit, note: str, packed_size: int | None = None) -> StageResult:
        loss = measure.loss(fit.metrics)
        if not ladder.adaptive and loss is not None:
            # The user fixed this stage; if it overshot, later stages may not add to it.
            measure.allowance = max(measure.allowance, loss)
        row = StageRow(
            stage,
            True,
            model_bytes(fit.model),
            fit.metrics,
            time.perf_counter() - t0,
            options={"setting": fit.label},
            attempts=tried,
            stats=fit.stats,
            note=note,
            packed_bytes=packed_size,
        )
        return StageResult(row, fit.model, fit.outputs if fit.outputs is not None else ctx.outputs)

    def packed(candidate: onnx.ModelProto) -> int:
        size = ctx.packed_size(candidate)
        tried[-1]["packed_bytes"] = size
        return size

    for i, attempt in enumerate(ladder.attempts):
        label = attempt.label
        reason = attempt.skip(tried) if attempt.skip is not None else None
        if reason:
            tried.append({"option": label, "error": reason})
            log(f"{stage}: {label} {reason}")
            continue
        log(f"{stage}: {label}")
        try:
            candidate, stats = attempt.build()
        except CompressorError as e:
            tried.append({"option": label, "error": str(e)})
            log(f"{stage}: {label} failed: {e}")
            continue
        if ladder.must_shrink is not None and model_bytes(candidate) >= model_bytes(ctx.model):
            tried.append({"option": label, "error": ladder.must_shrink.error})
            log(f"{stage}: {label} {ladder.must_shrink.log}")
            continue
        if candidate is ctx.model and ctx.outputs is not None:
            # the stage's input itself (the attempt changed nothing): measured already
            metrics, outputs = dict(ctx.previous.metrics), ctx.outputs
        else:
            early = attempt.measured(candidate) if attempt.measured is not None else None
            metrics, outputs = early if early is not None else measure(candidate)
        tried.append({"option": label, **metrics})
        if ladder.adaptive and not measure.within(metrics, attempt.budget):
            tried[-1]["rejected_by"] = rejection(measure, metrics, attempt.budget)
            log(f"{stage}: {label} exceeds the budget ({loss_text(measure, metrics)}), backing off")
            continue
        fit = _Fit(label, candidate, stats, metrics, outputs)
        if ladder.compare_first and i == 0:
            kept = (packed(candidate), fit)
            continue
        if kept is not None:
            size, first = packed(candidate), kept[1]
            log(f"{stage}: {first.label} packs to {kept[0]:,} bytes, {label} to {size:,}")
            if kept[0] <= size:
                return applied(first, f"smaller than {label} ({kept[0]:,} vs {size:,} bytes packed)", kept[0])
            return applied(fit, f"smaller than {first.label} ({size:,} vs {kept[0]:,} bytes packed)", size)
        return applied(fit, "" if len(tried) == 1 else f"fell back to {label}")
    if kept is not None:
        return applied(kept[1], "", kept[0])
    if not tried:
        note = "skipped"
    elif not any("error" in t for t in tried):
        note = "skipped: every setting tried exceeded the budget"
    else:
        note = "skipped: no setting fit the budget (see attempts)"
    # The last measured attempt is the gentlest the stage has: what it would have cost at least.
    gentlest = next((t for t in reversed(tried) if t.get("rejected_by")), None)
    if gentlest is not None:
        note += f"; the gentlest measured, {gentlest['option']}: {rejection_text(gentlest['rejected_by'])}"
    row = StageRow(
        stage,
        False,
        model_bytes(ctx.model),
        ctx.previous.metrics,
        time.perf_counter() - t0,
        attempts=tried,
        note=note,
        rejected_by=list(gentlest["rejected_by"]) if gentlest is not None else [],
        rejected_metrics={k: v for k, v in gentlest.items() if k not in ("option", "rejected_by")}
        if gentlest
        else None,
    )
    return StageResult(row, ctx.model, ctx.outputs)
