"""The share ladder's last rungs: the gentlest candidate's sharing kept on the tensors that fit.

When every setting of the share ladder misses the budget, the last candidate built (the
gentlest the ladder measured) is taken apart tensor by tensor: ``search.share_subset`` ranks
its tensors (those in If branches the calibration data never takes first: they cost nothing
on it; then by layer error per value) and grows the set kept shared with whole-model runs on
the searches' data (``share_subset.grow``: a bisection, then single steps; at most
``share_subset.MAX_VERDICTS`` runs), within the share of the budget the per-tensor search has.
The ladder then takes its verdict on its own data; if that rejects it, the next rung keeps
only the tensors of the untaken branches.  The rest are left as they were; the stage's stats
(the report's ``share_partial``) say which and why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from .. import graph
from ..errors import CompressorError
from ..measure import Judge, VariantRunner
from ..search.branch_use import untaken_branches, unused_weights
from ..search.layer_error import capture_layers
from ..search.share_subset import MAX_VERDICTS, grow, ranking
from ..variants import weight_key, with_arrays
from .ladder import Attempt, StageContext

SEARCHED = "the gentlest setting on the tensors that fit, the rest unshared"
UNUSED_ONLY = "the gentlest setting on the tensors of untaken If branches only, the rest unshared"


class LastBuilt:
    """The last candidate a ladder's attempts built, with its label and the pass's stats."""

    def __init__(self) -> None:
        self.label: str | None = None
        self.model: onnx.ModelProto | None = None
        self.stats: dict | None = None
        self._build = None  # the build that made `model`

    def wrap(self, label: str, build):
        def built():
            # The one built before is let go while this one is built (a large model would be
            # held twice); if this build fails it is built again (builds are deterministic).
            before = self._build
            self.model = self.stats = None
            try:
                model, stats = build()
            except Exception:
                if before is not None:
                    self.model, self.stats = before()
                raise
            self.label, self.model, self.stats, self._build = label, model, stats, build
            return model, stats

        return built


class _Ranked:
    """The ranking of `last`'s tensors, made once for both rungs."""

    def __init__(self, tensors: Sequence[graph.Weight], ctx: StageContext, last: LastBuilt):
        model, measure = ctx.model, ctx.measure
        calib = ctx.calib_data if ctx.calib_data is not None else measure.search_data
        self.originals = {w.name: w.array() for w in tensors}
        built = {weight_key(w): w for w in graph.weights(last.model)}
        self.candidates = {w.name: built[weight_key(w)].array() for w in tensors if weight_key(w) in built}
        self.untaken, branch_runs = untaken_branches(model, calib)
        unused = unused_weights(tensors, self.untaken)
        used = [w for w in tensors if w.name not in unused and w.name in self.candidates]
        captured = ctx.layer_inputs.layers(model, calib) if ctx.layer_inputs is not None else None
        layers, _, capture_runs = capture_layers(model, used, calib, 1, tables=True, shared=captured)
        self.rows = ranking(self.originals, self.candidates, layers, unused)
        self.free = sum(r["unused"] is not None for r in self.rows)
        names = {r["name"] for r in self.rows}
        self.changed = [w for w in tensors if w.name in names]
        self.capture_runs = branch_runs + capture_runs


def partial_attempts(
    tensors: Sequence[graph.Weight], ctx: StageContext, last: LastBuilt, points: float
) -> list[Attempt]:
    """The two rungs that keep `last`'s sharing on some of `tensors`: those a search within
    `points` (on the searches' data) keeps, then those of untaken If branches alone.  Neither
    is tried when an earlier attempt fit (the ladder kept it) or nothing was built."""
    ranked: list[_Ranked] = []

    def skip(tried: Sequence[dict]) -> str | None:
        if any("error" not in t and not t.get("rejected_by") for t in tried):
            return "not needed: an earlier setting fits"
        if last.model is None:
            return "not built: no shared candidate to select from"
        return None

    def ranking_of() -> _Ranked:
        if not ranked:
            ranked.append(_Ranked(tensors, ctx, last))
        return ranked[0]

    return [
        Attempt(SEARCHED, lambda: searched(ranking_of(), ctx, last, points), skip=skip),
        Attempt(UNUSED_ONLY, lambda: unused_only(ranking_of(), ctx, last), skip=skip),
    ]


