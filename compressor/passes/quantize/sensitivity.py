"""Mixed precision: which layers to keep in float, from a layer-local ranking and a few
whole-model runs.

* ``layer_noise``: each integer layer's relative output noise estimated without running
  anything: the quantization noise of its activations (from the calibration histograms
  ``calibrate.collect`` already keeps, against their quantization parameters) carried through
  the layer's weight, plus its weight's own quantization error, plus its output's quantization
  noise, over its output's power.
* ``layers_to_quantize``: group testing along that ranking (least noisy first: bisection for the
  boundary, blocks split where they fail), each probe one whole-model run against the float
  model's outputs (``Reference``), at most ``max_probes`` (O(log layers)) runs.
* ``Shared``: what one stage's quantize calls share on one model (ranges, reference outputs,
  probes), so every mixed-precision rung reuses the work of the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from ... import evaluate
from ... import quant_math as qm
from ...data import Dataset, fixed_batch_size
from .params import QParams
from .registry import Plan

PROBES_PER_HALVING = 3  # see max_probes
MAX_SAMPLES = 256  # calibration samples of the reference outputs (fewer when their bytes exceed the budget)


def output_snr(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    snrs = [evaluate.snr_db(r, o) for r, o in zip(reference, outputs) if r.dtype.kind == "f" and r.size]
    return min(snrs) if snrs else float("inf")


class Reference:
    """The float model's outputs on the first calibration samples (at most MAX_SAMPLES, and no
    more than evaluate.CAPTURE_BYTES of outputs), computed once for every candidate measured
    against it.  A candidate's outputs are compared batch by batch, never all held."""

    def __init__(self, float_model: onnx.ModelProto, data: Dataset):
        if fixed_batch_size(float_model) or data.size <= 1:  # the model sets the batch: as it is
            self.subset = data.take(MAX_SAMPLES)
            self.outputs = evaluate.run_model(float_model, self.subset)
        else:  # one sample first: its outputs' bytes bound how many samples are kept
            head = evaluate.run_model(float_model, data.take(1))
            n = evaluate.bounded_batch_size(sum(int(o.nbytes) for o in head), min(MAX_SAMPLES, data.size))
            self.subset = data.take(n)
            rest = evaluate.run_model(float_model, data.select(slice(1, n))) if n > 1 else [o[:0] for o in head]
            # scalar outputs (one per run, no batch axis) are left out of the comparison
            self.outputs = [np.concatenate([h, r]) if h.ndim else h for h, r in zip(head, rest)]
        self.compared = [i for i, r in enumerate(self.outputs) if r.dtype.kind == "f" and r.ndim and r.size]
        self.runs = 0  # candidate models measured

    def snr(self, model: onnx.ModelProto) -> float:
        """The lowest SNR (dB) of `model`'s float outputs against the float model's."""
        self.runs += 1
        session = evaluate.make_session(model)
        powers = {i: [0.0, 0.0] for i in self.compared}
        starts = dict.fromkeys(self.compared, 0)
        for outs in evaluate.run_batches(session, self.subset, evaluate.run_batch_size(model, self.subset)):
            for i in self.compared:
                rows = outs[i].shape[0]
                signal, noise = evaluate.snr_powers(self.outputs[i][starts[i] : starts[i] + rows], outs[i])
                powers[i][0] += signal
                powers[i][1] += noise
                starts[i] += rows
        snrs = [evaluate.snr_from_powers(s, n) for s, n in powers.values()]
        return min(snrs) if snrs else float("inf")


# ---------------------------------------------------------------- layer-local noise


def activation_noise(stats: qm.RangeCollector, p: QParams, clamped: bool = False) -> tuple[float, float]:
    """(mean square value, mean square quantization error) of a tensor quantized with `p`,
    from its calibration histogram: rounding noise (step^2 / 12, or the value's own square when
    it rounds to zero) inside the range, the clipped distance outside.  `clamped`: the input of
    a folded Relu / Clip, whose values below the range are clamped anyway (no error there)."""
    if stats.count == 0 or stats.limit == 0.0:
        return 0.0, 0.0
    qmin, qmax = qm.qrange(p.dtype)
    lo, hi = (qmin - p.zero_point) * p.scale, (qmax - p.zero_point) * p.scale
    centres = (np.arange(stats.bins) + 0.5) * (stats.limit / stats.bins)
    values = np.concatenate([centres, -centres])
    if clamped:
        values = np.maximum(values, lo)
    counts = np.concatenate([stats.pos, stats.neg]).astype(np.float64)
    clipped = np.clip(values, lo, hi)
    rounding = np.minimum(p.scale * p.scale / 12.0, values * values)
    error = np.where(values == clipped, rounding, (values - clipped) ** 2)
    return float(counts @ (values * values)) / stats.count, float(counts @ error) / stats.count


