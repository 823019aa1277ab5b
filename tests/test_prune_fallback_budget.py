"""Prune's fallbacks (the ratios found, scaled down) are held to pruning's share of the budget."""

from __future__ import annotations

from dataclasses import replace

import graphs
from stage_contexts import measured_context

from compressor import graph
from compressor.options import PruneOptions
from compressor.stages import prune as prune_stage


def test_the_scaled_fallbacks_are_held_to_prunings_share_of_the_budget():
    model = graphs.mlp()
    data = graphs.make_inputs(model, 32, seed=0)
    held_out = graphs.make_inputs(model, 32, seed=1)
    # the searches' samples held out from the verdict's (run --calib alone)
    ctx = replace(
        measured_context(model, held_out, "fidelity", 1.0, graph.model_bytes, search_data=data), eval_data=data
    )
    attempts = prune_stage._search_attempts(PruneOptions(), ctx)
    first, *fallbacks = attempts
    assert first.budget is None  # the search's own result: the run's budget, as before
    share = ctx.measure.budget * prune_stage.PRUNE_BUDGET_SHARE
    assert [a.label for a in fallbacks] == [f"the ratios found x {f:g}" for f in prune_stage.SUBSET_FALLBACK_SCALES]
    assert all(a.budget == share for a in fallbacks)
    assert all(a.budget == 0.3 for a in prune_stage._search_attempts(PruneOptions(budget=0.3), ctx)[1:])
