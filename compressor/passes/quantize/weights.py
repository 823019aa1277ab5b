"""Offline weight quantization: int8 initializers + scale (+ zero point) feeding DequantizeLinear.

No QuantizeLinear on a constant is ever left in the graph.  Each (weight, axis) is
quantized once and gets one DequantizeLinear (ORT duplicates it per consumer if needed).
A tensor left by ``share`` (at most 256 distinct non-zero values, each used repeatedly)
is quantized per tensor with a scale that puts its centroids on distinct levels, so it
stays a tensor of at most k int8 symbols.  When a BatchNorm was folded into its Conv, the
codebook is quantized *before* the fold and the per-channel BatchNorm factor goes into
the per-channel scale instead of the values (negative factors flip the symbols' sign).
Biases of quantized Conv / Gemm become int32 with scale = input scale x weight scale.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ... import quant_math as qm
from .names import NameScope

INT32_MIN, INT32_MAX = qm.INT_RANGES["int32"]


class WeightStore:
    def __init__(
        self,
        scope: NameScope,
        symmetric: bool,
        bn_factors: dict | None = None,
        weight_type: str = "int8",
        integer_range: tuple[int, int] | None = None,
        cache: dict | None = None,
    ):
        self.scope = scope
        self.symmetric = symmetric
        self.weight_type = weight_type
        self.np_type = np.dtype(weight_type)
        # Weights read by integer kernels may use a reduced range (see quantize's reduce_range);
        # weights dequantized for float kernels always use the full range.
        self.ranges = {
            False: qm.qrange(weight_type, symmetric),
            True: integer_range or qm.qrange(weight_type, symmetric),
        }
        self.bn_factors = bn_factors or {}  # weight name -> (unfolded array, per-channel factor)
        self.initializers: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self._done: dict[tuple, dict] = {}
        self._bias: dict[tuple, str] = {}
        self.rows: dict[tuple, dict] = {}
        self.warnings: list[str] = []
        # Quantizations by the weight's values and settings, shared by the stores of one stage's
        # builds (sensitivity.Shared.weights): the same weight is quantized once, not per build.
        self.cache = cache

    # ---- weights
    def dq(self, w, axis: int | None, integer: bool = True) -> str:
        """Name of a DequantizeLinear output holding the quantized weight (created once)."""
        entry = self._entry(w, axis, False, integer)
        if entry["dq"] is None:
            names, qa = entry["names"], entry["qa"]
            out = self.scope.new(f"{w.name}_dequantized")
            attrs = {"axis": qa.axis} if qa.axis is not None else {}
            inputs = [names["q"], names["scale"]] + ([names["zero_point"]] if names["zero_point"] else [])
            self.nodes.append(
                helper.make_node(
                    "DequantizeLinear", inputs, [out], name=self.scope.new(f"{w.name}_DequantizeLinear"), **attrs
                )
            )
            entry["dq"] = out
        return entry["dq"]

    def quantized(self, w, axis: int | None, transpose: bool = False, integer: bool = True) -> qm.QuantizedArray:
        return self._entry(w, axis, transpose, integer)["qa"]

    def tensors(self, w, axis: int | None, transpose: bool = False, integer: bool = True) -> dict:
        """Initializer names {'q', 'scale', 'zero_point'} (transposed: [K, N] for MatMulInteger)."""
        return self._entry(w, axis, transpose, integer)["names"]

    def _entry(self, w, axis, transpose, integer) -> dict:
        qrange = self.ranges[bool(integer)]
        key = (w.name, axis, transpose, qrange)
        if key in self._done:
            return self._done[key]
        array = w.array().astype(np.float32, copy=False)
        if transpose:
            array = array.T
        qa, row = self._quantize_once(w.name, array, axis, transpose, qrange)
        tag = "_T" if transpose else ""
        # A zero point of all zeros (symmetric weights) is left out: it is the default, and on a
        # small model the zero-point tensors and their names are a few % of the container.
        # Except for Gemm and MatMul (which ORT may first turn into Gemm): ORT fuses DQ -> Gemm
        # into QGemm only with an explicit one (measured with onnxruntime 1.32).
        explicit = np.any(np.asarray(qa.zero_point) != 0) or w.role in KEEP_ZERO_POINT_ROLES
        parts = ("q", "scale") + (("zero_point",) if explicit else ())
        names = {part: self.scope.new(f"{w.name}{tag}_{part if part != 'q' else 'quantized'}") for part in parts}
        names.setdefault("zero_point", "")
        # Kept in the stored type (int8/uint8), not int64: every weight's integers stay alive here.
        qa = dataclasses.replace(qa, q=qa.q.astype(self.np_type, copy=False))
        self.initializers.append(numpy_helper.from_array(qa.q, names["q"]))
        self.initializers.append(numpy_helper.from_array(np.asarray(qa.scale, dtype=np.float32), names["scale"]))
        if names["zero_point"]:
            self.initializers.append(
                numpy_helper.from_array(np.asarray(qa.zero_point, dtype=self.np_type), names["zero_point"])
            )
        row.update(
            {"name": w.name, "role": w.role, "shape": list(array.shape), "transposed": transpose, "tensor": names["q"]}
        )
        self.rows[key] = row
        self._done[key] = {"names": names, "qa": qa, "dq": None}
        return self._done[key]

    def _quantize_once(self, name: str, array: np.ndarray, axis, transpose: bool, qrange: tuple[int, int]):
        """``_quantize``, taken from the cache when the same values were quantized the same way
        (its warnings repeated; the row a copy: the caller adds to it)."""
        if self.cache is None:
            return self._quantize(name, array, axis, transpose, qrange)
        factors = self.bn_factors.get(name) if not transpose else None
        key = (name, axis, transpose, qrange, self.symmetric, self.weight_type, _digest(array))
        key += (_digest(factors[0]), _digest(factors[1])) if factors is not None else ()
        hit = self.cache.get(key)
        if hit is None:
            before = len(self.warnings)
            qa, row = self._quantize(name, array, axis, transpose, qrange)
            hit = self.cache[key] = (qa, dict(row), self.warnings[before:])
        else:
            self.warnings.extend(hit[2])
        return hit[0], dict(hit[1])

    def _quantize(self, name: str, array: np.ndarray, axis: int | None, transpose: bool, qrange: tuple[int, int]):
        qmin, qmax = qrange
        factors = self.bn_factors.get(name) if not transpose else None
        source = factors[0] if factors is not None else array
        book = qm.codebook(source)
        k = None if book is None else int(book[0].size)
        levels = qmax - qmin  # non-zero levels
        # The per-channel candidate and each scheme's relative error, once computed (a large
        # tensor's quantization and dequantization are passes over all its values).
        per_channel = None
        errors: dict[str, float] = {}
        if book is not None and book[0].size > levels:
            # More centroids than levels: merges are unavoidable, and per-channel scales are
            # more accurate while still giving at most `levels` < k symbols.
            self.warnings.append(
                f"{name}: codebook of {book[0].size} values > {levels} non-zero levels in "
                f"[{qmin}, {qmax}]: quantized per {'channel' if axis is not None else 'tensor'}"
            )
            book = None
        if book is not None:
            qa = qm.quantize_codebook(source, qmin, qmax, self.symmetric, book)
            scheme = "codebook"
            if factors is not None:
                qa = self._absorb(qa, factors[1], axis)
                if qa is None:  # cannot absorb: quantize the folded values per channel
                    self.warnings.append(f"{name}: BatchNorm factors could not go into the scales; codebook not kept")
                    book = None
            if book is not None and axis is not None:
                # One scale for the whole codebook rounds every weight of a cluster the same
                # way, so errors add up instead of cancelling; with many centroids (6-7 bits)
                # per-channel scales can be several times more accurate, and still give at most
                # `levels` symbols.  Keep the codebook unless it costs over 1.5x the error (at 4-5 bits the two are even; at 6-7 bits the shared scale costs 2x).
                per_channel = qm.quantize_array(
                    array, axis, qmin, qmax, self.symmetric, mantissa_bits=SCALE_MANTISSA_BITS
                )
                errors["codebook"] = _rel_error(qa, array)
                errors["per_channel"] = _rel_error(per_channel, array)
                if errors["codebook"] > CODEBOOK_ERROR_FACTOR * errors["per_channel"]:
                    self.warnings.append(
                        f"{name}: codebook of {k} values quantized per channel (a shared scale would "
                        f"cost over {CODEBOOK_ERROR_FACTOR:g}x the error)"
                    )
                    book = None
        if book is None:
            qa = (
                per_channel
                if per_channel is not None
                else qm.quantize_array(
                    array,
                    axis,
                    qmin,
                    qmax,
                    self.symmetric,
                    mantissa_bits=SCALE_MANTISSA_BITS if axis is not None else None,
                )
            )
            scheme = "per_channel" if axis is not None else "per_tensor"
        err = errors[scheme] if scheme in errors else _rel_error(qa, array)
        row = {
            "scheme": scheme,
            "axis": qa.axis,
            "range": [qmin, qmax],
            "codebook_size": k,
            "symbols": qa.symbols,
            "merged_centroids": qa.merged_centroids,
            "clamped_nonzero": qa.clamped_nonzero,
            "zeros": int(np.count_nonzero(array == 0)),
            "rel_error": err,
        }
        if qa.merged_centroids:
            self.warnings.append(
                f"{name}: {qa.merged_centroids} of {qa.codebook_size} codebook values share an int8 level "
                f"with another (range [{qmin}, {qmax}])"
            )
        return qa, row

    def _absorb(self, qa: qm.QuantizedArray, factor: np.ndarray, axis: int | None) -> qm.QuantizedArray | None:
        if axis is None or not self.symmetric or np.any(np.asarray(qa.zero_point) != 0):
            return None
        factor = np.asarray(factor, dtype=np.float64)
        if np.any(factor == 0) or not np.all(np.isfinite(factor)):
            return None
        # Symmetric: zero point 0, a signed range is sign-symmetric, so q keeps its type.
        sign = np.sign(factor).astype(qa.q.dtype if qa.q.dtype.kind == "i" else np.int64)
        shape = [1] * qa.q.ndim
        shape[axis] = -1
        q = qa.q * sign.reshape(shape)
        scale = qm.round_mantissa((float(qa.scale) * np.abs(factor)).astype(np.float32), SCALE_MANTISSA_BITS)
        zp = np.zeros(scale.shape, dtype=np.int64)
        return qm.QuantizedArray(
            q,
            scale,
            zp,
            axis,
            qa.clamped_nonzero,
            qa.codebook_size,
            qa.merged_centroids,
            qm.distinct_count(q, skip_zero=True),
            {"bn_absorbed": True},
        )

    # ---- biases
    def bias_dq(self, b, x_scale: float, w_qa: qm.QuantizedArray, out_scale: float | None = None) -> str | None:
        """int32 bias with scale x_scale * w_scale (per channel when the weight is).

        When the op's output is requantized to ``out_scale``, each bias is rounded to a
        power-of-two multiple of at most 1/16 of that output step (quant_math.coarsen_bias)."""
        w_scale = np.asarray(w_qa.scale, dtype=np.float32)
        scale = (np.float32(x_scale) * w_scale).astype(np.float32)
        key = (b.name, float(x_scale), w_scale.tobytes(), out_scale)
        if key in self._bias:
            return self._bias[key]
        values = b.array().astype(np.float64).reshape(-1)
        n = values.size
        if scale.size not in (1, n):
            return None
        unit = scale.astype(np.float64).reshape(-1)
        q = np.rint(values / unit)
        if out_scale is not None and np.all(np.isfinite(q)):
            q = qm.coarsen_bias(q, float(out_scale) / unit, BIAS_STEP_FRACTION).astype(np.float64)
        clipped = int(np.count_nonzero((q < INT32_MIN) | (q > INT32_MAX)))
        if clipped:
            self.warnings.append(f"{b.name}: {clipped} int32 bias values saturate; bias kept in float")
            return None
        # No zero point: DequantizeLinear's default is 0, the only value an int32 bias has.
        names = [self.scope.new(b.name + "_quantized"), self.scope.new(b.name + "_scale")]
        self.initializers.append(numpy_helper.from_array(q.astype(np.int32), names[0]))
        self.initializers.append(
            numpy_helper.from_array(scale.reshape(-1) if scale.size > 1 else scale.reshape(()), names[1])
        )
        out = self.scope.new(b.name + "_dequantized")
        attrs = {"axis": 0} if scale.size > 1 else {}
        self.nodes.append(
            helper.make_node(
                "DequantizeLinear", names, [out], name=self.scope.new(b.name + "_DequantizeLinear"), **attrs
            )
        )
        self._bias[key] = out
        return out

    def report(self) -> list[dict]:
        return [self.rows[k] for k in self.rows]


# Per-channel weight scales keep this many mantissa bits (bfloat16's precision; see
# quant_math.round_mantissa): the weights' error grows by at most 0.8 % of a level, and the
# scales, 10 % of a small quantized CNN's container at full precision, shrink to a third.
SCALE_MANTISSA_BITS = 7

# An int32 bias feeding a requantized output is rounded to 1/16 of that output's step or
# finer: outputs move by at most 1/32 of a level, and each bias sheds about 10 of its ~22 bits.
BIAS_STEP_FRACTION = 16

# Roles whose weights keep an all-zero zero point (see WeightStore._entry).
KEEP_ZERO_POINT_ROLES = ("gemm_b", "matmul_const", "matmul_const_a")

# A codebook keeps its shared per-tensor scale unless that costs more than this factor of
# the per-channel error (see WeightStore._quantize).
CODEBOOK_ERROR_FACTOR = 1.5


def _rel_error(qa: qm.QuantizedArray, exact: np.ndarray) -> float:
    """||Q(W) - W|| / ||W||; the difference is taken in the dequantized array's own memory."""
    diff = qa.dequantize()
    np.subtract(diff, exact, out=diff)
    return float(np.linalg.norm(diff.ravel()) / (np.linalg.norm(exact.ravel()) or 1.0))


def _digest(values) -> tuple:
    """A key for an array's values: dtype, shape and SHA-256 of its bytes."""
    values = np.ascontiguousarray(values)
    return values.dtype.str, values.shape, hashlib.sha256(values.tobytes()).digest()