def weight_noise(array: np.ndarray, axis: int | None, weight_range: tuple[int, int], symmetric: bool):
    """(gain, relative error) of a weight: the mean over output channels of the sum of squares
    one output reads (how an input's noise power reaches the output), and
    ||W - Q(W)||^2 / ||W||^2 of its min/max quantization."""
    w = np.asarray(array, dtype=np.float32)
    power = float(np.dot(w.ravel().astype(np.float64), w.ravel()))
    if w.size == 0 or power == 0.0:
        return 0.0, 0.0
    qa = qm.quantize_array(w, axis, *weight_range, symmetric)
    err = (qa.dequantize() - w).ravel().astype(np.float64)
    channels = w.shape[axis] if axis is not None and w.ndim else max(w.shape[-1] if w.ndim else 1, 1)
    return power / channels, float(np.dot(err, err)) / power


def layer_noise(
    plans: list[Plan],
    collectors: dict[str, qm.RangeCollector],
    qparams: dict[str, QParams],
    weight_range: tuple[int, int],
    symmetric: bool,
    clamped: set[str] = frozenset(),
) -> dict[str, float]:
    """Estimated noise-to-signal ratio of each integer layer's output when it alone is quantized
    (`clamped`: tensors that feed a folded Relu / Clip, see activation_noise)."""

    def noise(name: str) -> tuple[float, float] | None:
        stats, p = collectors.get(name), qparams.get(name)
        return None if stats is None or p is None else activation_noise(stats, p, name in clamped)

    result = {}
    for plan in plans:
        if plan.kind != "integer":
            continue
        ins = [n for n in (noise(plan.node.input[i]) for i in plan.activations) if n is not None]
        outs = [n for n in (noise(plan.node.output[i]) for i in plan.outputs) if n is not None]
        gain, w_rel = 0.0, 0.0
        if plan.weights and plan.weights[0].weight is not None:
            use = plan.weights[0]
            gain, w_rel = weight_noise(use.weight.array(), use.axis, weight_range, symmetric)
        if plan.weights and ins:
            # the input's noise power reaches each output through the weights' sum of squares:
            # an input whose power sits in a few large values (read through small weights) loses
            # the others to a coarse step, which its own SNR would not show
            out_power = outs[0][0] if outs and outs[0][0] > 0 else ins[0][0] * gain
            total = ins[0][1] * gain + w_rel * out_power
        else:  # no weight: the inputs' relative noise passes through
            in_power = sum(p for p, _ in ins)
            out_power = outs[0][0] if outs and outs[0][0] > 0 else in_power
            total = sum(n / p for p, n in ins if p > 0) * out_power + w_rel * out_power
        total += sum(n for _, n in outs)
        result[plan.name] = total / out_power if out_power > 0 else (np.inf if total > 0 else 0.0)
    return result


def ranking(noise: dict[str, float]) -> list[str]:
    """Layers from the noisiest down (ties by name: deterministic)."""
    return sorted(noise, key=lambda name: (-noise[name], name))


def max_probes(layers: int) -> int:
    """Whole-model runs one mixed-precision search may make: PROBES_PER_HALVING per halving of
    the layer count (a count, never the clock)."""
    return PROBES_PER_HALVING * max(1, math.ceil(math.log2(layers + 1)))


def layers_to_quantize(
    order: list[str], snr_with_float: Callable[[frozenset[str]], float], floor: float, probes: int
) -> list[str]:
    """The layers quantized (the others stay float) so that the output SNR keeps `floor` dB.

    Group testing along `order` (least noisy first): a block is added to the quantized layers
    when the model with them reaches the floor, else it is split in two and each half tried
    in turn; a single layer that fails stays float.  With a good ranking this is a bisection
    for the boundary (O(log layers) runs); a layer the local estimate ranks too low (its noise
    grows downstream) is found in a few more.  At most `probes` runs: blocks not tried by then
    stay float.
    """
    accepted: list[str] = []
    everything = frozenset(order)
    pending = [list(order)]
    while pending and probes > 0:
        block = pending.pop()
        probes -= 1
        if snr_with_float(everything.difference(accepted, block)) >= floor:
            accepted += block
        elif len(block) > 1:
            mid = len(block) // 2
            pending += [block[mid:], block[:mid]]  # the less noisy half first
    return accepted


@dataclass
class Shared:
    """Work shared by quantize calls on one model and one calibration set (one stage's rungs):
    the activation ranges by tensor, the float reference outputs, the layer-local noise per
    setting, and each measured (setting, float layers) -> output SNR.  Never share one between
    different models or data."""

    collectors: dict[str, qm.RangeCollector] = field(default_factory=dict)
    reference: Reference | None = None
    noise: dict = field(default_factory=dict)
    snrs: dict = field(default_factory=dict)
    # each weight's quantization by its values and settings (weights.WeightStore: every build
    # quantizes the same weights the same way; a group testing builds the model once per probe)
    weights: dict = field(default_factory=dict)

    def reference_for(self, float_model: onnx.ModelProto, data: Dataset) -> Reference:
        if self.reference is None:
            self.reference = Reference(float_model, data)
        return self.reference

    def snr(self, key, build: Callable[[], onnx.ModelProto], reference: Callable[[], Reference]) -> float:
        """The output SNR of the model `build` makes, measured once per `key`."""
        if key not in self.snrs:
            self.snrs[key] = reference().snr(build())
        return self.snrs[key]
