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

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from .. import graph
from ..data import Dataset, load_dataset
from ..errors import CompressorError, UsageError
from ..evaluate import DEFAULT_BATCH, accuracy, batch_size_for, fidelity, make_session
from .prune import DEFAULT_MIN_PARAMS, layer_magnitude_mask, prunable_weights, weight_key

DEFAULT_RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
# prune --budget probes a finer ladder: per-tensor ratios can only come from it.
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
            raise UsageError(f"--ratios: not a number: {item!r}")
        if not (0.0 < r < 1.0):
            raise UsageError(f"--ratios: each ratio must be in (0, 1), got {item}")
        ratios.append(r)
    if not ratios:
        raise UsageError("--ratios: give at least one ratio, e.g. 0.5,0.9")
    return tuple(sorted(set(ratios)))


# --------------------------------------------------------------------------- measuring


class Evaluator:
    """Runs a model (or variants of it) over a dataset and scores them against the original.

    ``measure_*`` return ``{"accuracy", "top1_agreement", "snr_db", "drop"}``; drop is in
    points: baseline accuracy - accuracy (labels) or 100 - top-1 agreement (no labels).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        data: Dataset,
        batch_size: int | None = None,
        reference: list[np.ndarray] | None = None,
    ):
        """`reference`: the model's outputs on `data`, when the caller already has them."""
        self.model = model
        self.data = data
        self.batch_size = batch_size or batch_size_for(model, DEFAULT_BATCH)
        self.mode = "accuracy" if data.labels is not None else "fidelity"
        self.reference = reference if reference is not None else self._run(make_session(model), {})
        self.baseline_accuracy = accuracy(self.reference[0], data.labels) if data.labels is not None else None
        self.baseline = self._score(self.reference)
        self.runs = 0

    def _run(self, session, extra_feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        chunks: list[list[np.ndarray]] = []
        for feed in self.data.batches(self.batch_size):
            feed.update(extra_feed)
            try:
                chunks.append(session.run(None, feed))
            except Exception as e:  # ORT raises several types
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CompressorError(f"ONNX Runtime failed to run the model: {msg}")
        return [
            np.concatenate([c[i] for c in chunks], axis=0) if chunks[0][i].ndim else chunks[0][i]
            for i in range(len(chunks[0]))
        ]

    def _score(self, outputs: list[np.ndarray]) -> dict:
        fid = fidelity(self.reference, outputs)
        acc = accuracy(outputs[0], self.data.labels) if self.data.labels is not None else None
        if self.mode == "accuracy":
            drop = self.baseline_accuracy - acc
        else:
            drop = 0.0 if fid["top1_agreement"] is None else 100.0 - fid["top1_agreement"]
        return {
            "accuracy": acc,
            "top1_agreement": fid["top1_agreement"],
            "snr_db": fid["snr_db"],
            "drop": drop,
            "rel_noise": self._relative_noise(outputs[0]),
        }

    def _relative_noise(self, output: np.ndarray) -> float | None:
        """||out - ref||^2 / ||ref||^2 of the first output: smooth, and close to additive over
        small independent perturbations of different layers (what the budget allocation uses)."""
        ref = self.reference[0]
        if ref.dtype.kind != "f" or ref.shape != output.shape:
            return None
        ref64 = ref.astype(np.float64).ravel()
        signal = float(np.dot(ref64, ref64))
        diff = ref64 - output.astype(np.float64).ravel()
        noise = float(np.dot(diff, diff))
        if not math.isfinite(noise):
            return math.inf
        return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)

    def measure_session(self, session, extra_feed: dict[str, np.ndarray] | None = None) -> dict:
        self.runs += 1
        return self._score(self._run(session, extra_feed or {}))

    def measure_model(self, model: onnx.ModelProto) -> dict:
        return self.measure_session(make_session(model))


# --------------------------------------------------------------------------- weights as inputs


def _all_value_names(model: onnx.ModelProto) -> dict[str, int]:
    """How many times each name is defined anywhere (inputs, initializers, node outputs, all graphs)."""
    counts: dict[str, int] = {}
    for _, g in graph.iter_graphs(model.graph):
        names = [i.name for i in g.input] + [t.name for t in g.initializer] + [o for n in g.node for o in n.output if o]
        inits = {t.name for t in g.initializer}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        for i in g.input:  # old IR: an initializer also listed as an input is one definition
            if i.name in inits:
                counts[i.name] -= 1
    return counts