def searched(r: _Ranked, ctx: StageContext, last: LastBuilt, points: float) -> tuple[onnx.ModelProto, dict]:
    """The ranked tensors ``share_subset.grow`` keeps, measured on the searches' data."""
    measure = ctx.measure
    rows = r.rows
    if len(rows) <= r.free:
        raise CompressorError(f"{last.label} changed no tensor the data uses")
    data = measure.search_data
    judge = Judge.of_model(ctx.model, data, reference=ctx.outputs if data is measure.data else None)
    runner = VariantRunner(ctx.model, judge, r.changed, {w.name: r.originals[w.name] for w in r.changed})
    floor = measure.min_snr_db if measure.snr_gated else None

    def fits(ranks: list[int]) -> bool:
        metrics = runner.measure_arrays({rows[i]["name"]: r.candidates[rows[i]["name"]] for i in ranks})
        return judge.fits(metrics, points, floor)

    selection = grow(r.free, len(rows), fits)
    runner.close()
    kept = set(selection.kept)
    why = {
        i: f"ranked {i + 1} of {len(rows)} by layer error per value; {selection.why.get(i, '')}"
        for i in range(len(rows))
        if i not in kept
    }
    return _built(r, ctx, last, kept, why, {"verdicts": selection.verdicts, "points": points})


def unused_only(r: _Ranked, ctx: StageContext, last: LastBuilt) -> tuple[onnx.ModelProto, dict]:
    """The tensors of untaken If branches alone: free on the data, no search."""
    if not r.free:
        raise CompressorError("no tensor lives only in an If branch the calibration data never takes")
    kept = set(range(r.free))
    why = {i: "used by the calibration data; only the untaken branches are kept" for i in range(r.free, len(r.rows))}
    return _built(r, ctx, last, kept, why, {"verdicts": []})


def _built(
    r: _Ranked, ctx: StageContext, last: LastBuilt, kept: set[int], why: dict[int, str], search: dict
) -> tuple[onnx.ModelProto, dict]:
    if not kept:
        raise CompressorError(f"no tensor of {last.label} fits the budget shared alone")
    rows = [dict(row) for row in r.rows]
    for i, row in enumerate(rows):
        row["shared"] = i in kept
        if row["unused"]:
            row["why"] = f"used only in {row['unused']}, a branch the calibration data never takes"
        else:
            row["why"] = why.get(i, "fits the budget with the other kept tensors")
    chosen = {row["name"]: r.candidates[row["name"]] for row in rows if row["shared"]}
    unshared = [row["name"] for row in rows if not row["shared"]]
    runs = f" ({len(search['verdicts'])} runs on the searches' data)" if search["verdicts"] else ""
    ctx.log(f"share: {len(chosen)} of {len(rows)} tensors of {last.label} kept{runs}; unshared: {', '.join(unshared)}")
    stats = dict(last.stats or {})
    stats["tensors"] = [e for e in stats.get("tensors", []) if e.get("name") in chosen]
    stats["shared_tensors"] = len(chosen)
    stats["shared_params"] = int(sum(np.size(a) for a in chosen.values()))
    stats["bias_correction"] = None  # the candidate's corrected biases are not taken
    stats.pop("budget_search", None)
    stats.pop("search_plan", None)
    stats["partial"] = {
        "from": last.label,
        "untaken_branches": list(r.untaken),
        "kept": [row["name"] for row in rows if row["shared"]],
        "left_unshared": [
            {"name": row["name"], "params": row["params"], "error": row["error"], "why": row["why"]}
            for row in rows
            if not row["shared"]
        ],
        "ranking": rows,
        "max_verdicts": MAX_VERDICTS,
        "capture_runs": r.capture_runs,
        **search,
    }
    return with_arrays(ctx.model, r.changed, chosen), stats
