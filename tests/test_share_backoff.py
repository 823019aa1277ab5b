"""The share ladder's back-off rungs: the per-tensor search's fronts at gentler allowances."""

from __future__ import annotations

from compressor.search.ecq_budget import SearchState, allocated
from compressor.stages.share_backoff import BACKOFF_FACTORS, KeptSearch, backoff_attempts

# Two tensors, each a front of three options (costliest first), as knapsack_of makes them.
KNAPSACK = [
    {"name": "a", "params": 800, "choices": [0, 1, 2], "ratios": [0.0, 0.5, 0.8], "drops": [0.0, 0.1, 0.4]},
    {"name": "b", "params": 800, "choices": [0, 1, 2], "ratios": [0.0, 0.3, 0.6], "drops": [0.0, 0.05, 0.3]},
]


def test_no_rung_is_built_before_the_search_kept_its_state():
    kept = KeptSearch()
    attempts = backoff_attempts(kept, "search", 0.7)
    assert len(attempts) == len(BACKOFF_FACTORS) and all(a.budget == 0.7 for a in attempts)
    assert all(a.skip([]) == "not built: the per-tensor search built no allocation" for a in attempts)


def test_each_rung_builds_the_allocation_at_a_smaller_allowance_once():
    built = []
    accepted = 0.7
    state = SearchState(KNAPSACK, accepted, allocated(KNAPSACK, accepted), lambda c: (built.append(c) or "m", {}))
    kept = KeptSearch()
    kept.keep(state)
    attempts = backoff_attempts(kept, "search", None)
    assert attempts[0].label == f"search, backed off to its allowance / {BACKOFF_FACTORS[0]:.3g}"
    made = []
    for a in attempts:
        if a.skip([]) is None:
            model, stats = a.build()
            made.append(stats["backed_off"]["factor"])
    assert made and built == [allocated(KNAPSACK, accepted / f) for f in made]
    assert state.choice not in built and len({tuple(sorted(c.items())) for c in built}) == len(built)
    for f in made:
        gentler = allocated(KNAPSACK, accepted / f)
        assert all(gentler[n] <= state.choice[n] for n in gentler)
