"""share_to_budget: k-means bits chosen per tensor under a measured accuracy budget.

Deep Compression gives every conv layer 8 bits and every fully-connected layer 5; layers
differ far more than that (a depthwise ResNet's pointwise filters keep their accuracy at
3 bits while its stem needs 6).  This search estimates it layer by layer and verifies it on
the whole model:

1. Curves, without running the model: each shareable tensor clustered alone at each width of
   ``BITS`` (``kmeans.share_array`` with the tensor's own seeded generator, as
   ``passes.share`` does), and the layer's relative output error of each clustering
   (``layer_error.variant_errors``: tr(ΔWᵀCΔW) / tr(WᵀCW) from the layer's input covariance
   C, captured in one run over the calibration data; the weight-space proxy for tensors
   without one, ``method`` "weight").
2. Allocation: errors of independent small perturbations add up, so the widths saving the
   most bits for a total error allowance are a knapsack over the curves
   (``prune_budget.allocate_ratios`` with ratio = 1 - bits / 8, snapped down to a width).
3. The allowance is searched geometrically on the measured drop of the whole allocation
   (the clustered tensors fed to one session); then, from the best allocation, other
   tensors' next widths one at a time, least error per saved bit first (``refine``): at most
   `max_evals` whole-model runs in all, whatever the number of tensors.  The allocation within the budget that saves the most
   bits wins, and is built with ``share(model, bits_by_name=...)``, which reproduces the
   measured arrays exactly.

Cost: one capture run, tensors x widths k-means (vectorised, no model run) and at most
`max_evals` runs over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from ..data import Dataset
from ..errors import CompressorError
from ..kmeans import share_array
from ..measure import Judge, Trials, VariantRunner, search_allowance
from ..passes.selection import DEFAULT_MIN_PARAMS
from ..passes.share import share, shareable_weights, tensor_rng
from .candidates import LazyArrays, decoded, kmeans_code
from .layer_error import capture_layers, curve_method, variant_errors
from .layer_gains import DEFAULT_RUNS as GAIN_RUNS
from .layer_gains import runner_gains, weigh
from .prune_budget import allocate_ratios

# Widths clustered, widest first; the widest is the reference every saving is counted from.
BITS = (8, 6, 5, 4, 3, 2)
# The allowance search: where it starts (the summed errors of every tensor at this width),
# the factor it grows or shrinks by until the verdict changes, the ratio at which the
# bisection stops, and how many whole-model runs it makes at most.
START_BITS = 4
ALLOWANCE_STEP = 4.0
RESOLUTION = 0.1
MAX_SEARCH_RUNS = 10
# Runs kept for the refinement: the layer errors ignore how much each layer's error grows on
# its way to the output, so the allocation's order can take the wrong tensor next; past the
# best allocation found, each other tensor's next width is measured on its own.
REFINE_RUNS = 3


def bit_curves(
    originals: dict[str, np.ndarray],
    layers: dict,
    reasons: dict[str, str],
    init: str = "linear",
    seed: int = 0,
    progress=None,
) -> tuple[list[dict], Mapping[tuple[str, int], np.ndarray]]:
    """Per tensor ``{"name", "params", "bits", "errors", "method", "reason"}``: the relative
    error of its k-means clustering at each width of ``BITS`` (its layer's output error, or the
    weight proxy), and the clustered arrays by (name, bits)."""
    curves, arrays = [], LazyArrays()
    for i, (name, values) in enumerate(originals.items()):
        supports: dict = {}  # the tensor's sorted values (or histogram), made once for every width
        codes = [
            kmeans_code(share_array(values, 2**bits, init=init, seed=tensor_rng(seed, name), supports=supports))
            for bits in BITS
        ]
        del supports
        # kept as codes (a byte or two per weight), decoded when an allocation is measured
        for bits, code in zip(BITS, codes):
            arrays.add((name, bits), lambda v=values, c=code: decoded(v, c))
        variants = [decoded(values, c) for c in codes]
        layer = layers.get(name)
        errors = variant_errors(values, variants, layer)
        del variants
        curves.append(
            {
                "name": name,
                "params": int(np.count_nonzero(values)),
                "bits": list(BITS),
                "errors": [float(e) for e in np.maximum(errors, 0.0)],
                "method": curve_method(layer),
                "reason": None if layer is not None else reasons.get(name, "no layer"),
            }
        )
        if progress is not None:
            progress(i + 1, len(originals))
    return curves, arrays


def knapsack_curves(curves: list[dict]) -> list[dict]:
    """The curves as ``allocate_ratios`` takes them: ratio 1 - bits / 8, cost the error added
    to the widest width's (non-negative; the allocation makes it monotone).  A curve ends
    before its first non-finite error (those widths are never allocated)."""
    out = []
    for c in curves:
        errors = c["errors"]
        usable = next((i for i, e in enumerate(errors) if not np.isfinite(e)), len(errors))
        base = errors[0] if usable else 0.0
        out.append(
            {
                "name": c["name"],
                "params": c["params"],
                "bits": list(c["bits"][: max(usable, 1)]),
                "ratios": [1 - b / BITS[0] for b in c["bits"][:usable]],
                "drops": [max(e - base, 0.0) for e in errors[:usable]],
            }
        )
    return out


def allocated_bits(knapsack: list[dict], allowance: float) -> dict[str, int]:
    """The widths of the allocation for `allowance`: each tensor's ratio snapped down to one of
    its widths (a fractional last segment keeps the wider one)."""
    ratios = allocate_ratios(knapsack, allowance)
    out = {}
    for c in knapsack:
        wanted = BITS[0] * (1 - ratios.get(c["name"], 0.0))
        out[c["name"]] = min((b for b in c["bits"] if b >= wanted - 1e-9), default=BITS[0])
    return out


def snapped_bits(knapsack: list[dict], wanted: dict[str, int]) -> dict[str, int]:
    """`wanted` widths (tensors it lacks: the widest) as the curves allow: each the narrowest
    usable width at least the wanted one."""
    out = {}
    for c in knapsack:
        want = wanted.get(c["name"], BITS[0])
        out[c["name"]] = min((b for b in c["bits"] if b >= want), default=max(c["bits"]))
    return out


def refine(knapsack: list[dict], tried: list[dict], measure) -> None:
    """From the best allocation within the budget in `tried`, each tensor's next narrower width
    alone, the least error per saved bit first, while `measure(bits_by_name, record)` has runs
    left (it returns None once they are spent); a tensor whose step does not fit is not
    stepped again.  `record(metrics)` appends each new measurement to `tried`."""
    curves = {c["name"]: c for c in knapsack}
    blocked: set[str] = set()
    while True:
        feasible = [t for t in tried if t["within_budget"]]
        if not feasible:
            return
        best = max(feasible, key=lambda t: t["saved_bits"])
        steps = []
        for name, bits in best["bits"].items():
            widths, drops = curves[name]["bits"], curves[name]["drops"]
            i = widths.index(bits)
            if name in blocked or i + 1 >= len(drops):
                continue
            gain = curves[name]["params"] * (bits - widths[i + 1])
            if gain > 0:
                steps.append((max(drops[i + 1] - drops[i], 0.0) / gain, name))
        if not steps:
            return
        _, name = min(steps)
        widths = curves[name]["bits"]
        candidate = {**best["bits"], name: widths[widths.index(best["bits"][name]) + 1]}
        saved = sum(curves[n]["params"] * (BITS[0] - b) for n, b in candidate.items())

        def record(metrics: dict, candidate=candidate, saved=saved) -> None:
            tried.append(
                {
                    "allowance": None,
                    "bits": dict(candidate),
                    "saved_bits": saved,
                    "drop": metrics["drop"],
                    "snr_db": metrics.get("snr_db"),
                    "within_budget": metrics["within_budget"],
                }
            )

        ok = measure(candidate, record)
        if ok is None:
            return
        if not ok:
            blocked.add(name)


def share_to_budget(
    model: onnx.ModelProto,
    data: Dataset,
    budget_points: float,
    *,
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
    seeds: Sequence[dict[str, int]] = (),
    gain_runs: int = GAIN_RUNS,
    captured_layers: dict | None = None,
    keep_layers: Callable[[dict], None] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Per-tensor k-means widths within `budget_points` of `model` on `data`; returns (model, stats).

    `calib`: the inputs whose layer covariances make the curves (default `data`).
    `reference_outputs`: the model's outputs on `data` if already computed.  `bias_data`: bias
    correction of the model built (the search measures without it, so it only gains).  Raises
    CompressorError when no allocation (not even every tensor at 8 bits) fits.  `judge`: the
    ``measure.Judge`` to measure with (default ``Judge.of_model(model, data, reference=...)``).
    `seeds`: allocations (bits by tensor name, e.g. the ladder's uniform widths) measured first,
    one run each besides `max_evals`: when the allowance search finds nothing better within
    the budget, ``refine`` steps from the best seed that fits.  `gain_runs`: whole-model runs
    that measure each layer's gain (``search.layer_gains``), by which the errors are weighted
    (0: unweighted).  `captured_layers`: layers whose input covariance an earlier stage captured
    on `calib` (``layer_error.capture_layers``'s `shared`): reused, not captured again.
    `keep_layers`: given the layers this search captured or reused (for a later rung)."""
    selected = shareable_weights(model, exclude, min_params)
    if not selected:
        raise CompressorError("no tensor to share")
    if judge is None:
        judge = Judge.of_model(model, data, reference=reference_outputs)
    runs_before = judge.runs
    runner = VariantRunner(model, judge, selected)  # one session, the tensors as inputs
    originals = runner.originals

    # 1. curves: one capture run, then k-means and matrix products only
    layers, reasons, captures = capture_layers(
        model, selected, calib or data, len(BITS), tables=True, shared=captured_layers
    )
    if keep_layers is not None:
        keep_layers(layers)
    curves, arrays = bit_curves(originals, layers, reasons, init, seed, progress)
    for c, w in zip(curves, selected):
        c["role"] = w.role
    params = {c["name"]: c["params"] for c in curves}

    # 2. + 3. allocation and the allowance search
    knapsack = knapsack_curves(curves)
    gains = None
    if gain_runs > 0:
        errors = {c["name"]: c["errors"] for c in curves}
        gains = runner_gains(runner, errors, lambda n, i: arrays[(n, BITS[i])], gain_runs)
        knapsack = weigh(knapsack, gains["gains"])

    def saved(bits_by_name: dict[str, int]) -> int:
        return sum(params[n] * (BITS[0] - b) for n, b in bits_by_name.items())

    evals = max(1, int(max_evals))
    trials = Trials(lambda metrics: judge.fits(metrics, budget_points, min_snr_db), evals + len(seeds))
    tried = []

    def fits(allowance: float) -> bool | None:
        bits_by_name = allocated_bits(knapsack, allowance)

        def record(metrics: dict) -> None:
            tried.append(
                {
                    "allowance": allowance,
                    "bits": dict(bits_by_name),
                    "saved_bits": saved(bits_by_name),
                    "drop": metrics["drop"],
                    "snr_db": metrics.get("snr_db"),
                    "within_budget": metrics["within_budget"],
                }
            )

        return measure(bits_by_name, record)

    def measure(bits_by_name: dict[str, int], record) -> bool | None:
        key = tuple(bits_by_name[w.name] for w in selected)
        measured = trials.measure(
            key, lambda: runner.measure_arrays({n: arrays[(n, b)] for n, b in bits_by_name.items()}), record
        )
        return None if measured is None else measured["within_budget"]

    total = sum(max(k["drops"], default=0.0) for k in knapsack)
    positive = [d for k in knapsack for d in k["drops"] if d > 0]
    smallest = min(positive, default=0.0)
    start_at = BITS.index(START_BITS)
    start = sum(k["drops"][min(start_at, len(k["drops"]) - 1)] for k in knapsack if k["drops"])
    for wanted in seeds:
        bits_by_name = snapped_bits(knapsack, wanted)

        def record_seed(metrics: dict, bits_by_name=bits_by_name) -> None:
            tried.append(
                {
                    "allowance": None,
                    "seed": True,
                    "bits": dict(bits_by_name),
                    "saved_bits": saved(bits_by_name),
                    "drop": metrics["drop"],
                    "snr_db": metrics.get("snr_db"),
                    "within_budget": metrics["within_budget"],
                }
            )

        measure(bits_by_name, record_seed)
    accepted, rejected = search_allowance(
        fits,
        min(max(start, smallest), total),
        # every tensor at its narrowest width already
        grow=lambda allowance: None if allowance >= total or total == 0 else min(allowance * ALLOWANCE_STEP, total),
        # even the cheapest step down does not fit: every tensor at 8 bits
        shrink=lambda allowance: (
            None if not positive else 0.0 if allowance <= smallest else max(allowance / ALLOWANCE_STEP, smallest / 2)
        ),
        geometric=True,
        resolution=RESOLUTION,
        max_steps=max(1, evals - REFINE_RUNS),
    )
    refine(knapsack, tried, measure)
    runner.close()
    feasible = [t for t in tried if t["within_budget"]]
    if not feasible:
        raise CompressorError(f"no per-tensor widths fit {budget_points:g} points (tried {len(tried)})")
    best = max(feasible, key=lambda t: t["saved_bits"])  # first found wins ties
    arrays.clear()
    shared, stats = share(
        model,
        bits_by_name=best["bits"],
        init=init,
        seed=seed,
        exclude=exclude,
        min_params=min_params,
        bias_data=bias_data,
        bias_judge=bias_judge,
    )
    stats["budget_search"] = {
        "budget_points": budget_points,
        "widths": list(BITS),
        "curves": curves,
        "methods": {c["name"]: c["method"] for c in curves},
        "tried": tried,
        "allowance": {"accepted": accepted, "rejected": rejected},
        "evaluations": len(trials.seen),
        # Whole-model runs of the search (candidates) and the covariance capture runs.
        "whole_model_runs": judge.runs - runs_before,
        "capture_runs": captures,
        "reused_layers": sum(layer is captured_layers.get(n) for n, layer in layers.items()) if captured_layers else 0,
        "kmeans_runs": len(curves) * len(BITS),
        "chosen": best["bits"],
        "gains": gains,
    }
    return shared, stats
