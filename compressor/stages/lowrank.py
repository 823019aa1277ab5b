"""The lowrank stage: Gemm/MatMul weights (and 1x1 convs) written as two lower-rank factors,
before share, so that the factors are shared, quantized and packed like any weight.

A fixed rank ratio as asked, or the budget search (``search.lowrank_budget``) within a share of
the budget, backing off to half and a quarter of it.  The result is kept only when its
container is smaller than the stage input's (``ctx.packed_size``), as it is and after a plain
share (``SmallerGate``).  Opt-in (recipe ``[lowrank] enabled = true``), and without a row in the
report while off.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import CompressorError
from ..options import LowRankOptions
from ..passes.lowrank import lowrank
from ..search.lowrank_budget import MAX_SEARCH_RUNS, lowrank_to_budget, prepare
from .ladder import Attempt, Ladder, MustShrink, StageContext, StageResult, run_ladder
from .smaller import SmallerGate, kept_if_smaller

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
    gate = SmallerGate(ctx)
    if opts.rank_ratio is not None:
        fixed = Attempt(
            f"rank ratio {opts.rank_ratio:g}",
            lambda: lowrank(model, opts.rank_ratio, data=ctx.calib_data, **common),
        )
        result = run_ladder(Ladder(NAME, [fixed], adaptive=False, must_shrink=SHRINK), ctx)
    elif ctx.eval_data is None:
        return ctx.skipped(NAME, "skipped: the rank search needs data")
    else:
        attempts = _search_attempts(opts, ctx, gate)
        result = run_ladder(Ladder(NAME, attempts, adaptive=True, must_shrink=SHRINK), ctx)
    return kept_if_smaller(NAME, result, ctx, gate)


def search_runs(eval_cost: float) -> int:
    """Candidates the search may measure: LOWRANK_SEARCH_SECONDS of nominal run time."""
    fits = int(LOWRANK_SEARCH_SECONDS / max(eval_cost, 1e-12))
    return max(MIN_SEARCH_RUNS, min(MAX_SEARCH_RUNS, fits))


def _search_attempts(opts: LowRankOptions, ctx: StageContext, gate: SmallerGate) -> list[Attempt]:
    model, measure, eval_data, log = ctx.model, ctx.measure, ctx.eval_data, ctx.log
    points = opts.budget if opts.budget is not None else measure.budget * LOWRANK_BUDGET_SHARE
    # Noise powers of independent stages add: the same share of the noise allowance.
    snr = measure.min_snr_db + 10 * np.log10(1 / LOWRANK_BUDGET_SHARE) if measure.snr_gated else None
    calib = ctx.calib_data if ctx.calib_data is not None else eval_data
    reference = ctx.outputs if eval_data is measure.data else None
    max_evals = search_runs(measure.eval_cost)
    # One capture run and one SVD per layer for every attempt; candidates measured once.
    cached: dict = {}

    def prepared():
        if "prepared" not in cached:
            cached["prepared"] = prepare(model, calib, opts.exclude, opts.min_params)
        return cached["prepared"]

    def searched(budget: float, sparse: bool) -> tuple[onnx.ModelProto, dict]:
        found, stats = lowrank_to_budget(
            model,
            eval_data,
            budget,
            min_snr_db=snr,
            max_evals=max_evals,
            refit=opts.refit,
            reference_outputs=reference,
            prepared=prepared(),
            sparse_cost=sparse,
            log=log,
        )
        b = stats["budget"]
        stats["search_plan"] = (
            f"{sum(t['method'] == 'covariance' for t in stats['tensors'])} of {len(stats['tensors'])} factorised "
            f"tensors by layer output error; {stats['capture_runs']} capture run(s), "
            f"{b['whole_model_runs']} whole-model runs for the candidates"
        )
        # Checked before the judge's run: a candidate that packs no smaller is not measured.
        if stats["totals"]["factored_tensors"]:
            reason = gate.why_not(found)
            if reason is not None:
                raise CompressorError(reason)
        return found, stats

    def pruned() -> bool:
        p = prepared()
        return any(p.dense_values[w.name] < w.size for w in p.weights)

    attempts = []
    for b in (points, points / 2, points / 4):
        attempts.append(Attempt(f"ranks within {b:.2g} points", lambda b=b: searched(b, False)))
        # A pruned layer replaced only where the factors hold fewer values than its nonzeros
        # and their positions (lowrank_math.sparse_values): when the plain costing packs larger.
        attempts.append(
            Attempt(
                f"ranks within {b:.2g} points, pruned layers by their nonzeros",
                lambda b=b: searched(b, True) if pruned() else _same(),
            )
        )
    return attempts


def _same() -> tuple[onnx.ModelProto, dict]:
    raise CompressorError("no pruned layer: the same candidate as the attempt before")
