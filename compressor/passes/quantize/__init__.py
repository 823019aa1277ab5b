"""quantize: 8-bit linear quantization as QuantizeLinear / DequantizeLinear (QDQ), calibrated,
with Q/DQ folding — a model ONNX Runtime runs with integer kernels.

    quantize(model, calib=None, QuantizeSettings(activations=None|"static"|"dynamic"|"none",
             per_channel=True, symmetric=True, calibration="minmax", exclude=None, ...)) -> (model, stats)
    integer_kernel_coverage(model) -> dict

Modes: ``static`` (needs ``calib``): int8 weights + uint8 activations whose ranges come
from running ORT on the calibration data; ``dynamic``: int8 weights, activation ranges at
run time (MatMulInteger); ``none``: weight-only (int8 weights behind DequantizeLinear, float
kernels).  Default: static with calibration data, weight-only without.

The work is split by concern (one small module each): ``prepare`` (opset upgrade, already
quantized models, BatchNorm folding), ``plan`` + ``ops_*`` (the op -> handler registry:
each handler says what quantizing its op means), ``calibrate`` + ``params`` (activation
ranges and shared parameters), ``weights`` (offline int8 weights, codebooks, int32 biases),
``rewrite`` / ``dynamic`` (apply the plans), ``fold`` (remove DQ -> Q round trips),
``sensitivity`` (mixed precision: layer-local noise ranking, bisection on the count kept
float), ``coverage`` (what ORT runs with integer kernels).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx

from ... import evaluate, graph
from ... import quant_math as qm
from ...data import Dataset
from ...errors import CompressorError, UsageError
from . import calibrate, cleanup, dynamic, fold, prepare, sensitivity, unfold
from .coverage import integer_kernel_coverage
from .names import NameScope
from .params import build_groups, compute_params
from .plan import make_plans
from .registry import HANDLERS
from .rewrite import Rewriter
from .sensitivity import Shared
from .settings import DEFAULT_SETTINGS, QuantizeSettings
from .weights import WeightStore

__all__ = ["quantize", "size_bound", "QuantizeSettings", "Shared", "integer_kernel_coverage", "HANDLERS"]

MODES = ("static", "dynamic", "none")
METHODS = ("minmax", "percentile", "entropy")
ACTIVATION_TYPES = ("uint8", "int8")


def _check_options(settings: QuantizeSettings) -> re.Pattern | None:
    """Checks the settings; returns the compiled exclude pattern."""
    activations, calibration, activation_type = settings.activations, settings.calibration, settings.activation_type
    exclude, percentile, min_output_snr = settings.exclude, settings.percentile, settings.min_output_snr
    if activations is not None and activations not in MODES:
        raise UsageError(f"activations must be one of {', '.join(MODES)}, got {activations!r}")
    if calibration not in METHODS:
        raise UsageError(f"calibration must be one of {', '.join(METHODS)}, got {calibration!r}")
    if activation_type not in ACTIVATION_TYPES:
        raise UsageError(f"activation type must be uint8 or int8, got {activation_type!r}")
    if not 50.0 < float(percentile) <= 100.0:
        raise UsageError(f"percentile must be in (50, 100], got {percentile}")
    if min_output_snr is not None and not isinstance(min_output_snr, (int, float)):
        raise UsageError("min_output_snr must be a number of dB")
    if exclude is None or exclude == "":
        return None
    if isinstance(exclude, re.Pattern):
        return exclude
    try:
        return re.compile(exclude)
    except re.error as e:
        raise UsageError(f"--exclude: invalid regular expression {exclude!r}: {e}")


def quantize(
    model: onnx.ModelProto,
    calib: Dataset | None = None,
    settings: QuantizeSettings = DEFAULT_SETTINGS,
    shared: Shared | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Quantize `model` to 8 bits (see the module docstring and QuantizeSettings). Never mutates `model`.

    calib: a Dataset of calibration inputs (static mode).  settings.activations: "static" |
    "dynamic" | "none" (default: static with calib, else none).  calibration: "minmax" |
    "percentile" | "entropy" for activation ranges (percentile: `percentile`).  exclude: regex on
    node names (or first output) kept in float.  min_output_snr: mixed precision, layers kept in
    float as needed for the output SNR on the calibration data to reach this many dB (see
    _mixed_precision).  reduce_range: 7-bit weights for integer kernels (see
    _weight_range); None (default) chooses by measurement in static mode (the higher output SNR
    on the calibration data; 7-bit on a tie) and reduces the range otherwise.
    shared: work shared by several calls on the same model and calibration data (activation
    ranges, reference outputs, layer ranking, measured candidates; see sensitivity.Shared).
    small_constants: also store biases of float ops and normalisation parameters (at least 16
    values) as per-tensor int8 (see ops_tables).  check: load the result in ORT and measure its
    integer-kernel coverage.
    """
    per_channel = settings.per_channel  # may fall back to per tensor (opset)
    exclude_re = _check_options(settings)
    if settings.weight_type not in ("int8", "uint8"):
        raise UsageError(f"weight type must be int8 or uint8, got {settings.weight_type!r}")
    mode = "none" if settings.size_bound else settings.activations or ("static" if calib is not None else "none")
    if mode == "static" and calib is None:
        raise UsageError("static activation quantization needs calibration data (--calib CALIB.npz)")
    model = graph.copy_model(model)
    stats: dict = {
        "mode": mode,
        "weight_type": settings.weight_type,
        "activation_type": settings.activation_type if mode == "static" else ("uint8" if mode == "dynamic" else None),
        "per_channel": per_channel,
        "symmetric": settings.symmetric,
        "calibration": settings.calibration if mode == "static" else None,
        "bytes_before": graph.model_bytes(model),
        "warnings": [],
    }
    warnings = stats["warnings"]
    already = prepare.quantized_ops(model)
    if already:
        warnings.append(f"model is already quantized ({', '.join(already)}): left as it is")
        stats.update(
            {
                "already_quantized": already,
                "nodes": [],
                "weights": [],
                "folding": None,
                "bytes_after": graph.model_bytes(model),
            }
        )
        if settings.check:
            stats["coverage"] = integer_kernel_coverage(model)
        return model, stats

    model, per_channel = _prepare_opset(model, mode, per_channel, stats)
    stats["per_channel"] = per_channel
    subgraphs = [path for path, _ in graph.iter_graphs(model.graph) if path]
    if subgraphs:
        warnings.append(f"subgraphs left in float: {', '.join(subgraphs)}")
    stats["subgraphs_left_float"] = subgraphs
    n_bn, factors = prepare.fold_batchnorm(model)
    stats["batchnorm_folded"] = n_bn
    # Dynamic and weight-only modes build once: on this copy, no float copy kept.  So does static
    # mode on a model too large for one message (no mixed precision, no 8-bit probe: 7-bit weights).
    # The other builds each copy this one (``_build``), which stays as it is: the plans and the
    # calibration read it, and no second float copy is made for them.
    large = not graph.fits_in_one_message(model)
    single_build = mode != "static" or (large and settings.min_output_snr is None)
    float_model = model
    options = {
        "quantize_attention": settings.quantize_attention,
        "activation_symmetric": False,
        "small_constants": bool(settings.small_constants),
    }
    w_range = _weight_range(
        settings.weight_type,
        settings.symmetric,
        True if settings.reduce_range is None or settings.size_bound else settings.reduce_range,
    )
    config = dict(
        mode=mode,
        per_channel=per_channel,
        symmetric=settings.symmetric,
        options=options,
        exclude=exclude_re,
        factors=factors,
        weight_type=settings.weight_type,
        weight_range=w_range,
        reduced_everywhere=settings.size_bound,
        weight_cache=shared.weights if shared is not None else None,
    )

    qparams = None
    skip: set[str] = set()
    shared = shared if shared is not None else sensitivity.Shared()
    runs_before = evaluate.ort_counts()
    if mode == "static":
        plans, _ = make_plans(model, mode, per_channel, options, exclude_re)
        groups = build_groups(plans)
        missing = [n for n in groups.parent if n not in shared.collectors]
        if missing:
            folded = calibrate.folded_relus(plans, groups)
            shared.collectors.update(calibrate.collect(float_model, missing, calib, same_as=folded))
        collectors = shared.collectors

        def params_of(groups):
            return compute_params(
                groups,
                collectors,
                settings.calibration,
                settings.activation_type,
                False,
                settings.percentile,
                settings.activation_range,
            )

        qparams = params_of(groups)
        key = _probe_key(settings)

        def reference():
            return shared.reference_for(float_model, calib)

        def params_without(skip):
            plans, _ = make_plans(model, mode, per_channel, options, exclude_re, skip_names=set(skip))
            return params_of(build_groups(plans))  # groups change when a Relu's producer stays float

        if settings.min_output_snr is not None:
            if key not in shared.noise:
                shared.noise[key] = sensitivity.layer_noise(
                    plans, collectors, qparams, w_range, settings.symmetric, groups.clipped
                )
            skip = _mixed_precision(
                shared.noise[key],
                float(settings.min_output_snr),
                lambda s: shared.snr(
                    (key, s), lambda: _build(float_model, params_without(s), skip=s, **config)[0], reference
                ),
                stats,
            )
            if skip:
                qparams = params_without(skip)
    built = _build(float_model, qparams, skip=skip, in_place=single_build, **config)
    stats["reduce_range"] = settings.reduce_range is not False
    if settings.reduce_range is None and mode == "static" and not large:
        # Whether 8-bit weights are safe depends on the CPU ORT runs on (see _weight_range): with
        # VNNI (or on ARM) they are about 0.5 dB better than 7-bit ones and match what ORT's own
        # quantizer emits; without it they saturate.  Both run on the calibration data here and the
        # one with the higher output SNR is kept.
        full_config = {**config, "weight_range": _weight_range(settings.weight_type, settings.symmetric, False)}
        full: list = []  # the 8-bit build, once made

        def build_full():
            full.append(_build(float_model, qparams, skip=skip, **full_config))
            return full[-1][0]

        snr_reduced = shared.snr((key, frozenset(skip)), lambda: built[0], reference)
        snr_full = shared.snr((key, frozenset(skip), "full"), build_full, reference)
        stats["weight_range_snr_db"] = {"reduced": evaluate.reported(snr_reduced), "full": evaluate.reported(snr_full)}
        stats["reduce_range"] = not snr_full > snr_reduced  # 7-bit on a tie: safe on every CPU
        if not stats["reduce_range"]:
            if not full:
                build_full()
            built = full[-1]
    model, rows, store, fold_counts = built
    removed = cleanup.remove_unused(model)
    if large:  # a fresh message: the built one's memory still holds the float weights it replaced
        del built, float_model
        model = graph.copy_model(model)
    stats["kept_float_mixed"] = sorted(skip)
    stats["nodes"] = rows
    stats["weights"] = store.report()
    stats["folding"] = fold_counts
    stats["removed_unused"] = removed
    warnings.extend(store.warnings)
    if per_channel and graph.opset_version(model) < prepare.PER_CHANNEL_OPSET:
        warnings.append("per-channel needs opset 13: weights are per tensor")
    _summarise(stats)
    after = evaluate.ort_counts()
    stats["ort"] = {k: after[k] - runs_before[k] for k in after}  # sessions / runs this call (calibration, probes)
    stats["bytes_after"] = graph.model_bytes(model)
    if settings.check:
        # its session raises CompressorError when ORT cannot load the model (no session of its own)
        stats["coverage"] = integer_kernel_coverage(model)
    return model, stats