def weights_as_inputs(model: onnx.ModelProto, weights: Sequence[graph.Weight]) -> onnx.ModelProto:
    """A copy of `model` where each weight (found by name) is a main-graph input instead of a constant."""
    m = graph.copy_model(model)
    names = {w.name: w for w in weights}
    main_inputs = {i.name for i in m.graph.input}
    for _, g in graph.iter_graphs(m.graph):
        keep = [t for t in g.initializer if t.name not in names]
        if len(keep) != len(g.initializer):
            g.ClearField("initializer")
            g.initializer.extend(keep)
        nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output and n.output[0] in names)]
        if len(nodes) != len(g.node):
            g.ClearField("node")
            g.node.extend(nodes)
    for name, w in names.items():
        if name in main_inputs:
            continue  # old IR: the initializer was already declared as an input
        m.graph.input.append(onnx.helper.make_tensor_value_info(name, w.proto.data_type, list(w.shape)))
    return m


def unique_names(selected: Sequence[graph.Weight], skipped: list) -> list[graph.Weight]:
    """Drop (into `skipped`) tensors whose name several selected tensors share: curves and
    ratios are keyed by name.  Rare (one name defined in two subgraphs)."""
    from .prune import Skipped

    counts: dict[str, int] = {}
    for w in selected:
        counts[w.name] = counts.get(w.name, 0) + 1
    for w in selected:
        if counts[w.name] > 1:
            skipped.append(Skipped(w.name, w.role, w.size, "name defined more than once in the model"))
    return [w for w in selected if counts[w.name] == 1]


def _feedable(model: onnx.ModelProto, weights: Sequence[graph.Weight]) -> list[graph.Weight]:
    counts = _all_value_names(model)
    return [w for w in weights if counts.get(w.name, 0) == 1]


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
    evaluator: Evaluator | None = None,
    progress: Callable[[int, int], None] | None = None,
    compensate: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Per-tensor pruning curves: each prunable tensor pruned alone at each ratio, measured with ORT.

    Returns ``{"metric", "baseline", "ratios", "tensors": [{"name", "role", "params",
    "sparsity_before", "curve": [{"ratio", "accuracy", "top1_agreement", "snr_db", "drop",
    "rel_noise"}]}], "skipped", "strategy", "sessions", "runs"}``.  ``drop`` is in points
    (see ``Evaluator``); ``rel_noise`` is ||out - ref||^2 / ||ref||^2 of the first output.
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
    if evaluator is None:
        evaluator = Evaluator(model, data, batch_size)
    runs_before = evaluator.runs
    sessions = 0
    originals = {w.name: w.array() for w in selected}
    feedable = {w.name for w in _feedable(model, selected)} if strategy != "rebuild" else set()
    curves: dict[str, list[dict]] = {w.name: [] for w in selected}

    done = 0

    def probe(w: graph.Weight, run) -> None:
        nonlocal done
        values = originals[w.name]
        for r in ratios:
            pruned = np.where(layer_magnitude_mask(values, r), np.zeros((), values.dtype), values)
            if compensate is not None:
                pruned = compensate(w.name, pruned)
            metrics = run(pruned)
            curves[w.name].append({"ratio": r, **metrics})
        done += 1
        if progress is not None:
            progress(done, len(selected))

    if strategy == "one-session" and feedable:
        fed = [w for w in selected if w.name in feedable]
        session = make_session(weights_as_inputs(model, fed))
        sessions += 1
        base_feed = {w.name: originals[w.name] for w in fed}
        for w in fed:
            probe(w, lambda pruned, w=w: evaluator.measure_session(session, {**base_feed, w.name: pruned}))
    else:
        for w in selected:
            if w.name not in feedable:
                continue
            session = make_session(weights_as_inputs(model, [w]))
            sessions += 1
            probe(w, lambda pruned, w=w, session=session: evaluator.measure_session(session, {w.name: pruned}))
    for w in selected:
        if w.name in feedable:
            continue

        def rebuild(pruned, w=w):
            # A rebuilt model per ratio (strategy "rebuild", or a name defined twice in the
            # model, which cannot be fed): the tensor is found by where it lives.
            m = graph.copy_model(model)
            {weight_key(x): x for x in graph.weights(m)}[weight_key(w)].set_array(pruned)
            return evaluator.measure_model(m)

        probe(w, rebuild)
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
        "metric": evaluator.mode,
        "samples": data.size,
        "baseline": evaluator.baseline,
        "ratios": list(ratios),
        "tensors": tensors,
        "skipped": [s.as_dict() for s in skipped],
        "strategy": strategy,
        "sessions": sessions,
        "runs": evaluator.runs - runs_before,
    }


