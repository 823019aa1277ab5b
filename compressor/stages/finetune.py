"""The fine-tune stages (recipe `finetune`, `run --finetune EPOCHS`): Deep Compression's retraining.

After prune and after share (two places in STAGES, one policy), the model is distilled from the
run's original on the training inputs (passes/finetune: pruned zeros and shared values kept),
then, with `further`, compressed more while a fine-tuned result stays within the stage's part
of the budget: after prune each round prunes every pruned tensor further (FURTHER_KEEP of its
remaining weights kept, by magnitude) and fine-tunes; after share each round takes one bit off
every shared tensor's codebook (k-means of its values) and fine-tunes.  The first result over
its budget ends the rounds; the last that fit is kept.  A fine-tune that leaves the model worse
than its input is not kept.
"""

from __future__ import annotations

import math
import time

import numpy as np
import onnx

from .. import graph
from ..errors import CompressorError
from ..evaluate import run_model
from ..kmeans import share_array
from ..options import FinetuneOptions
from ..passes.finetune import finetune
from ..passes.prune import prunable_weights, prune_with_ratios
from ..report import StageRow
from .ladder import StageContext, StageResult, loss_text, model_bytes

NAME = "finetune"
# Each further pruning round keeps this share of every pruned tensor's remaining weights.
FURTHER_KEEP = 0.75
# Rounds of further compression at most (each is one fine-tune and one measurement).
MAX_FURTHER_ROUNDS = 8
# Codebooks are not narrowed below this many bits.
MIN_BITS = 2
# A tensor counts as shared (its codebook may be narrowed) with at most this many distinct
# non-zero values, each used this many times on average: a tensor share left alone has not.
SHARED_MAX_VALUES = 256
SHARED_MIN_REPEAT = 4
# The part of the budget a further-compressed, fine-tuned model may spend: after prune, the
# rest is left to share and quantize (whose losses the second fine-tune takes back in part);
# after share, to quantize.
FURTHER_BUDGET_SHARE = {"prune": 0.7, "share": 0.8}


class FinetuneStage:
    """The fine-tune after one stage (`after`: "prune" or "share")."""

    NAME = NAME
    OPTIONAL = True  # no row in the report unless the recipe asks for it

    def __init__(self, after: str):
        self.after = after

    def run(self, opts: FinetuneOptions, ctx: StageContext) -> StageResult:
        return run(opts, ctx, self.after)


AFTER_PRUNE = FinetuneStage("prune")
AFTER_SHARE = FinetuneStage("share")


