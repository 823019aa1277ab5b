"""`compressor run`: recipe -> prune -> share -> quantize -> pack, each stage measured with ORT.

The default pipeline is Deep Compression made post-training, and it is *guarded*: every lossy
stage is measured on the user's data and kept only if the cumulative loss stays within the
budget, falling back to gentler settings first (more bits, fewer quantized activations), then
to skipping the stage.  Each stage is a ladder of attempts (``_try``); share's first attempt
is a per-tensor width search (``passes.share_budget``), weighed against the first uniform
rung that fits by packed size.  What was measured decides what is applied:

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

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import __version__, graph
from .data import Dataset, load_dataset
from .errors import CompressorError, GateFailed, UsageError
from .evaluate import make_session, run_model
from .measure import Measure
from .quant_math import sortable
from .recipe import default_recipe, merge

# Share of the accuracy budget that pruning may spend on its own; share and quantize get
# the rest.  Below half: the k-means search buys more bytes per point than the last
# tenths of pruning do (dwresnet with --calib: 0.6 -> 23.7 KB at -0.6, 0.45 -> 20.6 KB at -0.8;
# mlp_pre and the transformer within 3 % either way).
PRUNE_BUDGET_SHARE = 0.45
# The report's per-stage packed-size column is measured up to this model size.
PACKED_COLUMN_MAX_BYTES = 64 << 20
# Calibration uses at most this many samples (ranges converge long before).
MAX_CALIB_SAMPLES = 512

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass
class StageRow:
    stage: str
    applied: bool
    bytes: int
    metrics: dict
    seconds: float = 0.0
    options: dict = field(default_factory=dict)
    note: str = ""
    attempts: list = field(default_factory=list)
    stats: dict | None = None
    packed_bytes: int | None = None  # what this stage's model packs to (the container it would give)


def _model_bytes(model: onnx.ModelProto) -> int:
    # The size of the .onnx file this model saves to (no external data below 2 GB).
    return model.ByteSize()


def _dataset_mode(data: Dataset | None, calib: Dataset | None) -> str:
    if data is not None and data.labels is not None:
        return "accuracy"
    if data is not None or calib is not None:
        return "fidelity"
    return "none"


def run_pipeline(
    model_path: str,
    out_path: str | None,
    overrides: dict | None = None,
    data_path: str | None = None,
    calib_path: str | None = None,
    max_accuracy_drop: float | None = None,
    log: Log = _quiet,
) -> dict:
    """Run the pipeline; returns the report (dict).  Raises GateFailed (with .report) on a failed gate."""
    started = time.perf_counter()
    if out_path is not None and model_path != "-" and Path(out_path).exists() and Path(out_path).samefile(model_path):
        raise UsageError(f"refusing to overwrite the input model {model_path} (choose another -o)")
    if out_path is not None and not Path(out_path).resolve().parent.is_dir():
        raise UsageError(f"output folder does not exist: {Path(out_path).resolve().parent}")
    original = graph.load_model(model_path)
    original_bytes = Path(model_path).stat().st_size if model_path != "-" else _model_bytes(original)
    data = load_dataset(data_path, original) if data_path else None
    calib = load_dataset(calib_path, original) if calib_path else None
    mode = _dataset_mode(data, calib)
    if max_accuracy_drop is not None and mode == "none":
        raise UsageError("--max-accuracy-drop needs --data (or --calib) to measure against")
    eval_data = data if data is not None else calib
    calib_data = calib if calib is not None else data
    if calib_data is not None and calib_data.size > MAX_CALIB_SAMPLES:
        calib_data = calib_data.take(MAX_CALIB_SAMPLES)

    recipe = merge(default_recipe(mode), overrides or {})
    gate = recipe["gate"]
    if max_accuracy_drop is None:
        max_accuracy_drop = gate["max_accuracy_drop"]
    budget = gate["budget"]
    if max_accuracy_drop is not None:
        budget = min(budget, max_accuracy_drop)
    explicit_snr = "min_snr_db" in (overrides or {}).get("gate", {})
    measure = Measure(eval_data, mode, budget, gate["min_snr_db"], explicit_snr)

    log(f"original: {original_bytes:,} bytes; measuring on {eval_data.size if eval_data else 0} samples ({mode})")
    rows = [StageRow("original", True, original_bytes, measure.start(original))]
    model = original
    last_outputs = measure.last_outputs
    stage_models = [original]  # the model after each row of `rows`, for the packed-size column

    # ---- prune
    prune_opts = recipe["prune"]
    if prune_opts["enabled"]:
        model, last_outputs = _stage_prune(model, prune_opts, measure, eval_data, rows, last_outputs, log, calib_data)
    else:
        rows.append(StageRow("prune", False, _model_bytes(model), rows[-1].metrics, note="disabled"))
    stage_models.append(model)

    # ---- share
    share_opts = recipe["share"]
    shared_model = None
    # A stage whose lossy settings the user fixed runs as asked; scoping keys (exclude,
    # min_params, seed) keep the fallback ladder.
    explicit_share = {k for k in (overrides or {}).get("share", {}) if k in ("bits_conv", "bits_fc", "init", "refit")}
    if share_opts["enabled"]:
        model, last_outputs = _stage_share(
            model, share_opts, measure, calib_data, rows, last_outputs, log, adaptive=not explicit_share
        )
        shared_model = model if rows[-1].applied else None
    else:
        rows.append(StageRow("share", False, _model_bytes(model), rows[-1].metrics, note="disabled"))
    stage_models.append(model)

    # ---- quantize
    quant_opts = recipe["quantize"]
    explicit_quant = {
        k
        for k in (overrides or {}).get("quantize", {})
        if k in ("activations", "per_channel", "symmetric", "calibration")
    }
    if quant_opts["enabled"]:
        model, last_outputs = _stage_quantize(
            model,
            quant_opts,
            measure,
            calib_data,
            rows,
            last_outputs,
            log,
            adaptive=not explicit_quant,
            shared=shared_model is not None,
        )
    else:
        rows.append(StageRow("quantize", False, _model_bytes(model), rows[-1].metrics, note="disabled"))
    stage_models.append(model)
    final_packing = _fill_packed_bytes(rows, stage_models, log)

    # ---- gate (before anything is written)
    final_metrics = rows[-1].metrics
    gate_result = {"max_accuracy_drop": max_accuracy_drop, "passed": True, "reason": ""}
    if max_accuracy_drop is not None:
        loss = measure.loss(final_metrics)
        if loss is not None and loss > max_accuracy_drop + 1e-9:
            what = "accuracy drop" if mode == "accuracy" else "top-1 disagreement"
            gate_result.update(
                passed=False, reason=f"{what} {loss:.2f} points exceeds --max-accuracy-drop {max_accuracy_drop:g}"
            )

    # ---- pack
    container = None
    pack_stats = None
    if recipe["pack"]["enabled"] and gate_result["passed"]:
        if out_path is None:
            raise UsageError("run needs -o OUT.cmpz")
        t0 = time.perf_counter()
        log("pack: writing the container")
        pack_stats, verified = _pack_and_verify(model, out_path, eval_data, last_outputs, final_packing)
        container = {"path": str(out_path), "bytes": Path(out_path).stat().st_size, "verified": verified}
        container["ratio"] = original_bytes / container["bytes"]
        rows.append(
            StageRow(
                "pack",
                True,
                container["bytes"],
                final_metrics,
                time.perf_counter() - t0,
                note="unpacked model reproduces the last stage's outputs exactly"
                if verified == "outputs"
                else "tensors verified bit-identical",
            )
        )
    elif not recipe["pack"]["enabled"] and out_path is not None and gate_result["passed"]:
        graph.save_model(model, out_path, input_path=model_path)
        container = {
            "path": str(out_path),
            "bytes": Path(out_path).stat().st_size,
            "verified": None,
            "ratio": original_bytes / Path(out_path).stat().st_size,
        }

    report = build_report(
        model_path,
        original,
        original_bytes,
        mode,
        budget,
        measure,
        rows,
        model,
        pack_stats,
        container,
        gate_result,
        recipe,
        shared_model,
    )
    report["seconds"] = time.perf_counter() - started
    if not gate_result["passed"]:
        raise GateFailedWithReport(gate_result["reason"], report)
    return report


def _fill_packed_bytes(rows: list[StageRow], models: list[onnx.ModelProto], log: Log) -> tuple[bytes, dict] | None:
    """Pack every stage's model (in memory) so the report shows what each pass buys in the container.

    Returns the packing of the last model (bytes, stats), which is the container `run` writes,
    so that it is not packed twice; None when that model was too large to pack here.
    """
    from .passes.pack import pack_model

    sizes: dict[int, int | None] = {}
    last = None
    for row, m in zip(rows, models):
        if id(m) not in sizes and row.packed_bytes is not None and m is not models[-1]:
            sizes[id(m)] = row.packed_bytes  # packed already, to choose between two attempts (see _try)
        if id(m) not in sizes and m.ByteSize() > PACKED_COLUMN_MAX_BYTES:
            # Packing a large float model costs minutes (xz on every float tensor): the
            # column is left empty; the container row is always measured.
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


class GateFailedWithReport(GateFailed):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------- stages


def _try(
    stage: str,
    attempts: list[tuple],
    measure: Measure,
    rows: list[StageRow],
    model: onnx.ModelProto,
    last_outputs,
    log: Log,
    adaptive: bool,
    compare_first: bool = False,
):
    """Apply the first attempt whose result stays within the budget (or the first, if not adaptive).

    An attempt is (label, build) or (label, build, budget): a smaller budget for that one.  With
    `compare_first` the first attempt, if it fits, is kept aside and weighed against the first
    of the others that fits: the one that packs smaller wins.
    """
    from .passes.pack import pack_model

    tried = []
    kept = None  # (packed bytes, label, candidate, stats, metrics, outputs): the first attempt, if it fit
    t0 = time.perf_counter()

    def applied(label, candidate, stats, metrics, outputs, note, packed_size=None):
        if not adaptive and measure.loss(metrics) is not None:
            # The user fixed this stage; if it overshot, later stages may not add to it.
            measure.allowance = max(measure.allowance, measure.loss(metrics))
        rows.append(
            StageRow(
                stage,
                True,
                _model_bytes(candidate),
                metrics,
                time.perf_counter() - t0,
                options={"setting": label},
                attempts=tried,
                stats=stats,
                note=note,
                packed_bytes=packed_size,
            )
        )
        return candidate, outputs if outputs is not None else last_outputs

    def packed(candidate) -> int:
        size = len(pack_model(candidate)[0])
        tried[-1]["packed_bytes"] = size
        return size

    for i, (label, attempt, *limit) in enumerate(attempts):  # an optional third item: a smaller budget for this attempt
        log(f"{stage}: {label}")
        try:
            candidate, stats = attempt()
        except CompressorError as e:
            tried.append({"option": label, "error": str(e)})
            log(f"{stage}: {label} failed: {e}")
            continue
        if stage == "quantize" and candidate.ByteSize() >= model.ByteSize():
            # Everything stayed float (subgraphs, sensitive layers): Q/DQ pairs would only add.
            tried.append({"option": label, "error": "no size gain: nothing was quantized"})
            log(f"{stage}: {label} quantized nothing, trying the next setting")
            continue
        metrics, outputs = measure(candidate)
        tried.append({"option": label, **metrics})
        if adaptive and not measure.within(metrics, limit[0] if limit else None):
            log(f"{stage}: {label} exceeds the budget ({_loss_text(measure, metrics)}), backing off")
            continue
        if compare_first and i == 0:
            kept = (packed(candidate), label, candidate, stats, metrics, outputs)
            continue
        if kept is not None:
            size = packed(candidate)
            log(f"{stage}: {kept[1]} packs to {kept[0]:,} bytes, {label} to {size:,}")
            if kept[0] <= size:
                return applied(
                    *kept[1:], note=f"smaller than {label} ({kept[0]:,} vs {size:,} bytes packed)", packed_size=kept[0]
                )
            return applied(
                label,
                candidate,
                stats,
                metrics,
                outputs,
                note=f"smaller than {kept[1]} ({size:,} vs {kept[0]:,} bytes packed)",
                packed_size=size,
            )
        return applied(
            label, candidate, stats, metrics, outputs, note="" if len(tried) == 1 else f"fell back to {label}"
        )
    if kept is not None:
        return applied(*kept[1:], note="", packed_size=kept[0])
    rows.append(
        StageRow(
            stage,
            False,
            _model_bytes(model),
            rows[-1].metrics,
            time.perf_counter() - t0,
            attempts=tried,
            note=(
                "skipped: every setting tried exceeded the budget"
                if not any("error" in t for t in tried)
                else "skipped: no setting fit the budget (see attempts)"
            )
            if tried
            else "skipped",
        )
    )
    return model, last_outputs


def _loss_text(measure: Measure, metrics: dict) -> str:
    loss = measure.loss(metrics)
    snr = metrics.get("snr_db")
    text = f"loss {loss:.2f} points" if loss is not None else "unmeasured"
    if snr is not None:
        text += f", SNR {snr:.1f} dB"
    return text


def _stage_prune(model, opts, measure: Measure, eval_data, rows, last_outputs, log, calib_data=None):
    from .passes.compensate import Compensator
    from .passes.prune import prunable_weights, prune, prune_to_budget, prune_with_ratios

    common = dict(exclude=opts["exclude"], min_params=opts["min_params"], seed=opts["seed"])
    if opts["sparsity"] is not None:
        attempts = [
            (
                f"{opts['scope']} sparsity {opts['sparsity']:g}",
                lambda: prune(model, opts["sparsity"], scope=opts["scope"], **common),
            )
        ]
        return _try("prune", attempts, measure, rows, model, last_outputs, log, adaptive=False)
    if eval_data is None:
        rows.append(
            StageRow(
                "prune",
                False,
                _model_bytes(model),
                rows[-1].metrics,
                note="skipped: pruning needs data to choose ratios",
            )
        )
        return model, last_outputs
    prune_budget = opts["budget"] if opts["budget"] is not None else measure.budget * PRUNE_BUDGET_SHARE
    # Noise powers of independent stages add up: giving pruning the same share of the noise
    # allowance raises its SNR floor by 10*log10(1/share) dB (2.2 dB at 0.6).
    prune_snr = measure.min_snr_db + 10 * np.log10(1 / PRUNE_BUDGET_SHARE) if measure.snr_gated else None
    search_data, ratios, max_evals, plan_note, search_exclude = _prune_search_plan(model, opts, measure, eval_data)
    if plan_note:
        log(f"prune: {plan_note}")
    # The search runs on `search_data`; the pipeline then measures the result on all the data.
    # If that overshoots (a subset, or noise), the search is rerun with a smaller budget,
    # reusing the sensitivity curves, which are the expensive part.
    curves: dict = {}
    # Data-aware error compensation (recipe prune.compensate): the kept weights refit on the
    # calibration inputs, in the search and in the result (see passes/compensate.py).
    compensator = None
    if opts["compensate"] and calib_data is not None:
        compensator = Compensator(model, prunable_weights(model, search_exclude, opts["min_params"])[0], calib_data)
        if compensator.layers:
            log(
                f"prune: kept weights refit on {calib_data.size} calibration samples ({len(compensator.layers)} tensors)"
            )
    # A log that can draw a bar (the CLI's, on a terminal) gets the curves' progress.
    step = getattr(log, "step", None)
    progress = (lambda done, total: step("prune: sensitivity curves", done, total)) if step else None

    def attempt(points: float):
        reference = last_outputs if search_data is eval_data else None  # the original's outputs, measured already
        pruned, stats = prune_to_budget(
            model,
            search_data,
            points,
            min_snr_db=prune_snr,
            ratios=ratios,
            max_evals=max_evals,
            sensitivity_stats=curves.get("stats"),
            exclude=search_exclude,
            min_params=opts["min_params"],
            seed=opts["seed"],
            progress=progress,
            reference_outputs=reference,
            compensate=compensator,
        )
        curves["stats"] = stats.get("sensitivity")
        if plan_note:
            stats["search_plan"] = plan_note
        return pruned, stats

    if search_data.size >= eval_data.size:
        attempts = [
            (f"sensitivity-guided, budget {b:g} points", lambda b=b: attempt(b))
            for b in (prune_budget, prune_budget / 2, prune_budget / 4)
        ]
        return _try("prune", attempts, measure, rows, model, last_outputs, log, adaptive=True)
    # On a subset one sample is worth 100/n points, so a halved budget usually allows the same
    # number of errors and finds the same ratios.  The fallbacks scale the ratios found instead:
    # less pruning everywhere, with no further search.
    found: dict = {}

    def first() -> tuple[onnx.ModelProto, dict]:
        pruned, stats = attempt(prune_budget)
        found["ratios"] = stats.get("budget", {}).get("ratios", {})
        return pruned, stats

    def scaled(factor: float) -> tuple[onnx.ModelProto, dict]:
        if "ratios" not in found:
            return attempt(prune_budget / 4)
        ratios_scaled = {name: ratio * factor for name, ratio in found["ratios"].items()}
        pruned, stats = prune_with_ratios(
            model, ratios_scaled, search_exclude, opts["min_params"], compensate=compensator
        )
        stats["search_plan"] = plan_note
        return pruned, stats

    attempts = [(f"sensitivity-guided, budget {prune_budget:g} points", first)]
    attempts += [(f"the ratios found x {f:g}", lambda f=f: scaled(f)) for f in SUBSET_FALLBACK_SCALES]
    return _try("prune", attempts, measure, rows, model, last_outputs, log, adaptive=True)


# Coarser sensitivity ladder for models where the full one would take too long.
COARSE_RATIOS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
MIN_SEARCH_SAMPLES = 32
# When a search on a subset overshoots on all the data: the same per-tensor ratios, scaled down.
SUBSET_FALLBACK_SCALES = (0.75, 0.5, 0.25)


def _prune_search_plan(model, opts, measure: Measure, eval_data: Dataset):
    """Fit the pruning search (sensitivity curves + budget search) into prune.max_seconds.

    The search costs about (tensors x ratios + evaluations) runs over the data; one run's time
    was measured on the original.  When the estimate exceeds the allowance the ladder gets
    coarser, then the search uses an evenly spread subset of the data (never below 32 samples).
    """
    from .passes.prune import prunable_weights
    from .passes.sensitivity import BUDGET_RATIOS

    selected, _ = prunable_weights(model, opts["exclude"], opts["min_params"])
    allowance = opts["max_seconds"]
    per_sample = measure.eval_seconds / max(eval_data.size, 1)

    def estimate(ratios, evals, samples):
        return (len(selected) * len(ratios) + evals) * per_sample * samples

    ratios, evals, samples = BUDGET_RATIOS, 40, eval_data.size
    if estimate(ratios, evals, samples) <= allowance:
        return eval_data, None, evals, "", opts["exclude"]
    ratios, evals = COARSE_RATIOS, 20
    samples = min(eval_data.size, max(MIN_SEARCH_SAMPLES, int(allowance / max(estimate(ratios, evals, 1), 1e-9))))
    note = (
        f"{len(selected)} tensors; full search estimated at {estimate(BUDGET_RATIOS, 40, eval_data.size):.0f} s > "
        f"max_seconds {allowance:g}: coarse ladder, {samples} of {eval_data.size} samples for the search"
    )
    exclude = opts["exclude"]
    if estimate(ratios, evals, samples) > allowance:
        # Still too slow: probe only the largest tensors (they hold most of the zeros to win);
        # the others are left unpruned.
        per_tensor = len(ratios) * per_sample * samples
        keep = max(1, int((allowance - evals * per_sample * samples) / per_tensor))
        by_size = sorted(selected, key=lambda w: (-w.size, w.name))
        left_out = sorted(w.name for w in by_size[keep:])
        if left_out:
            names = "|".join(re.escape(n) for n in left_out)
            exclude = f"(?:{exclude})|^(?:{names})$" if exclude else f"^(?:{names})$"
            share = sum(w.size for w in by_size[:keep]) / max(sum(w.size for w in selected), 1)
            note += f", only the {keep} largest tensors ({100 * share:.0f} % of the prunable weights)"
    note += f" (estimated {estimate(ratios, evals, samples) if exclude == opts['exclude'] else allowance:.3g} s)"
    if samples >= eval_data.size:
        return eval_data, ratios, evals, note, exclude
    step = eval_data.size / samples
    index = (np.arange(samples) * step).astype(np.int64)
    return eval_data.select(index), ratios, evals, note, exclude


def _stage_share(model, opts, measure: Measure, calib_data, rows, last_outputs, log, adaptive: bool):
    from .passes.share import CONV_ROLES, share, shareable_weights

    bc, bf = opts["bits_conv"], opts["bits_fc"]
    # Bias correction (recipe share.bias_correction, off by default): the mean output shift
    # sharing causes, taken back through each layer's bias.  dwresnet shared at 3 bits: 93.2 ->
    # 96.0 %; after pruning, 94.7 -> 94.3, and no gain on any zoo model in the default ladder.
    bias_data = calib_data if opts["bias_correction"] else None

    def bias_judge(candidate):
        # Kept only if it scores better on the budget's own measure: the calibration set alone
        # is too small to tell (a correction that won 1 of 200 calibration images lost 0.6 points).
        metrics, _ = measure(candidate)
        loss = measure.loss(metrics)
        snr = metrics.get("snr_db")
        return (-(loss if loss is not None else 0.0), snr if snr is not None and math.isfinite(snr) else math.inf)

    judge = bias_judge if measure.data is not None else None
    ladder = [(bc, bf, None)]
    shareable = shareable_weights(model, opts["exclude"], opts["min_params"])
    has_conv = any(w.role in CONV_ROLES for w in shareable)
    has_fc = any(w.role not in CONV_ROLES for w in shareable)
    if adaptive:
        # Fewer bits first, each held to a part of the budget so that quantize keeps room; then
        # the recipe's bits (the Deep Compression setting) and more FC bits with the whole budget.
        # 4-bit codebooks cost half of 8-bit ones on a depthwise ResNet and lose less than its
        # pruning did (dwresnet: 44.5 -> 35.0 KB, 96.7 -> 97.0 %).
        low = [(min(bc, c), min(bf, f)) for c, f in LOW_BITS_RUNGS]
        low = [(c if has_conv else bc, f if has_fc else bf) for c, f in low]
        reserve = measure.budget * LOW_BITS_BUDGET_SHARE
        ladder = [(c, f, reserve) for c, f in low if (c, f) != (bc, bf)] + ladder
        ladder += [(max(bc, 8), b, None) for b in range(bf + 1, 9)]
    seen, attempts = set(), []
    compare = False
    if adaptive and measure.data is not None and not opts["refit"]:
        search = _per_tensor_share_attempt(model, shareable, opts, measure, rows, last_outputs, log, bias_data, judge)
        if search is not None:
            # The searched widths against the first uniform rung that fits: measurement noise
            # can make either the smaller one (dwresnet: 4/4 bits 33.8 KB, searched 36.9 KB).
            attempts.append(search)
            compare = True
    for bits_conv, bits_fc, budget in ladder:
        if (bits_conv, bits_fc) in seen:
            continue
        seen.add((bits_conv, bits_fc))
        refit = calib_data if opts["refit"] else None
        kinds = [f"{bits_conv} bits conv"] * has_conv + [f"{bits_fc} bits fc"] * has_fc
        attempts.append(
            (
                f"k-means {' / '.join(kinds or [f'{bits_conv} bits conv', f'{bits_fc} bits fc'])}",
                lambda bits_conv=bits_conv, bits_fc=bits_fc, refit=refit: share(
                    model,
                    bits_conv=bits_conv,
                    bits_fc=bits_fc,
                    init=opts["init"],
                    seed=opts["seed"],
                    exclude=opts["exclude"],
                    min_params=opts["min_params"],
                    refit_data=refit,
                    bias_data=bias_data,
                    bias_judge=judge,
                ),
                budget,
            )
        )
    return _try("share", attempts, measure, rows, model, last_outputs, log, adaptive, compare_first=compare)


def _per_tensor_share_attempt(
    model, tensors, opts, measure: Measure, rows, last_outputs, log, bias_data=None, bias_judge=None
):
    """The share attempt that chooses bits per tensor (share_budget), or None when the model
    is too slow to search.  The search costs about tensors x widths + 12 runs over the data plus
    one k-means per tensor and width; past SHARE_SEARCH_SECONDS it runs on an evenly spread
    subset (at least MIN_SEARCH_SAMPLES samples; _try then measures its result on all the data)."""
    from .passes.share_budget import BITS, share_to_budget

    if not tensors:
        return None
    data = measure.data
    runs = len(tensors) * len(BITS) + 12
    kmeans_seconds = KMEANS_SECONDS_PER_VALUE * len(BITS) * sum(w.size for w in tensors)
    per_sample = measure.eval_seconds / max(data.size, 1)
    estimate = kmeans_seconds + runs * per_sample * data.size
    reference, where = last_outputs, ""
    if estimate > SHARE_SEARCH_SECONDS:
        samples = int((SHARE_SEARCH_SECONDS - kmeans_seconds) / max(runs * per_sample, 1e-12))
        if samples < MIN_SEARCH_SAMPLES:
            log(f"share: per-tensor bit search skipped (estimated {estimate:.0f} s > {SHARE_SEARCH_SECONDS:g} s)")
            return None
        data = data.select((np.arange(samples) * (data.size / samples)).astype(np.int64))
        reference, where = None, f" on {samples} of {measure.data.size} samples"
    reserve = measure.budget * SHARE_SEARCH_BUDGET_SHARE
    spent = measure.loss(rows[-1].metrics) or 0.0
    points = max(reserve - max(spent, 0.0), 0.0)
    step = getattr(log, "step", None)
    progress = (lambda done, total: step("share: bit curves", done, total)) if step else None
    snr = None
    if measure.snr_gated:
        # Noise powers add up: what the search may add on top of what the earlier stages
        # spent, within the same share of the noise allowance as of the points.
        allowed = SHARE_SEARCH_BUDGET_SHARE * 10 ** (-measure.min_snr_db / 10)
        spent_snr = rows[-1].metrics.get("snr_db")
        if spent_snr is not None and math.isfinite(spent_snr):
            allowed -= 10 ** (-spent_snr / 10)
        if allowed <= 0:
            log("share: per-tensor bit search skipped (the earlier stages spent the SNR allowance)")
            return None
        snr = -10 * math.log10(allowed)

    def attempt():
        return share_to_budget(
            model,
            data,
            points,
            min_snr_db=snr,
            init=opts["init"],
            seed=opts["seed"],
            exclude=opts["exclude"],
            min_params=opts["min_params"],
            progress=progress,
            reference_outputs=reference,
            bias_data=bias_data,
            bias_judge=bias_judge,
        )

    return (f"k-means bits per tensor, searched within {points:.2g} points{where}", attempt, reserve)


# Longest the per-tensor bit search may be estimated to take (else on a subset, or not at all),
# and the k-means cost it assumes per value and width (measured: 0.06-0.16 us on 2M values).
SHARE_SEARCH_SECONDS = 60.0
KMEANS_SECONDS_PER_VALUE = 1.5e-7
# The search spends what it is given, and quantize's noise compounds with narrow codebooks:
# it may take the total loss to this share of the budget.
SHARE_SEARCH_BUDGET_SHARE = 0.7
# The share ladder's rungs below the recipe's bits (conv, fc), tried first, and the part of
# the budget they may use.
LOW_BITS_RUNGS = ((4, 4), (4, 5), (6, 5))
LOW_BITS_BUDGET_SHARE = 0.8


def _stage_quantize(
    model, opts, measure: Measure, calib_data, rows, last_outputs, log, adaptive: bool, shared: bool = False
):
    from .passes.quantize import quantize
    from .passes.quantize.ops_tables import SMALL_ROLES

    activations = opts["activations"]
    if activations == "static" and calib_data is None:
        activations = "none"
    common = dict(
        per_channel=opts["per_channel"],
        symmetric=opts["symmetric"],
        calibration=opts["calibration"],
        exclude=opts["exclude"],
        small_constants=opts["small_constants"],
    )
    # After share, 7-bit weights: with 8 bits the shared tensors are more accurate on a
    # per-channel grid than on their codebook's, so quantize drops the codebooks, and the
    # container grows (mlp_pre: 121 KB with 7 bits, 148 KB with 8, same accuracy).  Without
    # codebooks, quantize measures which range is better on this machine.
    common["reduce_range"] = True if shared else None
    settings = [activations]
    if adaptive:
        settings += [a for a in ("static", "none") if a != activations and (a != "static" or calib_data is not None)]
        # weight-only is the gentlest; never try a harsher mode after a gentler one
        settings = settings[: settings.index("none") + 1] if "none" in settings else settings
    labels = {
        "static": "int8 weights + static int8 activations",
        "dynamic": "int8 weights + dynamic activations",
        "none": "int8 weights only",
    }
    attempts = []
    first: dict = {}

    def first_attempt(a, common):
        quantized, stats = quantize(model, calib=calib_data if a == "static" else None, activations=a, **common)
        first["small"] = any(w.get("role") in SMALL_ROLES + ("elementwise",) for w in stats["weights"])
        return quantized, stats

    def without_small_constants(a, common):
        if not first.get("small", True):
            raise CompressorError("no small constants were quantized: nothing to give back")
        return quantize(model, calib=calib_data if a == "static" else None, activations=a, **common)

    for i, a in enumerate(settings):
        if i == 0:
            attempts.append((labels[a], lambda a=a, common=common: first_attempt(a, common)))
        else:
            attempts.append(
                (
                    labels[a],
                    lambda a=a, common=common: quantize(
                        model, calib=calib_data if a == "static" else None, activations=a, **common
                    ),
                )
            )
        if adaptive and i == 0 and common["small_constants"]:
            # int8 biases and norm parameters are the first thing to give back: the same
            # setting with them in float, then the rest of the ladder without them.
            common = {**common, "small_constants": False}
            attempts.append(
                (f"{labels[a]}, small constants float", lambda a=a, common=common: without_small_constants(a, common))
            )
        if adaptive and a == "static" and model.ByteSize() <= MIXED_PRECISION_MAX_BYTES:
            # Mixed precision before giving up on activations: a few layers usually carry most
            # of the error, so keep in float each layer whose quantization alone takes the
            # output below the threshold (measured on the calibration data).
            for floor in LAYER_SNR_FLOORS_DB:
                attempts.append(
                    (
                        f"{labels[a]}, layers under {floor:g} dB alone kept float",
                        lambda floor=floor, common=common: quantize(
                            model, calib=calib_data, activations="static", min_layer_snr=floor, **common
                        ),
                    )
                )
    return _try("quantize", attempts, measure, rows, model, last_outputs, log, adaptive)


# Per-layer output-SNR floors of the mixed-precision rungs of the quantize ladder.  The rungs
# build and run one model per layer, which takes many minutes on models of hundreds of MB.
LAYER_SNR_FLOORS_DB = (35.0, 45.0)
MIXED_PRECISION_MAX_BYTES = 64 << 20


def _pack_and_verify(model, out_path, eval_data, last_outputs, packed: tuple[bytes, dict] | None = None):
    """Pack (unless `packed` already holds it), unpack, check the unpacked model reproduces the
    outputs, then write `out_path` atomically."""
    from .passes.pack import pack_model, unpack_container

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
    graph.atomic_write_bytes(out_path, data)
    return stats, verified


# --------------------------------------------------------------------------- report


def _bits_of(values: np.ndarray) -> int | None:
    nonzero = values[values != 0]
    distinct = np.unique(sortable(nonzero)).size
    if distinct == 0:
        return 0
    return int(np.ceil(np.log2(distinct))) if distinct > 1 else 1


def _per_layer(
    original: onnx.ModelProto, final: onnx.ModelProto, pack_stats: dict | None, quantized_names: dict[str, str]
) -> list[dict]:
    """Per matrix weight of the original: what the final model holds for it, and its container bytes.

    `quantized_names` maps a weight to the int8 tensor quantize made of it (from its stats); other
    weights are still held under their own name.
    """
    from onnx import numpy_helper

    tensors = {r.name: r.proto for r in graph.iter_tensors(final)}
    packed = {t.get("name"): t for t in (pack_stats or {}).get("tensors", [])}
    layers = []
    for w in graph.weights(original):
        if not w.is_matrix:
            continue
        held_as = quantized_names.get(w.name, w.name)
        row = {"name": w.name, "role": w.role, "shape": list(w.shape), "params": w.size}
        if held_as in tensors:
            values = numpy_helper.to_array(tensors[held_as])
            row["sparsity"] = float(np.count_nonzero(values == 0) / values.size) if values.size else 0.0
            row["distinct_nonzero"] = int(np.unique(sortable(values[values != 0])).size)
            row["bits"] = _bits_of(values)
        p = packed.get(held_as)
        if p:
            row["container_bytes"] = p.get("bytes_after")
            bound = sum(st.get("entropy_bound_bytes", 0) for st in p.get("streams", []))
            row["entropy_bound_bytes"] = round(bound, 1) if p.get("streams") else None
            row["encoding"] = p.get("encoding")
        layers.append(row)
    return layers


def _quantized_names(rows: list[StageRow]) -> dict[str, str]:
    """Weight name -> its int8 tensor, from the applied quantize stage's stats (untransposed first)."""
    names: dict[str, str] = {}
    for r in rows:
        if r.stage == "quantize" and r.applied and r.stats:
            for w in sorted(r.stats.get("weights", []), key=lambda w: bool(w.get("transposed"))):
                if w.get("tensor"):
                    names.setdefault(w["name"], w["tensor"])
    return names


