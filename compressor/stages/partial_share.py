"""The share ladder's last rung: the gentlest candidate's sharing kept on the tensors that fit.

When every setting of the share ladder misses the budget, the last candidate built (the
gentlest the ladder measured) is taken apart tensor by tensor: ``search.share_subset`` ranks
its tensors (those in If branches the calibration data never takes first: they cost nothing
on it; then by layer error per value) and bisects, on the run's own verdicts, for the longest
prefix that fits.  The rest are left as they were; the stage's stats say which and why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from .. import graph
from ..errors import CompressorError
from ..evaluate import make_session
from ..measure import RUN_KEYS
from ..search.branch_use import untaken_branches, unused_weights
from ..search.layer_error import capture_layers
from ..search.share_subset import MAX_VERDICTS, chosen_count, longest_prefix, ranking
from ..variants import feedable, weight_key, weights_as_inputs, with_arrays
from .ladder import Attempt, StageContext

LABEL = "the gentlest setting on the tensors that fit, the rest unshared"


class LastBuilt:
    """The last candidate a ladder's attempts built, with its label and the pass's stats."""

    def __init__(self) -> None:
        self.label: str | None = None
        self.model: onnx.ModelProto | None = None
        self.stats: dict | None = None

    def wrap(self, label: str, build):
        def built():
            model, stats = build()
            self.label, self.model, self.stats = label, model, stats
            return model, stats

        return built


def partial_attempt(tensors: Sequence[graph.Weight], ctx: StageContext, last: LastBuilt) -> Attempt:
    """The attempt that keeps `last`'s sharing on the longest ranked prefix of `tensors` that
    fits the run's budget.  Not tried when an earlier attempt fit (the ladder kept it) or
    nothing was built."""

    def skip(tried: Sequence[dict]) -> str | None:
        if any("error" not in t and not t.get("rejected_by") for t in tried):
            return "not needed: an earlier setting fits"
        if last.model is None:
            return "not built: no shared candidate to select from"
        return None

    return Attempt(LABEL, lambda: select_shared(tensors, ctx, last), skip=skip)


def select_shared(tensors: Sequence[graph.Weight], ctx: StageContext, last: LastBuilt) -> tuple[onnx.ModelProto, dict]:
    model, measure, log = ctx.model, ctx.measure, ctx.log
    if last.model is None:
        raise CompressorError("no shared candidate to select from")
    calib = ctx.calib_data if ctx.calib_data is not None else measure.search_data
    originals = {w.name: w.array() for w in tensors}
    built = {weight_key(w): w for w in graph.weights(last.model)}
    candidates = {w.name: built[weight_key(w)].array() for w in tensors if weight_key(w) in built}

    untaken, branch_runs = untaken_branches(model, calib)
    unused = unused_weights(tensors, untaken)
    used = [w for w in tensors if w.name not in unused and w.name in candidates]
    captured = ctx.layer_inputs.layers(model, calib) if ctx.layer_inputs is not None else None
    layers, _, capture_runs = capture_layers(model, used, calib, 1, tables=True, shared=captured)
    rows = ranking(originals, candidates, layers, unused)
    free = sum(r["unused"] is not None for r in rows)
    if len(rows) <= free:
        raise CompressorError(f"{last.label} changed no tensor the data uses")

    changed = [w for w in tensors if w.name in {r["name"] for r in rows}]
    verdict = _verdicts(model, changed, originals, measure)

    def fits(k: int) -> bool:
        metrics = verdict({r["name"]: candidates[r["name"]] for r in rows[:k]})
        return measure.within(metrics)

    verdicts = longest_prefix(free, len(rows), fits)
    kept = chosen_count(free, verdicts)
    if kept == 0:
        raise CompressorError(f"no tensor of {last.label} fits the budget shared alone")
    failing = min([v["tensors"] for v in verdicts if not v["fits"]] + [len(rows)])
    for i, r in enumerate(rows):
        r["shared"] = i < kept
        if r["unused"]:
            r["why"] = f"used only in {r['unused']}, a branch the calibration data never takes"
        elif i < kept:
            r["why"] = f"the first {kept} of {len(rows)} ranked tensors fit the budget together"
        else:
            r["why"] = (
                f"ranked {i + 1} of {len(rows)} by layer error per value; "
                f"the first {failing} shared together exceeded the budget"
            )
    chosen = {r["name"]: candidates[r["name"]] for r in rows[:kept]}
    shared = with_arrays(model, changed, chosen)
    unshared = [r["name"] for r in rows[kept:]]
    log(f"share: kept {kept} of {len(rows)} tensors of {last.label} shared; left unshared: {', '.join(unshared)}")
    stats = _stats(last, chosen, rows, verdicts, untaken, branch_runs + capture_runs)
    return shared, stats


def _verdicts(model: onnx.ModelProto, changed: Sequence[graph.Weight], originals: dict, measure):
    """A callable: arrays by name (the others as in `model`) -> the run's metrics on its verdict
    data.  One session with the changed weights as inputs when they can be fed, else a model
    built per verdict."""
    if len(feedable(model, changed)) == len(changed):
        session = make_session(weights_as_inputs(model, changed))

        def run(arrays: dict[str, np.ndarray]) -> dict:
            feed = {w.name: arrays.get(w.name, originals[w.name]) for w in changed}
            scores = measure.scores(measure.outputs(session, feed))
            return {k: scores[k] for k in RUN_KEYS}

        return run
    return lambda arrays: measure(with_arrays(model, changed, arrays))[0]


def _stats(last: LastBuilt, chosen: dict, rows: list[dict], verdicts: list[dict], untaken, runs: int) -> dict:
    """The gentlest candidate's stats cut to the tensors kept shared, and what the selection did."""
    stats = dict(last.stats or {})
    entries = [e for e in stats.get("tensors", []) if e.get("name") in chosen]
    stats["tensors"] = entries
    stats["shared_tensors"] = len(chosen)
    stats["shared_params"] = int(sum(np.size(a) for a in chosen.values()))
    stats["bias_correction"] = None  # the candidate's corrected biases are not taken
    stats.pop("budget_search", None)
    stats.pop("search_plan", None)
    stats["partial"] = {
        "from": last.label,
        "untaken_branches": list(untaken),
        "kept": [r["name"] for r in rows if r["shared"]],
        "left_unshared": [
            {"name": r["name"], "params": r["params"], "error": r["error"], "why": r["why"]}
            for r in rows
            if not r["shared"]
        ],
        "ranking": rows,
        "verdicts": verdicts,
        "max_verdicts": MAX_VERDICTS,
        "capture_runs": runs,
    }
    return stats
