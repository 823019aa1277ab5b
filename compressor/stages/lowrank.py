"""The lowrank stage: Gemm/MatMul weights (and 1x1 convs) written as two lower-rank factors,
before share, so that the factors are shared, quantized and packed like any weight.

A fixed rank ratio as asked, or the budget search (``search.lowrank_budget``) within a share of
the budget, backing off to half and a quarter of it.  The result is kept only when its
container is smaller than the stage input's (``ctx.packed_size``), as it is and after a plain
share (``kept_if_smaller``); off by default (recipe
``[lowrank] enabled = true``), and without a row in the report while off.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..options import LowRankOptions
from ..passes.lowrank import lowrank
from ..passes.share import share
from ..report import StageRow
from ..search.lowrank_budget import MAX_SEARCH_RUNS, lowrank_to_budget, prepare
from .ladder import Attempt, Ladder, MustShrink, StageContext, StageResult, model_bytes, run_ladder

NAME = "lowrank"
# Disabled, the stage leaves no row in the report (pipeline's run_stages).
OPTIONAL = True

# Share of the accuracy budget the factorisation may spend on its own; share and quantize get
# the rest (as for pruning, stages/prune.py).
LOWRANK_BUDGET_SHARE = 0.45
# Nominal seconds (the judge's eval_cost x runs, counted, never the clock) the search's
# whole-model runs may take; it measures at least MIN_SEARCH_RUNS candidates.
LOWRANK_SEARCH_SECONDS = 60.0
MIN_SEARCH_RUNS = 3

SHRINK = MustShrink("not smaller than the stage's input (no weight worth factorising)", "saves nothing, skipped")


def run(opts: LowRankOptions, ctx: StageContext) -> StageResult:
    model = ctx.model
    common = dict(exclude=opts.exclude, min_params=opts.min_params, refit=opts.refit)
    if opts.rank_ratio is not None:
        fixed = Attempt(
            f"rank ratio {opts.rank_ratio:g}",
            lambda: lowrank(model, opts.rank_ratio, data=ctx.calib_data, **common),
        )
        result = run_ladder(Ladder(NAME, [fixed], adaptive=False, must_shrink=SHRINK), ctx)
    elif ctx.eval_data is None:
        return ctx.skipped(NAME, "skipped: the rank search needs data")
    else:
        result = run_ladder(Ladder(NAME, _search_attempts(opts, ctx), adaptive=True, must_shrink=SHRINK), ctx)
    return kept_if_smaller(result, ctx)


def search_runs(eval_cost: float) -> int:
    """Candidates the search may measure: LOWRANK_SEARCH_SECONDS of nominal run time."""
    fits = int(LOWRANK_SEARCH_SECONDS / max(eval_cost, 1e-12))
    return max(MIN_SEARCH_RUNS, min(MAX_SEARCH_RUNS, fits))


def _search_attempts(opts: LowRankOptions, ctx: StageContext) -> list[Attempt]:
    model, measure, eval_data, log = ctx.model, ctx.measure, ctx.eval_data, ctx.log
    points = opts.budget if opts.budget is not None else measure.budget * LOWRANK_BUDGET_SHARE
    # Noise powers of independent stages add: the same share of the noise allowance.
    snr = measure.min_snr_db + 10 * np.log10(1 / LOWRANK_BUDGET_SHARE) if measure.snr_gated else None
    calib = ctx.calib_data if ctx.calib_data is not None else eval_data
    reference = ctx.outputs if eval_data is measure.data else None
    max_evals = search_runs(measure.eval_cost)
    # One capture run and one SVD per layer for every attempt; candidates measured once.
    cached: dict = {}

    def searched(budget: float) -> tuple[onnx.ModelProto, dict]:
        if "prepared" not in cached:
            cached["prepared"] = prepare(model, calib, opts.exclude, opts.min_params)
        found, stats = lowrank_to_budget(
            model,
            eval_data,
            budget,
            min_snr_db=snr,
            max_evals=max_evals,
            refit=opts.refit,
            reference_outputs=reference,
            prepared=cached["prepared"],
            log=log,
        )
        b = stats["budget"]
        stats["search_plan"] = (
            f"{sum(t['method'] == 'covariance' for t in stats['tensors'])} of {len(stats['tensors'])} factorised "
            f"tensors by layer output error; {stats['capture_runs']} capture run(s), "
            f"{b['whole_model_runs']} whole-model runs for the candidates"
        )
        return found, stats

    return [Attempt(f"ranks within {b:.2g} points", lambda b=b: searched(b)) for b in (points, points / 2, points / 4)]


def kept_if_smaller(result: StageResult, ctx: StageContext) -> StageResult:
    """The stage's model only when its container is smaller than its input's, both as they are
    and after a plain k-means share (``passes.share`` defaults): a pruned sparse weight can pack
    smaller once shared than the dense factors that replace it.  Else the input, unchanged."""
    row = result.row
    if not row.applied:
        return result
    size, before = ctx.packed_size(result.model), ctx.packed_size(ctx.model)
    if size < before:
        shared, shared_before = ctx.packed_size(_shared(result.model)), ctx.packed_size(_shared(ctx.model))
        if shared < shared_before:
            row.packed_bytes = size
            row.note = "; ".join(
                filter(None, [row.note, f"after a plain share {shared:,} bytes packed vs {shared_before:,} without"])
            )
            return result
        size, before, what = shared, shared_before, "once shared "
    else:
        what = ""
    ctx.log(f"lowrank: packs {what}to {size:,} bytes, not smaller than its input's {before:,}; not kept")
    skipped = StageRow(
        NAME,
        False,
        model_bytes(ctx.model),
        ctx.previous.metrics,
        row.seconds,
        note=f"not kept: packs {what}to {size:,} bytes, not smaller than its input's {before:,}",
        attempts=row.attempts,
        packed_bytes=ctx.packed_size(ctx.model),
        rejected_by=[{"measure": "packed_bytes", "value": size, "limit": before, "by": size - before}],
        rejected_metrics=row.metrics,
    )
    return StageResult(skipped, ctx.model, ctx.outputs)


def _shared(model: onnx.ModelProto) -> onnx.ModelProto:
    return share(model)[0]
