"""A k-means rung of the share ladder not measured when it could not be kept: its codes alone
are estimated larger than the per-tensor search's packed candidate.

The share ladder weighs the searched widths against the first k-means rung that fits: the
one that packs smaller wins (``Ladder.compare_first``).  A k-means rung is measured (built,
a whole-model verdict) and, when it fits, packed: a pack of a model with every shared tensor
at its width, to lose a comparison its size decided in advance.  The search's rate curves hold
every tensor's k-means estimate at every width of ``share_budget.BITS`` (the bytes dict-rans
spends on its codes, ``ecq_budget.estimated_bytes``), so a rung's shared tensors alone are
estimated without building anything.  When that estimate, less ``ESTIMATE_SLACK`` of it (the
other coders, a codebook's context), is still no smaller than the search's packed container,
the rung cannot win: it is recorded as not measured.  Nor is the ladder's gentlest rung then
measured early for the harsher rungs (stages/gentlest_first.py): it could not be kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..passes.share import CONV_ROLES

# The share of a rung's estimated code bytes its packing might save below the estimate.
ESTIMATE_SLACK = 0.25


class SearchSizes:
    """The per-tensor search's rate curves (from its stats, once built) and, through the
    ladder's record of it, its packed size."""

    def __init__(self, label: str):
        self.label = label
        self.curves: list[dict] | None = None

    def wrap(self, build):
        def built():
            model, stats = build()
            self.curves = stats.get("budget_search", {}).get("curves")
            return model, stats

        return built

    def packed(self, tried: Sequence[dict]) -> int | None:
        """The search candidate's packed bytes, when it fit and the ladder packed it."""
        first = next((t for t in tried if t["option"] == self.label), None)
        if first is None or "error" in first or first.get("rejected_by"):
            return None
        return first.get("packed_bytes")

    def estimate(self, key: tuple) -> int | None:
        """The estimated code bytes of every searched tensor at the rung's widths (bits conv,
        bits fc; None for a kind the model lacks), or None when a width was not estimated."""
        if not self.curves:
            return None
        total = 0
        for curve in self.curves:
            bits = key[0] if curve.get("role") in CONV_ROLES else key[1]
            found = [o for o in curve.get("options", []) if o.get("method") == "kmeans" and o.get("bits") == bits]
            if bits is None or not found or found[0].get("bytes") is None:
                return None
            total += int(found[0]["bytes"])
        return total

    def out_of_reach(self, key: tuple):
        """The skip rule (``Attempt.skip``) of the k-means rung `key`."""

        def rule(tried: Sequence[dict]) -> str | None:
            packed = self.packed(tried)
            estimate = self.estimate(key) if packed is not None else None
            if estimate is None or estimate * (1 - ESTIMATE_SLACK) < packed:
                return None
            return (
                f"not measured: its shared tensors' codes alone are estimated at {estimate:,} bytes "
                f"({1 - ESTIMATE_SLACK:.0%} of it no less than the searched setting's {packed:,} packed): "
                "it could not be kept"
            )

        return rule