def run(opts: FinetuneOptions, ctx: StageContext, after: str) -> StageResult:
    previous = ctx.previous
    if previous.stage != after or not previous.applied:
        return ctx.skipped(NAME, f"skipped after {after}: {after} was not applied")
    if ctx.train_data is None:
        return ctx.skipped(NAME, f"skipped after {after}: no training inputs (give --train or --calib)")
    if ctx.measure.data is None:
        return ctx.skipped(NAME, f"skipped after {after}: nothing to measure the result on")
    t0 = time.perf_counter()
    teacher = run_model(ctx.original, ctx.train_data)
    log = ctx.log

    def tuned(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
        return finetune(model, teacher, ctx.train_data, epochs=opts.epochs, lr=opts.lr, seed=opts.seed, log=log)

    log(f"finetune: {opts.epochs} epochs after {after} on {ctx.train_data.size} samples")
    try:
        model, stats = tuned(ctx.model)
    except CompressorError as e:
        log(f"finetune: {e}")
        return ctx.skipped(NAME, f"skipped after {after}: {e}")
    metrics, outputs = ctx.measure(model)
    before, finetuned = _summary(ctx, previous.metrics), _summary(ctx, metrics)
    log(f"finetune: after {after}: {loss_text(ctx.measure, previous.metrics)} -> {loss_text(ctx.measure, metrics)}")
    rounds = []
    if opts.further:
        further = _prune_further if after == "prune" else _share_fewer_bits
        share = FURTHER_BUDGET_SHARE[after]
        model, metrics, outputs, rounds = _go_further(ctx, model, metrics, outputs, further, tuned, share)
    loss_before, loss_after = ctx.measure.loss(previous.metrics), ctx.measure.loss(metrics)
    worse = loss_before is not None and loss_after is not None and loss_after > loss_before
    row_stats = {
        "finetune": stats,
        "before": before,
        "finetuned": finetuned,
        "after": _summary(ctx, metrics),
        "further": rounds,
    }
    if worse and not any(r["kept"] for r in rounds):
        # Nothing was bought with it: the input stays.
        row = StageRow(
            NAME,
            False,
            model_bytes(ctx.model),
            previous.metrics,
            time.perf_counter() - t0,
            options={"setting": f"{opts.epochs} epochs after {after}"},
            stats=row_stats,
            note=f"not kept: fine-tuning after {after} raised the loss ({loss_before:.2f} -> {loss_after:.2f} points)",
        )
        return StageResult(row, ctx.model, ctx.outputs)
    note = f"after {after}: {_words(before)} -> {_words(finetuned)} fine-tuned"
    setting = f"{opts.epochs} epochs after {after}"
    kept = [r for r in rounds if r["kept"]]
    if rounds:
        note += f"; {'pruned further' if after == 'prune' else 'fewer bits'}: {len(kept)} of {len(rounds)} rounds kept"
    if kept:
        setting += f", {len(kept)} rounds: {kept[-1]['what']}"
        note += f" -> {_words(_summary(ctx, metrics))}"
    row = StageRow(
        NAME,
        True,
        model_bytes(model),
        metrics,
        time.perf_counter() - t0,
        options={"setting": setting},
        stats=row_stats,
        note=note,
    )
    return StageResult(row, model, outputs)


def _go_further(ctx: StageContext, model, metrics, outputs, further, tuned, share: float):
    rounds = []
    budget = ctx.measure.budget * share
    for i in range(MAX_FURTHER_ROUNDS):
        step = further(model)
        if step is None:
            break
        candidate, what = step
        try:
            candidate, _ = tuned(candidate)
        except CompressorError as e:
            rounds.append({"round": i + 1, "what": what, "kept": False, "error": str(e)})
            break
        found, found_outputs = ctx.measure(candidate)
        fits = ctx.measure.within(found, budget)
        rounds.append({"round": i + 1, "what": what, "kept": fits, **_summary(ctx, found)})
        ctx.log(f"finetune: {what}: {loss_text(ctx.measure, found)}{'' if fits else ', over the budget: stop'}")
        if not fits:
            break
        model, metrics, outputs = candidate, found, found_outputs
    return model, metrics, outputs, rounds


def _prune_further(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str] | None:
    """Every pruned tensor keeps FURTHER_KEEP of its remaining weights (by magnitude)."""
    selected, _ = prunable_weights(model, None, 0)
    ratios = {}
    for w in selected:
        values = w.array()
        zeros = values.size - int(np.count_nonzero(values))
        if zeros:
            ratios[w.name] = 1.0 - (values.size - zeros) * FURTHER_KEEP / values.size
    if not ratios:
        return None
    pruned, stats = prune_with_ratios(model, ratios, None, 0)
    total = sum(w.size for w in selected)
    zeros = sum(w.size - int(np.count_nonzero(w.array())) for w in graph.weights(pruned) if w.name in ratios)
    return pruned, f"pruned further to sparsity {zeros / max(total, 1):.3f}"


def _share_fewer_bits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str] | None:
    """Every shared tensor (a few distinct non-zero values) clustered to one bit fewer."""
    result = graph.copy_model(model)
    narrowed = []
    for w in graph.weights(result):
        if not w.is_matrix:
            continue
        values = w.array()
        distinct = np.unique(values[values != 0]).size
        bits = math.ceil(math.log2(distinct)) if distinct > 1 else 0
        if distinct > SHARED_MAX_VALUES or distinct * SHARED_MIN_REPEAT > values.size or bits <= MIN_BITS:
            continue
        w.set_array(share_array(values, 2 ** (bits - 1)).values)
        narrowed.append(bits - 1)
    if not narrowed:
        return None
    return result, f"codebooks of {len(narrowed)} tensors one bit narrower ({min(narrowed)}-{max(narrowed)} bits)"


def _summary(ctx: StageContext, metrics: dict) -> dict:
    keys = ("accuracy", "accuracy_drop", "top1_agreement", "snr_db", "kl")
    found = {k: metrics.get(k) for k in keys if metrics.get(k) is not None}
    found["loss_points"] = ctx.measure.loss(metrics)
    return found


def _words(summary: dict) -> str:
    if summary.get("accuracy") is not None:
        return f"accuracy {summary['accuracy']:.2f}"
    if summary.get("top1_agreement") is not None:
        return f"agreement {summary['top1_agreement']:.2f}"
    loss = summary.get("loss_points")
    return "unmeasured" if loss is None else f"loss {loss:.2f} points"