def size_bound(model: onnx.ModelProto, settings: QuantizeSettings = DEFAULT_SETTINGS) -> tuple[onnx.ModelProto, dict]:
    """A model no smaller in bytes than any `quantize` of `model` with these settings (any
    activations mode, any layers kept float), built without data or ORT: int8 weights only,
    every one on the reduced range integer kernels read (the fewest levels a build uses), and
    no activation parameters, int32 biases or float layers, which the other builds add.  A
    bound to compare packed sizes with before measuring anything, never a model to keep."""
    bound = replace(settings, activations="none", size_bound=True, min_output_snr=None, check=False)
    return quantize(model, None, bound)


def _build(
    float_model,
    qparams,
    *,
    mode,
    per_channel,
    symmetric,
    options,
    exclude,
    factors,
    weight_type,
    weight_range,
    reduced_everywhere=False,
    skip=frozenset(),
    in_place=False,
    weight_cache=None,
):
    """Plans + rewrite + fold on a fresh copy of the prepared float model (on it: ``in_place``;
    `reduced_everywhere`: weights of float kernels on the integer kernels' range too, see
    size_bound)."""
    model = float_model if in_place else graph.copy_model(float_model)
    plans, rows = make_plans(model, mode, per_channel, options, exclude, skip_names=set(skip))
    scope = NameScope(model)
    store = WeightStore(scope, symmetric, factors, weight_type, weight_range, cache=weight_cache)
    if reduced_everywhere:
        store.ranges[False] = store.ranges[True]
    fold_counts = None
    if mode == "dynamic":
        status = dynamic.apply(model, plans, store, scope)
    else:
        Rewriter(model, scope, store, qparams).apply(plans, static=(mode == "static"))
        status = {p.name: ("weight_only" if mode == "none" else p.kind) for p in plans}
        if mode == "static":
            fold_counts = fold.fold(model)
    if reduced_everywhere:
        # the bound leaves out what static builds turn into int32 (a bias costs them bytes too)
        for plan in plans:
            if plan.kind == "integer" and plan.bias is not None:
                plan.node.input[plan.bias] = ""
    for row in rows:
        if row["node"] in status:
            row["status"] = status[row["node"]]
    if factors and not reduced_everywhere:
        unfold.unfold_float_convs(model, factors)  # a float Conv keeps its own (shared) filter
    cleanup.remove_unused(model)
    return model, rows, store, fold_counts