# --------------------------------------------------------------------------- budget search


class VariantRunner:
    """Measures the model with the selected tensors layer-pruned to given ratios (``measure``)
    or replaced by any arrays (``measure_arrays``, the share search), fast.

    One ORT session where every selected tensor is an input (no model copy, no session build
    per candidate); the pruned arrays are cached per (tensor, zero count), so a candidate that
    changes one tensor prunes only that one.  When some tensor cannot be fed (a name defined
    twice), each candidate is built as a real model instead.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        evaluator: Evaluator,
        selected: Sequence[graph.Weight],
        compensate: Callable[[str, np.ndarray], np.ndarray] | None = None,
    ):
        from .prune import target_zeros

        self._target = target_zeros
        self.compensate = compensate  # applied to every pruned array (see sensitivity())
        self.model = model
        self.evaluator = evaluator
        self.selected = list(selected)
        self.originals = {w.name: w.array() for w in self.selected}
        self.cache: dict[tuple[str, int], np.ndarray] = {}
        feedable = _feedable(model, self.selected)
        self.session = (
            make_session(weights_as_inputs(model, self.selected)) if len(feedable) == len(self.selected) else None
        )

    def pruned(self, name: str, ratio: float) -> np.ndarray:
        values = self.originals[name]
        k = self._target(ratio, values.size)
        key = (name, k)
        if key not in self.cache:
            if k == 0:
                self.cache[key] = values
            else:
                pruned = np.where(layer_magnitude_mask(values, ratio), np.zeros((), values.dtype), values)
                self.cache[key] = self.compensate(name, pruned) if self.compensate is not None else pruned
        return self.cache[key]

    def measure(self, ratios: dict[str, float]) -> dict:
        if self.session is None:
            # Only the tensors pruned at all are set in the rebuilt model.
            return self.measure_arrays(
                {
                    w.name: self.pruned(w.name, ratios.get(w.name, 0.0))
                    for w in self.selected
                    if self._target(ratios.get(w.name, 0.0), w.size)
                }
            )
        feed = {w.name: self.pruned(w.name, ratios.get(w.name, 0.0)) for w in self.selected}
        # Keep the cache to the arrays of this candidate and its neighbours (bounded memory).
        if len(self.cache) > 4 * len(self.selected):
            keep = {(n, self._target(ratios.get(n, 0.0), self.originals[n].size)) for n in self.originals}
            self.cache = {k: v for k, v in self.cache.items() if k in keep}
        return self.measure_arrays(feed)

    def measure_arrays(self, arrays: dict[str, np.ndarray]) -> dict:
        """The model with the selected tensors named in `arrays` replaced by those values (the
        others as they are): fed to the one session, or set in a rebuilt model."""
        if self.session is None:
            candidate = graph.copy_model(self.model)
            weights = {weight_key(x): x for x in graph.weights(candidate)}
            for w in self.selected:
                if w.name in arrays:
                    weights[weight_key(w)].set_array(arrays[w.name])
            return self.evaluator.measure_model(candidate)
        return self.evaluator.measure_session(
            self.session, {w.name: arrays.get(w.name, self.originals[w.name]) for w in self.selected}
        )

    def global_zero_counts(self, sparsity: float) -> dict[str, int]:
        """Per-tensor zeros of a global magnitude cut at `sparsity` over the selected tensors."""
        from .prune import CutApplier, find_cut, magnitudes, target_zeros

        total = sum(v.size for v in self.originals.values())
        buffer = np.empty(total, dtype=np.float32)
        offset = 0
        for w in self.selected:
            magnitudes(self.originals[w.name], out=buffer[offset : offset + w.size])
            offset += w.size
        applier = CutApplier(find_cut(buffer, target_zeros(sparsity, total)))
        del buffer
        counts = {}
        for w in self.selected:
            values = self.originals[w.name]
            counts[w.name] = int(np.count_nonzero(applier.mask(magnitudes(values)) | (values.reshape(-1) == 0)))
        return counts

    def close(self) -> None:
        self.cache.clear()
        self.session = None
