"""Layer gains: how much whole-model output error one unit of a layer's relative error causes.

The budget searches (``prune_budget``, ``share_budget``, ``ecq_budget``) add up layer-local
errors (``layer_error``: tr(ΔWᵀCΔW) / tr(WᵀCW)), weighing every layer's relative output error
the same.  Layers differ in how much of that error reaches the model's outputs: a gate whose
output is squashed by a sigmoid, a branch added to a large residual stream or a last layer
feeding a softmax pass little of it on, an early layer whose error every later layer amplifies
passes on much.  The gain g of a tensor is that ratio: output error ≈ Σ gᵢ eᵢ for small
independent perturbations.

Measured by group testing with a bounded number of whole-model runs (``MAX_RUNS``, a count,
never the clock): the tensors, in graph order, are cut into at most that many contiguous
groups of about equal parameter count (a tensor larger than a group's share is a group of its
own); each group is perturbed alone, every tensor of it by one of the search's own candidates
(a pruned or shared array whose layer error eᵢ the curves already know, the one closest to
``TARGET_ERROR``: small, so that errors add up), and the model's relative output error y
(``output_error``: centred, averaged over the float outputs) gives the group's gain
y / Σ eᵢ, which every tensor of the group takes.  Gains are scaled to mean 1 and kept within
``MAX_SPREAD`` of their median, so a knapsack weighted by them (``weigh``) keeps its scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from ..measure import VariantRunner
from ..variants import with_arrays

# Whole-model runs a gain estimate makes at most (one per group of tensors) when it is asked for,
# and the searches' default: off (measured on the sample and real models, the weighting did not
# make the containers smaller; benchmarks/README.md, "Layer gains").
MAX_RUNS = 6
DEFAULT_RUNS = 0
# The layer error (relative) each perturbed tensor is given, as near as its candidates allow.
TARGET_ERROR = 1e-3
# Gains kept within this factor of their median either way (a group whose perturbation did not
# reach the outputs at all would otherwise make its tensors free).
MAX_SPREAD = 30.0


def graph_order(model: onnx.ModelProto, names: Sequence[str], consumers: dict[str, Sequence]) -> list[str]:
    """`names` ordered by their first consumer's position in the main graph (stable; tensors
    used only inside subgraphs last).  `consumers`: each name's ``graph.Consumer`` list."""
    position = {tuple(n.output): i for i, n in enumerate(model.graph.node)}
    end = len(model.graph.node)

    def first(name: str) -> int:
        return min((position.get(tuple(c.node.output), end) for c in consumers.get(name, ())), default=end)

    return sorted(names, key=first)


def contiguous_groups(params: Sequence[int], max_groups: int) -> list[list[int]]:
    """Indices 0..n-1 cut into at most `max_groups` contiguous groups of about equal summed
    `params`: a new group starts when the current one has reached its share of what is left."""
    if not params or max_groups <= 0:
        return []
    sizes = [max(int(p), 1) for p in params]
    groups: list[list[int]] = []
    current: list[int] = []
    left, filled = float(sum(sizes)), 0.0
    for i, size in enumerate(sizes):
        groups_left = max_groups - len(groups)
        share = left / groups_left
        # a new group when this tensor would push the current one past its share
        if current and filled + size > share * 1.0001 and groups_left > 1:
            groups.append(current)
            left -= filled
            current, filled = [], 0.0
        current.append(i)
        filled += size
    if current:
        groups.append(current)
    return groups


def nearest_option(errors: Sequence[float], target: float = TARGET_ERROR) -> int | None:
    """Index of the option whose (finite, positive) error is nearest `target` in log; None when
    no option has one."""
    best, best_distance = None, math.inf
    for i, e in enumerate(errors):
        if e is None or not math.isfinite(e) or e <= 0:
            continue
        distance = abs(math.log(e / target))
        if distance < best_distance:
            best, best_distance = i, distance
    return best


