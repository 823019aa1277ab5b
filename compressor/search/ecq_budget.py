"""share_by_rate: per tensor, k-means or a uniform grid (ECUQ), chosen on estimated packed bytes.

``share_budget`` picks k-means widths and counts savings in nominal bits; what the container
pays is the coded stream.  This search gives every shareable tensor a list of candidates —
k-means at each width of ``share_budget.BITS`` and, for ``method`` "uniform" or "auto", a
uniform grid at each step of ``ecq.step_ladder`` with rate-distortion rounding
(``ecq.uniform_quantize``) — and scores each on two numbers measured without running the
model:

* rate: the bytes ``codec.rans`` estimates for the candidate's symbols (zeros included, in
  storage order, with its previous-symbol context model: what pack's dict-rans coder spends);
* error: the layer's relative output error tr(ΔWᵀCΔW) / tr(WᵀCW) from the input covariance
  C captured in one run (``layer_error``), or the weight-space proxy.

The rounding is data-aware: each weight's squared error is weighted by the variance of the
input it multiplies (diag C, normalised to mean 1 over the inputs that vary), so weights on
inputs that never vary (an MNIST border pixel) go to the cheapest level, zero.  An input that
is constant but not zero (that pixel after a normalising Sub/Div in the graph) adds a constant
to the output: its weights are packed as zeros and their part goes into the layer's bias
(``fold_into_biases``), and the search measures the candidate with them as they were, which
gives the same outputs on the calibration inputs.

A tensor above ``SAMPLE_ABOVE`` values without a layer covariance gets both numbers from a fixed
sample of its values (``sampled_curve``): the candidates are not made on the whole tensor
until a measurement asks for one.

A tensor's candidates are cut to their Pareto front (fewer bytes, larger error), and the
allocation is ``share_budget``'s: a knapsack over the fronts (saving = bytes below the
tensor's costliest candidate), an allowance searched on whole-model runs (at most
`max_evals`), then single-tensor steps along the fronts (``refine``).  The best allocation
within the budget is rebuilt with ``passes.share.share`` (``bits_by_name`` and
``steps_by_name``), which reproduces the measured arrays exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from .. import graph
from ..codec import rans
from ..data import Dataset
from ..ecq import RD_FACTOR, step_ladder, uniform_quantize, uniform_values
from ..ecq_sorted import ValueBuckets, value_buckets
from ..errors import CompressorError
from ..kmeans import share_array
from ..kmeans_memo import SharedMemo
from ..measure import Judge, Trials, VariantRunner, search_allowance
from ..passes.bias_correction import correct_biases
from ..passes.layers import Layer
from ..passes.row_use import RowUse
from ..passes.selection import DEFAULT_MIN_PARAMS
from ..passes.share import share, shareable_weights, tensor_rng
from ..variants import with_arrays
from .candidates import LazyArrays, decoded, kmeans_code, uniform_code
from .layer_error import WEIGHT, capture_layers, curve_method, variant_errors
from .layer_gains import DEFAULT_RUNS as GAIN_RUNS
from .layer_gains import runner_gains, weigh
from .prune_budget import allocate_ratios
from .share_budget import ALLOWANCE_STEP, BITS, MAX_SEARCH_RUNS, REFINE_RUNS, RESOLUTION

METHODS = ("kmeans", "uniform", "auto")
# Steps tried per tensor: RMS of its non-zero values x 2^(-e/2), coarsest (e = -3) to finest, a
# quarter octave apart: at coarse steps one octave changes a layer's bytes by half.
STEP_EXPONENTS = tuple(e / 2 for e in range(-6, 17))
# The allowance search starts at the summed errors of every tensor's candidate at this
# fraction of its front (0: the costliest, 1: the cheapest).
START_POSITION = 0.5
# Weights on inputs constant on the calibration data go into the layer's bias (uniform grids).
FOLD_CONSTANTS = True
# Elements of the candidates whose layer errors are computed together (float64 stacks).
ERROR_GROUP_ELEMENTS = 1 << 21
# A tensor without a layer covariance and larger than this has its candidates' bytes and errors
# estimated on a fixed sample of its values (SAMPLE_BLOCKS evenly spaced runs in storage order,
# SAMPLE_VALUES in all: the coder's previous-symbol contexts stay whole); a candidate of the
# front is made on the whole tensor when a measurement needs it (``sampled_curve``).
SAMPLE_ABOVE = 1 << 21
SAMPLE_VALUES = 1 << 20
SAMPLE_BLOCKS = 64


def per_weight(layer: Layer, per_input: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A value per input of the layer, as an array of the weight tensor's shape."""
    d_out = int(np.prod(shape)) // layer.d_in
    m = np.broadcast_to(np.asarray(per_input)[:, None], (layer.d_in, d_out))  # the d_in x d_out view
    if layer.kind == "conv":
        return np.ascontiguousarray(m.T).reshape(shape)
    return np.ascontiguousarray(m.T if layer.transpose_w else m).reshape(shape)


