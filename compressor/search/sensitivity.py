"""sensitivity: how much each prunable tensor, pruned alone, costs in accuracy (or fidelity).

For every tensor ``prune.prunable_weights`` selects and every ratio of a ladder (default
0.3 0.5 0.7 0.8 0.9 0.95) the tensor alone is magnitude-pruned (layer scope: exactly
round(r * n) zeros, existing zeros counted) and the model is run with ONNX Runtime over
the whole dataset.  With labels the metric is top-1 accuracy and the *drop* is
baseline - accuracy in points; without labels it is fidelity to the original model
(top-1 agreement, drop = 100 - agreement, and the output SNR).

Speed: the tensor being probed is turned into a graph *input* (its initializer or
Constant node removed, a main-graph input of the same name added; a tensor inside an
If/Loop body is then an outer-scope value), so one ORT session per tensor is built and
fed a different pruned version per ratio, while every other weight stays a constant that
ORT can pre-pack and fold (Conv+BN fusion, NCHWc weight layouts).  Measured on 2 CPUs
(6 ratios; ``strategy=``): LeNet-5, 1000 images: per-tensor 1.18 s, one session with all
tensors as inputs 1.18 s, a rebuilt model per ratio 1.44 s; an 8-layer 64-channel
Conv+BN net, 512 images: 28-31 s, 37 s, 27 s; a 6-layer 1024-wide MLP, 1024 rows: 6.9 s,
7.8-8.1 s, 7.8 s.  Non-constant weights cost more run time than the session builds
they save, so "per-tensor" is the default.  Tensors whose name is not unique in the
model fall back to rebuilding the pruned model per ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from .. import graph
from ..data import Dataset, load_dataset
from ..errors import UsageError
from ..measure import Judge, VariantRunner
from ..passes.magnitude import layer_pruned
from ..passes.selection import DEFAULT_MIN_PARAMS, prunable_weights, unique_names
from ..variants import feedable

DEFAULT_RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
# The budget search's ladder (layer error curves, search.layer_error): per-tensor ratios are
# interpolated between its ratios.
BUDGET_RATIOS = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98)
STRATEGIES = ("per-tensor", "one-session", "rebuild")


def parse_ratios(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """'0.3,0.5,...' (or a sequence) -> sorted unique ratios, each in (0, 1)."""
    if text is None:
        return DEFAULT_RATIOS
    items = text.split(",") if isinstance(text, str) else list(text)
    ratios = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
        try:
            r = float(item)
        except (TypeError, ValueError):
            raise UsageError(f"ratios: not a number: {item!r}")
        if not (0.0 < r < 1.0):
            raise UsageError(f"ratios: each ratio must be in (0, 1), got {item}")
        ratios.append(r)
    if not ratios:
        raise UsageError("ratios: give at least one ratio, e.g. 0.5,0.9")
    return tuple(sorted(set(ratios)))


# --------------------------------------------------------------------------- sensitivity


def sensitivity(
    model: onnx.ModelProto,
    data: Dataset | str,
    ratios: Sequence[float] | str | None = None,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    include_embeddings: bool = False,
    batch_size: int | None = None,
    strategy: str = "per-tensor",
    evaluator: Judge | None = None,
    progress: Callable[[int, int], None] | None = None,
    compensate: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Per-tensor pruning curves: each prunable tensor pruned alone at each ratio, measured with ORT.

    Returns ``{"metric", "baseline", "ratios", "tensors": [{"name", "role", "params",
    "sparsity_before", "curve": [{"ratio", "accuracy", "top1_agreement", "snr_db", "drop",
    "rel_noise"}]}], "skipped", "strategy", "sessions", "runs"}``.  ``drop`` is the loss in
    points (see ``measure.loss_points``); ``rel_noise`` is ||out - ref||^2 / ||ref||^2 of the
    first output.  `evaluator`: the judge (``measure.Judge.of_model``), when the caller has one.
    progress(done, total) is called after each tensor's curve (for a progress bar).
    compensate(name, pruned) -> array: applied to each pruned tensor before it is measured
    (``compensate.Compensator``: the kept weights refit).
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    ratios = parse_ratios(ratios)
    if not isinstance(data, Dataset):
        data = load_dataset(data, model)
    selected, skipped = prunable_weights(model, exclude, min_params, include_embeddings)
    selected = unique_names(selected, skipped)
    judge = evaluator if evaluator is not None else Judge.of_model(model, data, batch_size)
    runs_before = judge.runs
    sessions = 0
    originals = {w.name: w.array() for w in selected}
    fed = {w.name for w in feedable(model, selected)} if strategy != "rebuild" else set()
    curves: dict[str, list[dict]] = {w.name: [] for w in selected}

    done = 0

    def probe(w: graph.Weight, runner: VariantRunner) -> None:
        nonlocal done
        values = originals[w.name]
        for r in ratios:
            pruned = layer_pruned(values, r)
            if compensate is not None:
                pruned = compensate(w.name, pruned)
            curves[w.name].append({"ratio": r, **runner.measure_arrays({w.name: pruned})})
        done += 1
        if progress is not None:
            progress(done, len(selected))

    if strategy == "one-session" and fed:
        together = [w for w in selected if w.name in fed]
        runner = VariantRunner(model, judge, together, originals)
        sessions += 1
        for w in together:
            probe(w, runner)
    else:
        for w in selected:
            if w.name in fed:
                probe(w, VariantRunner(model, judge, [w], originals))
                sessions += 1
    for w in selected:
        if w.name not in fed:
            # A rebuilt model per ratio (strategy "rebuild", or a name defined twice in the
            # model, which cannot be fed): the tensor is found by where it lives.
            probe(w, VariantRunner(model, judge, [w], originals, rebuild=True))
            sessions += len(ratios)
    tensors = []
    for w in selected:
        zeros = int(np.count_nonzero(originals[w.name] == 0))
        tensors.append(
            {
                "name": w.name,
                "role": w.role,
                "shape": list(w.shape),
                "params": w.size,
                "sparsity_before": zeros / w.size if w.size else 0.0,
                "curve": curves[w.name],
            }
        )
    return {
        "metric": judge.mode,
        "samples": data.size,
        "baseline": judge.baseline,
        "ratios": list(ratios),
        "tensors": tensors,
        "skipped": [s.as_dict() for s in skipped],
        "strategy": strategy,
        "sessions": sessions,
        "runs": judge.runs - runs_before,
    }