def output_error(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """The outputs' relative error: ||out - ref||² over the reference's variation across samples
    (its centred power; the raw power when it does not vary), averaged over the float outputs."""
    errors = []
    for ref, out in zip(reference, outputs):
        if ref.dtype.kind != "f" or ref.shape != out.shape or ref.size == 0:
            continue
        r = ref.astype(np.float64)
        noise = float(np.sum(np.square(out.astype(np.float64) - r)))
        centred = float(np.sum(np.square(r - r.mean(axis=0, keepdims=True)))) if r.ndim and r.shape[0] > 1 else 0.0
        power = centred if centred > 0 else float(np.sum(np.square(r)))
        errors.append(noise / power if power > 0 else (0.0 if noise == 0 else math.inf))
    return float(np.mean(errors)) if errors else 0.0


def normalized(raw: dict[str, float]) -> dict[str, float]:
    """Gains within ``MAX_SPREAD`` of their median and scaled to mean 1; all 1 when none is
    positive and finite."""
    good = [g for g in raw.values() if math.isfinite(g) and g > 0]
    if not good:
        return dict.fromkeys(raw, 1.0)
    median = float(np.median(good))
    clipped = {
        n: float(np.clip(g if math.isfinite(g) else median * MAX_SPREAD, median / MAX_SPREAD, median * MAX_SPREAD))
        for n, g in raw.items()
    }
    mean = float(np.mean(list(clipped.values())))
    return {n: g / mean for n, g in clipped.items()}


def estimate_gains(
    names: Sequence[str],
    params: dict[str, int],
    probes: dict[str, tuple[float, np.ndarray]],
    outputs_of: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
    reference: Sequence[np.ndarray],
    max_runs: int = MAX_RUNS,
) -> dict:
    """Each tensor's gain from at most `max_runs` calls of `outputs_of` (one per group).

    `names`: the tensors in graph order; `probes`: per tensor (its layer error, the perturbed
    array with that error) — a tensor without one is measured with its group but adds no
    perturbation; `outputs_of(arrays)`: the model's outputs with those tensors replaced.
    Returns ``{"gains": {name: gain}, "groups": [[names]], "group_gains": [...], "runs"}``;
    a group with no probe takes the median gain."""
    names = list(names)
    groups = contiguous_groups([params.get(n, 1) for n in names], max_runs)
    raw: dict[str, float] = {}
    group_gains: list[float | None] = []
    runs = 0
    for group in groups:
        members = [names[i] for i in group]
        probed = {n: probes[n] for n in members if n in probes}
        total = sum(e for e, _ in probed.values())
        if not probed or not total > 0:
            group_gains.append(None)
            continue
        y = output_error(reference, outputs_of({n: a for n, (_, a) in probed.items()}))
        runs += 1
        gain = y / total
        group_gains.append(gain)
        raw.update(dict.fromkeys(members, gain))
    finite = [g for g in raw.values() if math.isfinite(g) and g > 0]
    fill = float(np.median(finite)) if finite else 1.0
    for group, gain in zip(groups, group_gains):
        if gain is None:
            raw.update(dict.fromkeys((names[i] for i in group), fill))
    return {
        "gains": normalized(raw) if raw else {},
        "groups": [[names[i] for i in g] for g in groups],
        "group_gains": group_gains,
        "runs": runs,
    }


def weigh(knapsack: list[dict], gains: dict[str, float] | None) -> list[dict]:
    """The knapsack curves with each tensor's drops times its gain (1 when it has none)."""
    if not gains:
        return knapsack
    return [{**k, "drops": [d * gains.get(k["name"], 1.0) for d in k["drops"]]} for k in knapsack]


def runner_outputs(runner: VariantRunner) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """`outputs_of` for ``estimate_gains`` from a search's ``VariantRunner`` (its session, or
    a rebuilt model when it has none); each call counts as one of the judge's runs."""

    def outputs_of(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        runner.judge.runs += 1
        if runner.session is None:
            return runner.judge.outputs(with_arrays(runner.model, runner.selected, arrays))
        feed = {w.name: arrays.get(w.name, runner.originals[w.name]) for w in runner.selected}
        return runner.judge.outputs(runner.session, feed)

    return outputs_of


def runner_gains(
    runner: VariantRunner,
    errors: dict[str, Sequence[float]],
    arrays_of: Callable[[str, int], np.ndarray],
    max_runs: int = MAX_RUNS,
) -> dict:
    """``estimate_gains`` for a search: `errors` per tensor (its curve, one error per option),
    `arrays_of(name, option index)` the option's array; the probe of each tensor is the option
    nearest ``TARGET_ERROR``.  Tensors in graph order, parameters = their sizes."""
    selected = {w.name: w for w in runner.selected}
    names = graph_order(
        runner.model, [n for n in selected if n in errors], {n: w.consumers for n, w in selected.items()}
    )
    probes = {}
    for name in names:
        i = nearest_option(errors[name])
        if i is not None:
            probes[name] = (float(errors[name][i]), arrays_of(name, i))
    params = {n: int(selected[n].size) for n in names}
    return estimate_gains(names, params, probes, runner_outputs(runner), runner.judge.reference_outputs, max_runs)