def _probe_key(settings: QuantizeSettings) -> QuantizeSettings:
    """What a built model depends on besides its float layers (probes are shared by rungs)."""
    return replace(settings, min_output_snr=None, check=True)


def _mixed_precision(
    noise: dict[str, float], floor: float, snr_with_float: Callable[[frozenset[str]], float], stats: dict
) -> set[str]:
    """The layers kept float for the output SNR on the calibration data to reach `floor` dB:
    ranked by their layer-local noise (sensitivity.layer_noise), the least noisy quantized
    first by group testing (sensitivity.layers_to_quantize), one whole-model run per probe, at
    most sensitivity.max_probes; measurements are shared with other rungs via `snr_with_float`.
    """
    order = sensitivity.ranking(noise)[::-1]  # least noisy first
    probes: list[float] = []

    def snr_of(float_layers: frozenset[str]) -> float:
        probes.append(snr_with_float(float_layers))
        return probes[-1]

    limit = sensitivity.max_probes(len(order))
    quantized = set(sensitivity.layers_to_quantize(order, snr_of, floor, limit))
    kept = set(order) - quantized
    stats["mixed_precision"] = {
        "floor_db": floor,
        "layers_ranked": len(order),
        "kept_float": len(kept),
        "probes": len(probes),
        "max_probes": limit,
        "probe_snr_db": [evaluate.reported(v) for v in probes],
    }
    stats["layer_noise_db"] = {
        name: evaluate.reported(-10.0 * np.log10(noise[name])) if noise[name] > 0 else None for name in order[::-1]
    }
    return kept