def build_report(
    model_path,
    original,
    original_bytes,
    mode,
    budget,
    measure: Measure,
    rows: list[StageRow],
    final_model,
    pack_stats,
    container,
    gate_result,
    recipe,
    shared_model=None,
) -> dict:
    stages = []
    for r in rows:
        stages.append(
            {
                "stage": r.stage,
                "applied": r.applied,
                "bytes": int(r.bytes),
                "ratio": original_bytes / r.bytes if r.bytes else None,
                "packed_bytes": r.packed_bytes if r.stage != "pack" else int(r.bytes),
                "packed_ratio": (original_bytes / (r.packed_bytes if r.stage != "pack" else r.bytes))
                if (r.packed_bytes or r.stage == "pack")
                else None,
                **{k: r.metrics.get(k) for k in ("accuracy", "accuracy_drop", "top1_agreement", "snr_db")},
                "seconds": round(r.seconds, 3),
                "setting": r.options.get("setting"),
                "note": r.note,
                "attempts": r.attempts,
            }
        )
    applied = [s["stage"] + (f" ({s['setting']})" if s["setting"] else "") for s in stages[1:] if s["applied"]]
    report = {
        "compressor_version": __version__,
        "model": str(model_path),
        "mode": mode,
        "measured": mode != "none",
        "samples": measure.data.size if measure.data is not None else 0,
        "budget_points": budget if mode != "none" else None,
        "min_snr_db": measure.min_snr_db if measure.snr_gated else None,
        "original_bytes": int(original_bytes),
        "stages": stages,
        "applied": applied,
        "layers": _per_layer(original, final_model, pack_stats, _quantized_names(rows)),
        "container": container,
        "gate": gate_result,
        "recipe": recipe,
        "pack": _pack_summary(pack_stats),
        "plots": _plot_data(original, shared_model),
        "prune_search": next((r.stats.get("search_plan") for r in rows if r.stage == "prune" and r.stats), None),
    }
    if mode == "none":
        report["note"] = (
            "no data given: nothing was measured; only data-free steps were applied "
            "(int8 per-channel weight-only quantization and lossless packing)"
        )
    return report


def _pack_summary(pack_stats: dict | None) -> dict | None:
    if not pack_stats:
        return None
    return {k: v for k, v in pack_stats.items() if k != "tensors"}


def _plot_data(original: onnx.ModelProto, shared_model: onnx.ModelProto | None) -> dict:
    """Small arrays for the HTML plots: the largest matrix weight's histogram and its centroids."""
    matrices = [w for w in graph.weights(original) if w.is_matrix]
    if not matrices:
        return {}
    biggest = max(matrices, key=lambda w: w.size)
    values = biggest.array().astype(np.float32).ravel()
    counts, edges = np.histogram(values[values != 0], bins=120)
    centroids = []
    if shared_model is not None:
        shared = graph.weight_by_name(shared_model).get(biggest.name)
        if shared is not None:
            shared_values = shared.array()
            centroids = np.unique(sortable(shared_values[shared_values != 0])).astype(float).tolist()[:256]
    return {"layer": biggest.name, "hist_counts": counts.tolist(), "hist_edges": edges.tolist(), "centroids": centroids}
