"""The share ladder's rungs after the per-tensor search: the same fronts at gentler allowances.

The per-tensor search (``search.ecq_budget``) measures its allocations on the searches' samples
and keeps the one that saves the most bytes within the budget: the largest of several noisy
measurements, which the verdict on held-out samples often finds past the budget.  The fixed
k-means rungs after it then give up most of what the search found.  These rungs back off
along the search's own fronts instead (the issue's "verify the whole model and back off along
the same curve"): the allocation at the accepted allowance / √2, / 2, / 4 (``ecq_budget.backed_off``),
each built as the search built its own and judged by the ladder's verdict, with no further
search run.  They are tried only while the search's result has not fit; the first that fits is
weighed against the next rung that fits, as the search's result would have been (the ladder's
``compare_first``).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from ..errors import CompressorError
from ..search.ecq_budget import SearchState, backed_off
from .ladder import Attempt

# The allowance divided by each in turn, half an octave apart: the search's result misses the
# verdict by little more often than by much, and an octave of allowance can halve the loss.
BACKOFF_FACTORS = (2.0**0.5, 2.0, 4.0)


class KeptSearch:
    """The per-tensor search's state, handed over by the search (``keep``) when it built a result."""

    def __init__(self) -> None:
        self.state: SearchState | None = None
        self.built: list[dict[str, int]] = []

    def keep(self, state: SearchState) -> None:
        self.state = state
        self.built = [state.choice]


def backoff_attempts(kept: KeptSearch, label: str, budget: float | None) -> list[Attempt]:
    """One attempt per factor of BACKOFF_FACTORS: the search's allocation at its accepted
    allowance / factor, held to `budget` (the search's own); skipped when the search built
    nothing or the allocation is one built already."""

    def choice_for(factor: float) -> dict[str, int] | None:
        if kept.state is None:
            return None
        choice = backed_off(kept.state, factor)
        return None if choice is None or choice in kept.built else choice

    def skip(factor: float, tried: Sequence[dict]) -> str | None:
        if kept.state is None:
            return "not built: the per-tensor search built no allocation"
        if choice_for(factor) is None:
            return "not built: the same allocation as one built already"
        return None

    def build(factor: float) -> tuple[onnx.ModelProto, dict]:
        choice = choice_for(factor)
        if kept.state is None or choice is None:
            raise CompressorError("no gentler allocation of the per-tensor search")
        kept.built.append(choice)
        model, stats = kept.state.build(choice)
        stats["backed_off"] = {"factor": factor, "allowance": kept.state.accepted / factor}
        return model, stats

    return [
        Attempt(
            f"{label}, backed off to its allowance / {factor:.3g}",
            lambda f=factor: build(f),
            budget,
            skip=lambda tried, f=factor: skip(f, tried),
        )
        for factor in BACKOFF_FACTORS
    ]
