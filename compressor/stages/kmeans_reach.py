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

The same curves hold each tensor's error at every width, and the search measured allocations of
them on the data (its trials: the loss in points of each).  In fidelity runs the loss (KL,
centred SNR) grows as the output noise power, which the search's knapsack takes as the sum of
the tensors' errors: a rung's loss is predicted from each trial as the trial's loss times the
ratio of the rung's summed errors to the trial's.  When even the smallest of these predictions
is more than ``PREDICT_SLACK`` times the rung's budget, the rung could not fit: not measured
(``predicted_miss``).  Not with labels: accuracy on a few samples is a count of flipped
decisions, not proportional to the noise (a trial may lose nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..passes.share import CONV_ROLES

# The share of a rung's estimated code bytes its packing might save below the estimate.
ESTIMATE_SLACK = 0.25
# How far a rung's predicted loss may pass its budget and still be measured: the errors are
# layer-local and their gains to the output differ (up to 6 dB either way, as fewer bits may
# fall on less sensitive tensors than the trial's allocation did).
PREDICT_SLACK = 4.0


class SearchSizes:
    """The per-tensor search's rate curves (from its stats, once built) and, through the
    ladder's record of it, its packed size."""

    def __init__(self, label: str):
        self.label = label
        self.curves: list[dict] | None = None
        self.trials: list[dict] = []

    def wrap(self, build):
        def built():
            model, stats = build()
            search = stats.get("budget_search", {})
            self.curves = search.get("curves")
            self.trials = list(search.get("tried") or [])
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

    def summed_error(self, key: tuple) -> float | None:
        """The summed errors of every searched tensor at the k-means rung's widths (as
        ``estimate``), or None when a width has no error."""
        if not self.curves:
            return None
        total = 0.0
        for curve in self.curves:
            bits = key[0] if curve.get("role") in CONV_ROLES else key[1]
            found = [o for o in curve.get("options", []) if o.get("method") == "kmeans" and o.get("bits") == bits]
            if bits is None or not found or found[0].get("error") is None:
                return None
            total += float(found[0]["error"])
        return total

    def predicted_loss(self, key: tuple) -> float | None:
        """The smallest loss (points) the search's trials predict for the rung `key`: each trial's
        loss x the rung's summed errors / the trial's (trials with no loss or no error predict
        nothing), or None."""
        rung = self.summed_error(key)
        if rung is None or not self.curves:
            return None
        options = {c["name"]: c.get("options", []) for c in self.curves}
        predictions = []
        for trial in self.trials:
            drop = trial.get("drop")
            choice = trial.get("choice") or {}
            if drop is None or not drop > 0 or not choice:
                continue
            try:
                errors = [options[name][index].get("error") for name, index in choice.items()]
            except (KeyError, IndexError):
                continue
            if any(e is None for e in errors):
                continue
            error = float(sum(errors))
            if error > 0:
                predictions.append(float(drop) * rung / error)
        return min(predictions) if predictions else None

    def predicted_miss(self, key: tuple, budget: float):
        """The skip rule (``Attempt.skip``) of the k-means rung `key` held to `budget` points: not
        measured when its predicted loss passes PREDICT_SLACK x `budget` (fidelity runs only: the
        caller's choice)."""

        def rule(tried: Sequence[dict]) -> str | None:
            if budget <= 0:
                return None
            predicted = self.predicted_loss(key)
            if predicted is None or predicted <= PREDICT_SLACK * budget:
                return None
            return (
                f"not measured: the search's measured allocations predict {predicted:.3g} points from its "
                f"tensors' errors, more than {PREDICT_SLACK:g} x its budget of {budget:.3g}: it could not fit"
            )

        return rule