def importance_of(layer: Layer | None, shape: tuple[int, ...], fold: bool = False) -> np.ndarray | None:
    """Per-weight error weights in the tensor's own shape: the second moment of the input each
    weight multiplies, over its mean on the inputs that vary; None without a layer.  `fold`: the
    constant inputs weigh 0 too (their weights go into the bias, ``constant_mask``).  None for a
    Gather table: lookup counts would send the rows calibration rarely or never reads to the
    cheapest level, and test inputs read them."""
    if layer is None or isinstance(layer, RowUse) or layer.rows == 0:
        return None
    diag = np.clip(np.diag(layer.C), 0.0, None)
    varying = diag[diag > 0]
    if varying.size == 0:
        return None
    per_input = diag / float(varying.mean())
    if fold:
        per_input = np.where(layer.constant_inputs(), 0.0, per_input)
    return per_weight(layer, per_input, shape)


def constant_mask(layer: Layer | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The weights on inputs that are constant but not zero on the calibration data (their output
    is a constant: the bias can take it, and the weights become zeros), or None when there are none."""
    if layer is None or isinstance(layer, RowUse) or layer.rows == 0:
        return None
    const = layer.constant_inputs() & (np.abs(layer.total) > 0)
    return per_weight(layer, const, shape) if const.any() else None


def estimated_bytes(levels: np.ndarray) -> int:
    """What dict-rans would spend on these symbols (any integers), codebook not included."""
    flat = np.asarray(levels).ravel()
    if flat.size == 0:
        return 0
    if flat.dtype.kind not in "iu":
        flat = flat.astype(np.int64)
    low, high = int(flat.min()), int(flat.max())
    if high - low >= 1 << 16:  # a wide range: int64 throughout
        shifted = flat.astype(np.int64) - low
    else:  # levels and labels span a few hundred values: narrow integers, less memory traffic
        shifted = np.subtract(flat, low, dtype=np.int32, casting="unsafe")
    used = np.bincount(shifted) > 0  # small integers: a table, not a sort
    if used.all():
        symbols = shifted.astype(np.uint16) if used.size <= 1 << 16 else shifted
    else:
        index = np.cumsum(used) - 1
        symbols = index.astype(np.uint16)[shifted] if used.size <= 1 << 16 else index[shifted]
    return int(rans.estimated_size(symbols, int(used.sum())))


def pareto(options: list[dict]) -> list[dict]:
    """The options no other beats on both bytes and error, costliest first (ties: the first)."""
    ordered = sorted(range(len(options)), key=lambda i: (options[i]["bytes"], options[i]["error"], i))
    front, best_error = [], np.inf
    for i in ordered:
        if options[i]["error"] < best_error:
            front.append(options[i])
            best_error = options[i]["error"]
    return front[::-1]


def rate_curves(
    originals: dict[str, np.ndarray],
    layers: dict,
    reasons: dict[str, str],
    method: str = "auto",
    rd_factor: float = RD_FACTOR,
    init: str = "linear",
    seed: int = 0,
    progress=None,
    fold_constants: bool = False,
    folds: dict[str, np.ndarray] | None = None,
    memo: SharedMemo | None = None,
) -> tuple[list[dict], Mapping[tuple[str, int], np.ndarray], Mapping[str, np.ndarray]]:
    """Per tensor ``{"name", "options": [{"method", "bits" | "step", "bytes", "error"}], "front",
    "method", "reason"}`` (``front``: indices into options, costliest first), the candidate
    arrays by (name, option index) (the front's only, decoded from their codes on access), and
    the uniform rounding's importance by name (made on access).

    `fold_constants`: the weights on constant non-zero inputs of a uniform candidate are
    packed as zeros and measured as they are (the caller folds them into the bias); their
    masks go into `folds` by name.  `memo`: the whole-tensor k-means of a sampled tensor's
    candidates go through it (``share``'s calls with the same memo find them)."""
    folds = {} if folds is None else folds
    if method not in METHODS:
        raise CompressorError(f"share method must be one of {', '.join(METHODS)}, got {method!r}")
    curves, arrays, importance = [], LazyArrays(), LazyArrays()
    last = LastMade()
    for n, (name, values) in enumerate(originals.items()):
        layer = layers.get(name)
        if layer is None and values.size > SAMPLE_ABOVE:
            curve, makers = sampled_curve(name, values, method, rd_factor, init, seed, memo)
            curve["reason"] = reasons.get(name, "no layer")
            for index, make in makers.items():
                arrays.add((name, index), last.wrap(name, index, make))
            curves.append(curve)
            if progress is not None:
                progress(n + 1, len(originals))
            continue
        options, codes = [], []
        steps = step_ladder(values, STEP_EXPONENTS) if method in ("uniform", "auto") else []
        # an all-zero tensor has no grid: k-means (which leaves it as it is) is its one candidate
        widths = BITS if method in ("kmeans", "auto") else () if steps else BITS[:1]
        supports: dict = {}  # the tensor's sorted values (or histogram), made once for every width
        for bits in widths:
            shared = share_array(values, 2**bits, init=init, seed=tensor_rng(seed, name), supports=supports)
            options.append({"method": "kmeans", "bits": bits, "bytes": estimated_bytes(shared.labels)})
            codes.append(kmeans_code(shared))
            del shared
        del supports
        if steps:
            fold = constant_mask(layer, values.shape) if fold_constants else None
            weights = importance_of(layer, values.shape, fold=fold is not None)
            if weights is not None:
                importance.add(
                    name, lambda layer=layer, shape=values.shape, f=fold is not None: importance_of(layer, shape, f)
                )
            if fold is not None:
                folds[name] = fold
            for step in steps:
                uniform = uniform_quantize(values, step, rd_factor, importance=weights)
                # packed: zeros where folded (the bias takes their part); measured: the original
                # weights there, which give the same outputs on the calibration inputs
                levels = uniform.levels if fold is None else np.where(fold, 0, uniform.levels)
                options.append({"method": "uniform", "step": step, "bytes": estimated_bytes(levels)})
                codes.append(uniform_code(uniform.levels, uniform.step, values.dtype, fold))
                del uniform, levels
            del weights
        # the error stacks in groups: each candidate of a large layer is d_in x d_out floats
        group = max(1, ERROR_GROUP_ELEMENTS // max(values.size, 1))
        for s in range(0, len(codes), group):
            errors = variant_errors(values, [decoded(values, c) for c in codes[s : s + group]], layer)
            for option, e in zip(options[s : s + group], errors):
                option["error"] = float(max(e, 0.0))
        front = pareto([dict(o, index=i) for i, o in enumerate(options) if np.isfinite(o["error"])])
        # only a candidate on the front is ever measured
        for o in front:
            arrays.add((name, o["index"]), lambda v=values, c=codes[o["index"]]: decoded(v, c))
        del codes
        curves.append(
            {
                "name": name,
                "options": options,
                "front": [o["index"] for o in front],
                "method": curve_method(layer),
                "reason": None if layer is not None else reasons.get(name, "no layer"),
            }
        )
        if progress is not None:
            progress(n + 1, len(originals))
    return curves, arrays, importance


class LastMade:
    """Each tensor's most recently made candidate array: the next measurement reuses it when
    that tensor's candidate did not change (at most one array per tensor is kept)."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, np.ndarray]] = {}

    def wrap(self, name: str, index: int, make: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        def made() -> np.ndarray:
            hit = self.last.get(name)
            if hit is not None and hit[0] == index:
                return hit[1]
            self.last.pop(name, None)  # freed before the next one is made
            array = make()
            self.last[name] = (index, array)
            return array

        return made


def value_sample(values: np.ndarray, size: int | None = None, blocks: int | None = None) -> np.ndarray:
    """`size` (default SAMPLE_VALUES) of the tensor's values (flat, storage order): `blocks`
    (default SAMPLE_BLOCKS) evenly spaced runs."""
    size = SAMPLE_VALUES if size is None else size
    blocks = SAMPLE_BLOCKS if blocks is None else blocks
    flat = np.asarray(values).reshape(-1)
    if flat.size <= size:
        return flat.copy()
    run = max(1, size // blocks)
    starts = (np.arange(blocks, dtype=np.int64) * (flat.size - run)) // max(blocks - 1, 1)
    return np.concatenate([flat[s : s + run] for s in starts])


def sampled_curve(
    name: str,
    values: np.ndarray,
    method: str,
    rd_factor: float,
    init: str,
    seed: int,
    memo: SharedMemo | None = None,
) -> tuple[dict, dict[int, Callable[[], np.ndarray]]]:
    """A large tensor's curve (as ``rate_curves``'), its candidates' bytes and weight errors
    estimated on ``value_sample``: the same k-means widths and uniform steps, clustered and
    rounded on the sample (bytes scaled to the tensor); and the makers of its front's arrays,
    each made on the whole tensor (``share``'s own calls, so what is measured is what share
    gives)."""
    sample = value_sample(values)
    scale = values.size / max(sample.size, 1)
    steps = step_ladder(values, STEP_EXPONENTS) if method in ("uniform", "auto") else []
    widths = BITS if method in ("kmeans", "auto") else () if steps else BITS[:1]
    options, makers_by_option = [], []
    supports: dict = {}
    for bits in widths:
        shared = share_array(sample, 2**bits, init=init, seed=tensor_rng(seed, name), supports=supports)
        error = variant_errors(sample, [shared.values], None)[0]
        options.append(
            {
                "method": "kmeans",
                "bits": bits,
                "bytes": int(round(estimated_bytes(shared.labels) * scale)),
                "error": error,
            }
        )
        makers_by_option.append(lambda bits=bits: _whole_kmeans(name, values, bits, init, seed, memo))
    del supports
    buckets = value_buckets(sample) if steps else None  # made once for every step
    made: dict[str, ValueBuckets] = {}

    def whole_buckets() -> ValueBuckets:
        # the whole tensor's, made at its first measured uniform candidate and kept for the next
        if "whole" not in made:
            made["whole"] = value_buckets(values.reshape(-1))
        return made["whole"]

    for step in steps:
        uniform = uniform_quantize(sample, step, rd_factor, buckets=buckets)
        error = variant_errors(sample, [uniform.values], None)[0]
        options.append(
            {
                "method": "uniform",
                "step": step,
                "bytes": int(round(estimated_bytes(uniform.levels) * scale)),
                "error": error,
            }
        )
        makers_by_option.append(lambda step=step: uniform_values(values, step, rd_factor, whole_buckets()))
    for o in options:
        o["error"] = float(max(o["error"], 0.0)) if np.isfinite(o["error"]) else float(o["error"])
    front = pareto([dict(o, index=i) for i, o in enumerate(options) if np.isfinite(o["error"])])
    curve = {
        "name": name,
        "options": options,
        "front": [o["index"] for o in front],
        "method": WEIGHT,
        "reason": None,
        "sampled": int(sample.size),
    }
    return curve, {o["index"]: makers_by_option[o["index"]] for o in front}


def _whole_kmeans(name: str, values: np.ndarray, bits: int, init: str, seed: int, memo: SharedMemo | None):
    """The tensor's k-means candidate array, made as ``share`` makes it (through `memo` as share's)."""

    def make():
        return share_array(values, 2**bits, init=init, seed=tensor_rng(seed, name))

    return (make() if memo is None else memo.shared(name, values, (2**bits, init, int(seed)), make)).values


def knapsack_of(curves: list[dict]) -> list[dict]:
    """The fronts as ``allocate_ratios`` takes them: params = the costliest candidate's bits,
    ratio = the share of them saved, drop = the error added to the costliest candidate's."""
    out = []
    for c in curves:
        front = [c["options"][i] for i in c["front"]]
        top = max(front[0]["bytes"], 1) if front else 1
        out.append(
            {
                "name": c["name"],
                "params": 8 * top,
                "choices": list(c["front"]),
                "ratios": [1 - o["bytes"] / top for o in front],
                "drops": [max(o["error"] - front[0]["error"], 0.0) for o in front],
            }
        )
    return out


def allocated(knapsack: list[dict], allowance: float) -> dict[str, int]:
    """Each tensor's option index for `allowance`: the allocation's ratio snapped down to its front."""
    ratios = allocate_ratios(knapsack, allowance)
    out = {}
    for k in knapsack:
        wanted = ratios.get(k["name"], 0.0)
        position = max((j for j, r in enumerate(k["ratios"]) if r <= wanted + 1e-12), default=0)
        out[k["name"]] = k["choices"][position] if k["choices"] else 0
    return out


def refine(knapsack: list[dict], tried: list[dict], measure, saved) -> None:
    """From the best allocation within the budget in `tried`, one tensor one step further along
    its front, the least error per saved byte first, while `measure(choice, record)` has runs
    left; a tensor whose step does not fit is not stepped again."""
    fronts = {k["name"]: k for k in knapsack}
    blocked: set[str] = set()
    while True:
        feasible = [t for t in tried if t["within_budget"]]
        if not feasible:
            return
        best = max(feasible, key=lambda t: t["saved_bytes"])
        steps = []
        for name, index in best["choice"].items():
            k = fronts[name]
            if name in blocked or index not in k["choices"]:
                continue
            j = k["choices"].index(index)
            if j + 1 >= len(k["choices"]):
                continue
            gain = k["params"] * (k["ratios"][j + 1] - k["ratios"][j])
            if gain > 0:
                steps.append((max(k["drops"][j + 1] - k["drops"][j], 0.0) / gain, name))
        if not steps:
            return
        _, name = min(steps)
        k = fronts[name]
        candidate = {**best["choice"], name: k["choices"][k["choices"].index(best["choice"][name]) + 1]}

        def record(metrics: dict, candidate=candidate) -> None:
            tried.append(_trial(None, candidate, saved(candidate), metrics))

        ok = measure(candidate, record)
        if ok is None:
            return
        if not ok:
            blocked.add(name)


def fold_into_biases(
    model: onnx.ModelProto, originals: dict[str, np.ndarray], masks: dict[str, np.ndarray], calib: Dataset
) -> tuple[onnx.ModelProto, dict]:
    """`model` with the weights under `masks` zeroed and their constant contribution (the input's
    mean there) taken by the layer's bias (``bias_correction.correct_biases`` of exactly that
    change, on `calib`).  A tensor whose bias cannot take it keeps its original weights there
    (as the search measured it).  Returns (model, stats)."""
    weights = [w for w in graph.weights(model) if w.name in masks]
    current = {w.name: w.array() for w in weights}
    kept = {n: np.where(m, originals[n].astype(current[n].dtype), current[n]) for n, m in masks.items()}
    zeroed = {n: np.where(m, 0, current[n]).astype(current[n].dtype) for n, m in masks.items()}
    before = with_arrays(model, weights, kept)
    after = with_arrays(model, weights, zeroed)
    corrected, stats = correct_biases(before, after, calib, sorted(masks))
    done = {c["name"] for c in stats.get("corrected", [])} if stats.get("kept", True) else set()
    if not done:
        return before, {"folded": [], "skipped": stats.get("skipped", [])}
    back = {n: kept[n] for n in masks if n not in done}
    if back:
        corrected = with_arrays(corrected, [w for w in graph.weights(corrected) if w.name in back], back)
    folded = [{"name": n, "weights": int(np.count_nonzero(masks[n] & (kept[n] != 0)))} for n in sorted(done)]
    return corrected, {"folded": folded, "skipped": stats.get("skipped", [])}


@dataclass(frozen=True)
class SearchState:
    """What a finished search knows: its fronts (``knapsack_of``, weighed by the gains when
    measured), the allowance it accepted (None: none fit), the allocation it built, and
    `build(choice)`, which builds any allocation of the fronts as the search built its own."""

    knapsack: list[dict]
    accepted: float | None
    choice: dict[str, int]
    build: Callable[[dict[str, int]], tuple[onnx.ModelProto, dict]]


def backed_off(state: SearchState, factor: float) -> dict[str, int] | None:
    """The allocation at the search's accepted allowance / `factor` (a gentler one along the same
    fronts), or None when there is none or it is the one built."""
    if state.accepted is None or state.accepted <= 0 or factor <= 1:
        return None
    choice = allocated(state.knapsack, state.accepted / factor)
    return None if choice == state.choice else choice


def _trial(allowance, choice: dict[str, int], saved_bytes: int, metrics: dict) -> dict:
    return {
        "allowance": allowance,
        "choice": dict(choice),
        "saved_bytes": saved_bytes,
        "drop": metrics["drop"],
        "snr_db": metrics.get("snr_db"),
        "within_budget": metrics["within_budget"],
    }


def share_by_rate(
    model: onnx.ModelProto,
    data: Dataset,
    budget_points: float,
    *,
    method: str = "auto",
    rd_factor: float = RD_FACTOR,
    min_snr_db: float | None = None,
    init: str = "linear",
    seed: int = 0,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    max_evals: int = MAX_SEARCH_RUNS,
    progress=None,
    reference_outputs: list[np.ndarray] | None = None,
    bias_data: Dataset | None = None,
    bias_judge=None,
    judge: Judge | None = None,
    calib: Dataset | None = None,
    fold_constants: bool = FOLD_CONSTANTS,
    gain_runs: int = GAIN_RUNS,
    captured_layers: dict | None = None,
    memo: SharedMemo | None = None,
    keep_layers: Callable[[dict], None] | None = None,
    keep_search: Callable[[SearchState], None] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Per tensor a k-means width or a uniform step within `budget_points` of `model` on `data`,
    fewest estimated packed bytes; returns (model, stats).  Arguments as ``share_to_budget``'s,
    plus `method` ("kmeans", "uniform" or "auto": both kinds of candidate), `rd_factor`,
    `fold_constants` (``fold_into_biases``), `gain_runs`, `captured_layers`, `keep_layers` and `memo`
    (``share``'s); `keep_search` is handed the search's ``SearchState`` (allocations at other
    allowances built without another search: ``backed_off``)."""
    selected = shareable_weights(model, exclude, min_params)
    if not selected:
        raise CompressorError("no tensor to share")
    if judge is None:
        judge = Judge.of_model(model, data, reference=reference_outputs)
    runs_before = judge.runs
    runner = VariantRunner(model, judge, selected)
    originals = runner.originals
    n_options = len(BITS) + len(STEP_EXPONENTS)
    layers, reasons, captures = capture_layers(
        model, selected, calib or data, n_options, tables=True, shared=captured_layers
    )
    if keep_layers is not None:
        keep_layers(layers)
    folds: dict[str, np.ndarray] = {}
    curves, arrays, importance = rate_curves(
        originals, layers, reasons, method, rd_factor, init, seed, progress, fold_constants, folds, memo
    )
    for c, w in zip(curves, selected):
        c["role"] = w.role
    knapsack = knapsack_of(curves)
    gains = None
    if gain_runs > 0:
        # only a candidate on the front has an array: the others are no probe
        errors = {
            c["name"]: [o["error"] if i in c["front"] else None for i, o in enumerate(c["options"])] for c in curves
        }
        gains = runner_gains(runner, errors, lambda n, i: arrays[(n, i)], gain_runs)
        knapsack = weigh(knapsack, gains["gains"])
    top = {k["name"]: k["params"] // 8 for k in knapsack}
    options = {c["name"]: c["options"] for c in curves}

    def saved(choice: dict[str, int]) -> int:
        return sum(top[n] - options[n][i]["bytes"] for n, i in choice.items())

    trials = Trials(lambda metrics: judge.fits(metrics, budget_points, min_snr_db), max(1, int(max_evals)))
    tried: list[dict] = []

    def measure(choice: dict[str, int], record) -> bool | None:
        key = tuple(choice[w.name] for w in selected)
        measured = trials.measure(
            key, lambda: runner.measure_arrays({n: arrays[(n, i)] for n, i in choice.items()}), record
        )
        return None if measured is None else measured["within_budget"]

    def fits(allowance: float) -> bool | None:
        choice = allocated(knapsack, allowance)
        return measure(choice, lambda metrics: tried.append(_trial(allowance, choice, saved(choice), metrics)))

    total = sum(max(k["drops"], default=0.0) for k in knapsack)
    positive = [d for k in knapsack for d in k["drops"] if d > 0]
    smallest = min(positive, default=0.0)
    start = sum(k["drops"][int(START_POSITION * (len(k["drops"]) - 1))] for k in knapsack if k["drops"])
    start = min(max(start, smallest), total)
    search_keys: set[tuple] = set()

    def searched(allowance: float) -> bool | None:
        search_keys.add(tuple(allocated(knapsack, allowance)[w.name] for w in selected))
        return fits(allowance)

    floor_key = None
    if positive and judge.mode == "fidelity" and searched(start) is False:
        # The start overshoots: the floor (allowance 0, every tensor at its most precise option,
        # the closest to the original) next, one run more than the plan.  When even it overshoots
        # nothing fits and the search ends; when it fits, the search goes on exactly as without
        # it.  Not with labels: accuracy on a few samples is not monotone in the allowance (the
        # floor can lose more than a coarser candidate).
        floor_key = tuple(allocated(knapsack, 0.0)[w.name] for w in selected)
        trials.max_evals += 1
        if fits(0.0) is False:
            accepted, rejected = None, 0.0
            trials.max_evals = len(trials.seen)  # nothing left to refine
    if trials.max_evals > len(trials.seen) or floor_key is None:
        accepted, rejected = search_allowance(
            searched,
            start,
            grow=lambda a: None if a >= total or total == 0 else min(a * ALLOWANCE_STEP, total),
            shrink=lambda a: None if not positive else 0.0 if a <= smallest else max(a / ALLOWANCE_STEP, smallest / 2),
            geometric=True,
            resolution=RESOLUTION,
            max_steps=max(1, int(max_evals) - REFINE_RUNS),
        )
        if floor_key is not None and floor_key in search_keys:
            trials.max_evals -= 1  # the search reached the floor itself: no run more than the plan
    refine(knapsack, tried, measure, saved)
    # The originals' arrays (a copy of every selected weight) are let go before the result is
    # built and measured; the fold reads the few it needs from the model again.
    runner.close()
    del originals
    feasible = [t for t in tried if t["within_budget"]]
    if not feasible:
        raise CompressorError(f"no per-tensor share setting fits {budget_points:g} points (tried {len(tried)})")
    best = max(feasible, key=lambda t: t["saved_bytes"])
    arrays.clear()

    def build(choice: dict[str, int]) -> tuple[onnx.ModelProto, dict]:
        chosen = {n: options[n][i] for n, i in choice.items()}
        bits_by_name = {n: o["bits"] for n, o in chosen.items() if o["method"] == "kmeans"}
        steps_by_name = {n: o["step"] for n, o in chosen.items() if o["method"] == "uniform"}
        shared, stats = share(
            model,
            bits_by_name=bits_by_name,
            steps_by_name=steps_by_name,
            rd_factor=rd_factor,
            importance_by_name={n: importance[n] for n in steps_by_name if n in importance},
            init=init,
            seed=seed,
            exclude=exclude,
            min_params=min_params,
            bias_data=bias_data,
            bias_judge=bias_judge,
            memo=memo,
        )
        folded = {n: folds[n] for n in steps_by_name if n in folds}
        if folded:
            inputs = {w.name: w.array() for w in selected if w.name in folded}
            shared, stats["constant_inputs_folded"] = fold_into_biases(shared, inputs, folded, calib or data)
        return shared, stats

    shared, stats = build(best["choice"])
    chosen = {n: options[n][i] for n, i in best["choice"].items()}
    if keep_search is not None:
        keep_search(SearchState(knapsack, accepted, dict(best["choice"]), build))
    stats["budget_search"] = {
        "budget_points": budget_points,
        "method": method,
        "rd_factor": rd_factor,
        "widths": list(BITS),
        "curves": curves,
        "methods": {c["name"]: c["method"] for c in curves},
        "tried": tried,
        "allowance": {"accepted": accepted, "rejected": rejected},
        "evaluations": len(trials.seen),
        "whole_model_runs": judge.runs - runs_before,
        "capture_runs": captures,
        "reused_layers": sum(layer is captured_layers.get(n) for n, layer in layers.items()) if captured_layers else 0,
        "kmeans_runs": sum(o["method"] == "kmeans" for c in curves for o in c["options"]),
        "uniform_runs": sum(o["method"] == "uniform" for c in curves for o in c["options"]),
        "chosen": {n: {k: v for k, v in o.items() if k != "index"} for n, o in chosen.items()},
        "gains": gains,
    }
    return shared, stats
