"""The structured stage: whole output channels, neurons (and, if asked, attention heads) removed
before unstructured pruning, so that tensors and MACs shrink (passes/structured.py).

The budget search (``search.structured_budget``) within a share of the budget, backing off to
half and a quarter of it; one analysis and one capture of the channel statistics serve every
attempt.  With objective "size" (recipe ``[structured] objective``) the result is kept only when
its container is smaller than the stage input's, as it is and after a plain share (lowrank's
``SmallerGate``); with "speed" when it removes MACs, and its row says what the container cost.
Opt-in (recipe ``[structured] enabled = true``), and without a row in the report while off.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import CompressorError
from ..measure import Judge
from ..options import StructuredOptions
from ..passes.structured import Pruner
from ..search.structured_budget import DEFAULT_MAX_EVALS, structured_to_budget
from .ladder import Attempt, Ladder, MustShrink, StageContext, StageResult, run_ladder
from .smaller import SmallerGate, kept_if_smaller

NAME = "structured"
# Disabled, the stage leaves no row in the report (pipeline's run_stages).
OPTIONAL = True

# Nominal seconds (the judge's eval_cost x runs, counted, never the clock) the bisection's
# whole-model runs may take per attempt; it measures at least MIN_SEARCH_RUNS candidates.
STRUCTURED_SEARCH_SECONDS = 60.0
MIN_SEARCH_RUNS = 3
# Back-off: the attempts search within these fractions of the stage's share of the budget.
BACKOFF = (1.0, 0.5, 0.25)

SHRINK = MustShrink("not smaller than the stage's input (no channel removed)", "removes nothing, skipped")


def run(opts: StructuredOptions, ctx: StageContext) -> StageResult:
    if ctx.eval_data is None:
        return ctx.skipped(NAME, "skipped: the channel search needs data")
    gate = SmallerGate(ctx) if opts.objective == "size" else None
    attempts = _search_attempts(opts, ctx, gate)
    result = run_ladder(Ladder(NAME, attempts, adaptive=True, must_shrink=SHRINK), ctx)
    if opts.objective == "size":
        return kept_if_smaller(NAME, result, ctx, gate)
    return with_container_cost(result, ctx)


def search_runs(eval_cost: float) -> int:
    """Candidates one attempt's bisection may measure: STRUCTURED_SEARCH_SECONDS of nominal run time."""
    fits = int(STRUCTURED_SEARCH_SECONDS / max(eval_cost, 1e-12))
    return max(MIN_SEARCH_RUNS, min(DEFAULT_MAX_EVALS, fits))


def macs_of(stats: dict) -> tuple[int, int]:
    """(MACs before, after) at batch 1, from the pass's stats."""
    totals = stats["totals"]
    return int(totals["macs_before"]), int(totals["macs_after"])


def _search_attempts(opts: StructuredOptions, ctx: StageContext, gate: SmallerGate | None) -> list[Attempt]:
    model, measure, eval_data = ctx.model, ctx.measure, ctx.eval_data
    points = measure.budget * opts.budget_share
    # Noise powers of independent stages add: the same share of the noise allowance.
    snr = measure.min_snr_db + 10 * np.log10(1 / opts.budget_share) if measure.snr_gated else None
    calib = ctx.calib_data if ctx.calib_data is not None else eval_data
    reference = ctx.outputs if eval_data is measure.data else None
    max_evals = search_runs(measure.eval_cost)
    # One analysis, one capture (channel statistics, refit) and one reference run for every attempt.
    cached: dict = {}

    def prepared() -> tuple[Pruner, Judge]:
        if "pruner" not in cached:
            pruner = Pruner(
                model, calib, max_ratio=opts.max_ratio, exclude=opts.exclude, align=opts.align, heads=opts.heads
            )
            cached["pruner"] = pruner
            cached["judge"] = Judge.of_model(model, eval_data, reference=reference)
        return cached["pruner"], cached["judge"]

    def searched(budget: float) -> tuple[onnx.ModelProto, dict]:
        pruner, judge = prepared()
        if not pruner.groups:
            raise CompressorError("no channel group can be pruned")
        found, stats = structured_to_budget(
            model,
            eval_data,
            budget,
            max_ratio=opts.max_ratio,
            exclude=opts.exclude,
            max_evals=max_evals,
            judge=judge,
            calib=calib,
            align=opts.align,
            heads=opts.heads,
            min_snr_db=snr,
            pruner=pruner,
        )
        stats.pop("kept_channels", None)  # per channel: the pass's output, too long for the report
        totals = stats["totals"]
        stats["search_plan"] = (
            f"{totals['removed_channels']} of {totals['channels']} channels in {totals['prunable_groups']} groups "
            f"removed ({stats['importance']} importance); {stats['budget']['evaluations']} whole-model runs"
        )
        before, after = macs_of(stats)
        if after >= before:
            raise CompressorError("no channel fits the budget: nothing removed")
        # Checked before the judge's run: a candidate that packs no smaller is not measured.
        if gate is not None:
            reason = gate.why_not(found)
            if reason is not None:
                raise CompressorError(reason)
        return found, stats

    return [Attempt(f"channels within {points * f:.2g} points", lambda b=points * f: searched(b)) for f in BACKOFF]


def with_container_cost(result: StageResult, ctx: StageContext) -> StageResult:
    """Objective "speed": the result is kept for its fewer MACs (every attempt removes some);
    when it packs larger than its input, the row says by how many bytes (``cost_bytes``)."""
    row = result.row
    if not row.applied:
        return result
    size, before = ctx.packed_size(result.model), ctx.packed_size(ctx.model)
    row.packed_bytes = size
    macs_before, macs_after = macs_of(row.stats)
    words = f"kept for speed: MACs {macs_before:,} -> {macs_after:,}"
    if size > before:
        row.cost_bytes = size - before
        words += f"; packs {size - before:,} bytes larger than its input ({size:,} vs {before:,})"
    row.note = "; ".join(filter(None, [row.note, words]))
    return result