def _weight_range(weight_type: str, symmetric: bool, reduce_range: bool) -> tuple[int, int]:
    """Integer range of weights read by integer kernels.

    ORT's u8s8 kernels on x86 without VNNI (AVX2 vpmaddubsw) add two u8 x s8 products in
    int16 with saturation: 255 * 127 * 2 > 32767.  With 7-bit weights ([-64, 64]) the sum
    cannot overflow (measured: LeNet-5 output SNR 15 dB with 8-bit weights, 38 dB with 7).
    """
    if not reduce_range:
        return qm.qrange(weight_type, symmetric)
    if weight_type == "int8":
        return (-64, 64) if symmetric else (-64, 63)
    return (1, 127) if symmetric else (0, 127)


def _prepare_opset(model, mode, per_channel, stats):
    opset = graph.opset_version(model)
    need = prepare.PER_CHANNEL_OPSET if per_channel else (11 if mode == "dynamic" else 10)
    stats["opset"] = {"before": opset, "after": opset, "converted": False}
    if opset >= need:
        return model, per_channel
    converted, why = prepare.upgrade_opset(model, prepare.PER_CHANNEL_OPSET)
    if converted is not None:
        stats["opset"].update({"after": prepare.PER_CHANNEL_OPSET, "converted": True})
        return converted, per_channel
    floor = 11 if mode == "dynamic" else 10
    if per_channel and opset >= floor:
        stats["warnings"].append(
            f"opset {opset} could not be converted to 13 ({why}): per-tensor weights instead of per-channel"
        )
        return model, False
    raise CompressorError(f"opset {opset} is too old to quantize and conversion to 13 failed: {why}")


def _summarise(stats: dict) -> None:
    counts: dict[str, int] = {}
    for row in stats["nodes"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    stats["node_status_counts"] = dict(sorted(counts.items()))
    stats["float_reasons"] = sorted({f"{r['op']}: {r['reason']}" for r in stats["nodes"] if r["status"] == "float"})
