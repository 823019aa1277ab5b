"""Linear (affine) quantization math — pure numpy, no ONNX.

``q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`` and
``x' = (q - zero_point) * scale``, exactly what ONNX QuantizeLinear / DequantizeLinear
compute (the division is done in float32 like ONNX Runtime, then ``np.rint``).  The
zero point is an integer, so real 0.0 is always exactly representable: zero padding and
pruned weights stay exactly zero.

* ``qrange`` / ``scale_zero_point``: the integer range of a type and the (scale, zero
  point) that maps a real range onto it — symmetric (zero point in the middle, int8 uses
  [-127, 127] so that negating a value never overflows) or asymmetric (the real range,
  widened to contain 0, fills the whole integer range).
* ``quantize_array``: per-tensor or per-channel weight quantization with the rule that a
  non-zero value never becomes the zero point (tiny non-zeros are clamped to +-1 level),
  so quantization cannot turn a kept weight into a pruned one.
* ``codebook`` / ``quantize_codebook``: a tensor left by k-means sharing holds at most 256
  distinct non-zero values.  It is quantized with *one* scale chosen so that the centroids
  land on distinct integer levels where possible (fewest merges, then least squared error
  over a grid of scales that never clip), so the tensor stays a tensor of at most k
  integer symbols; merged centroids are reported.
* ``RangeCollector``: streaming calibration statistics for one tensor — running min/max and
  two histograms (negative and positive side, 2048 bins each over [0, R]) whose range R
  doubles (pairs of bins merged, exactly) when a batch exceeds it, so batches never have
  to be kept.  From it: ``minmax``, ``percentile`` ((100-p) % of the samples cut, half from each tail) and
  ``entropy`` (TensorRT's KL-divergence threshold search) ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ecq import grid_step

INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int32": (-(2**31), 2**31 - 1),
}

HIST_BINS = 2048
# Elements per block of the whole-tensor passes (quantize, dequantize, codebook lookups): their
# int64 and float temporaries stay this size, whatever the tensor's.
BLOCK = 1 << 20
DEFAULT_PERCENTILE = 99.999
MAX_CODEBOOK = 256


def sortable(values: np.ndarray) -> np.ndarray:
    """`values` with 2-byte floats widened to float32 (exact) before np.sort / np.unique.

    numpy 2.4's SIMD sort of float16 on AVX-512 CPUs leaves elements out of order
    (seen: np.unique of a 4-bit shared float16 tensor gave 18 "distinct" values).
    """
    if values.dtype.kind == "f" and values.dtype.itemsize == 2 or values.dtype.name == "bfloat16":
        return values.astype(np.float32)
    return values


def qrange(dtype: str, symmetric: bool = False) -> tuple[int, int]:
    """Integer range used for a type; symmetric signed types drop the most negative value."""
    dtype = np.dtype(dtype).name
    if dtype not in INT_RANGES:
        raise ValueError(f"unsupported quantized type {dtype}")
    qmin, qmax = INT_RANGES[dtype]
    if symmetric:  # keep the range symmetric around the zero point: negating never overflows
        if qmin < 0:
            qmin = -qmax
        else:
            qmin = 1
    return qmin, qmax


def round_mantissa(values, bits: int, up: bool = False) -> np.ndarray:
    """Positive float32 values rounded to ``bits`` mantissa bits (up, or to nearest with ties up).

    Per-channel weight scales need far less than float32's 23 bits: with 7 (bfloat16's
    precision) a scale moves by at most 0.8 % (up) or 0.4 % (nearest), and the two low bytes of
    every scale become zero, which the container's planes codec then stores for almost nothing.
    Values that would overflow, and non-positive or non-finite ones, are returned unchanged."""
    values = np.asarray(values, dtype=np.float32)
    drop = 23 - int(bits)
    if drop <= 0:
        return values
    bits_ = values.view(np.uint32).astype(np.uint64)
    bits_ += (1 << drop) - 1 if up else 1 << (drop - 1)
    rounded = (bits_ & ~np.uint64((1 << drop) - 1)).astype(np.uint32).view(np.float32)
    keep = ~(np.isfinite(rounded) & (values > 0) & np.isfinite(values))
    return np.where(keep, values, rounded).astype(np.float32)


def coarsen_bias(q, output_step, fraction: int = 16) -> np.ndarray:
    """Integer biases rounded to a power-of-two multiple no coarser than ``output_step / fraction``.

    An int32 bias is counted in units of input scale x weight scale, far finer than the
    output it is added to can show: the accumulator is requantized to the output's scale,
    ``output_step`` of those units (per channel, or one value for all).  Rounding each bias to
    a multiple of 2**k <= output_step / fraction moves every output by at most
    1 / (2 * fraction) of its quantization step, and clears the k low bits that otherwise
    cost the container about 2 bytes per bias.  A step below 2 leaves the value unchanged."""
    q = np.asarray(q, dtype=np.int64)
    allowed = np.broadcast_to(np.asarray(output_step, dtype=np.float64) / fraction, q.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.floor(np.log2(np.where(np.isfinite(allowed) & (allowed >= 2), allowed, 1.0)))
    step = np.left_shift(np.int64(1), np.clip(k, 0, 30).astype(np.int64))
    # Round half away from zero: a multiple of a power of two keeps its magnitude's sign.
    return (np.sign(q) * ((np.abs(q) + step // 2) // step) * step).astype(np.int64)


def scale_zero_point(
    rmin, rmax, qmin: int, qmax: int, symmetric: bool, mantissa_bits: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32, > 0) and integer zero point mapping [rmin, rmax] (widened to contain 0).

    With ``mantissa_bits`` the scale is rounded *up* to that many mantissa bits (see
    round_mantissa) before the zero point is chosen, so the range still fits."""
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if symmetric:
        absmax = np.maximum(-rmin, rmax)
        half = (qmax - qmin) / 2.0
        scale = absmax / half
        if mantissa_bits is not None:
            scale = round_mantissa(scale, mantissa_bits, up=True).astype(np.float64)
        zp = np.full(scale.shape, (qmin + qmax + 1) // 2, dtype=np.int64)
    else:
        scale = (rmax - rmin) / float(qmax - qmin)
        if mantissa_bits is not None:
            scale = round_mantissa(scale, mantissa_bits, up=True).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.where(scale > 0, np.rint(qmin - rmin / np.where(scale > 0, scale, 1.0)), qmin if qmin >= 0 else 0)
        # Both signs present: keep at least one level on each side of the zero point, so a
        # tiny value of the minority sign does not collapse onto zero.
        zp = np.clip(zp, qmin + (rmin < 0), qmax - (rmax > 0)).astype(np.int64)
    bad = ~(scale > np.finfo(np.float32).tiny) | ~np.isfinite(scale)
    scale = np.where(bad, 1.0, scale).astype(np.float32)
    if np.any(bad) and not symmetric:
        zp = np.where(bad, qmin if qmin >= 0 else 0, zp)
    return scale, zp


def int_type(qmin: int, qmax: int) -> np.dtype:
    """The narrowest integer type holding [qmin, qmax] (what quantized values are kept in)."""
    for name in ("int8", "uint8", "int16", "uint16", "int32"):
        info = np.iinfo(name)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(name)
    return np.dtype(np.int64)


def row_blocks(shape: tuple[int, ...]) -> list[slice]:
    """Slices of axis 0 covering about BLOCK elements each (one slice for a 0-d shape's reshape)."""
    rows = shape[0] if shape else 1
    per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, BLOCK // max(per_row, 1))
    return [slice(start, start + step) for start in range(0, rows, step)]


def _rows(v: np.ndarray, rows: slice) -> np.ndarray:
    """An expanded scale / zero point cut to a block of rows when it runs along axis 0."""
    return v[rows] if v.ndim and v.shape[0] > 1 else v


def distinct_count(q: np.ndarray, skip_zero: bool = False) -> int:
    """``np.unique(q).size`` (without 0 when `skip_zero`); 1- and 2-byte integers by a table of
    the values seen, filled block by block (no sort, no int64 copy of the tensor)."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu" or q.dtype.itemsize > 2:
        found = np.unique(q[q != 0] if skip_zero else q)
        return int(found.size)
    info = np.iinfo(q.dtype)
    seen = np.zeros(int(info.max) - int(info.min) + 1, dtype=bool)
    flat = q.ravel()
    for start in range(0, flat.size, BLOCK):
        seen[flat[start : start + BLOCK].astype(np.int64) - int(info.min)] = True
    if skip_zero:
        seen[-int(info.min)] = False
    return int(np.count_nonzero(seen))


def _expand(v: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    v = np.asarray(v)
    if axis is None or v.ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def quantize_values(x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None) -> np.ndarray:
    """QuantizeLinear: round(x / scale) half to even, + zero point, saturate.

    Computed in int64 block by block of rows; the result is kept in ``int_type(qmin, qmax)``."""
    x = np.asarray(x, dtype=np.float32)
    s = _expand(np.asarray(scale, dtype=np.float32), x.ndim, axis)
    z = _expand(np.asarray(zero_point, dtype=np.int64), x.ndim, axis)
    if x.ndim == 0:
        return np.clip(np.rint(x / s).astype(np.int64) + z, qmin, qmax).astype(int_type(qmin, qmax))
    out = np.empty(x.shape, dtype=int_type(qmin, qmax))
    for rows in row_blocks(x.shape):
        out[rows] = np.clip(np.rint(x[rows] / _rows(s, rows)).astype(np.int64) + _rows(z, rows), qmin, qmax)
    return out


def dequantize_values(q, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """DequantizeLinear: (q - zero_point) * scale, float32 (in int64 block by block of rows)."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        q = q.astype(np.int64)
    s = _expand(np.asarray(scale, dtype=np.float32), q.ndim, axis)
    z = _expand(np.asarray(zero_point, dtype=np.int64), q.ndim, axis)
    if q.ndim == 0:
        return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32, copy=False)
    out = np.empty(np.broadcast_shapes(q.shape, s.shape, z.shape), dtype=np.float32)
    if out.shape != q.shape:  # a scale or zero point wider than q: broadcast as numpy would
        out[...] = (q.astype(np.int64) - z).astype(np.float32) * s
        return out
    for rows in row_blocks(q.shape):
        out[rows] = (q[rows].astype(np.int64) - _rows(z, rows)).astype(np.float32) * _rows(s, rows)
    return out


def keep_nonzero(
    x: np.ndarray, q: np.ndarray, zp, qmin: int, qmax: int, axis: int | None = None
) -> tuple[np.ndarray, int]:
    """Move non-zero values that quantized to the zero point one level towards their sign."""
    z = np.broadcast_to(_expand(np.asarray(zp, dtype=np.int64), q.ndim, axis), q.shape)
    tiny = (q == z) & (x != 0)
    n = int(np.count_nonzero(tiny))
    if n:
        q = q.copy()
        q[tiny] = np.clip(z[tiny] + np.sign(x[tiny]).astype(np.int64), qmin, qmax)
    return q, n


@dataclass
class QuantizedArray:
    """Integers, scale(s) and zero point(s) of a quantized tensor, and what was given up."""

    q: np.ndarray  # integers within [qmin, qmax], in int_type(qmin, qmax)
    scale: np.ndarray  # float32, scalar or per channel
    zero_point: np.ndarray  # int64, same shape as scale
    axis: int | None  # channel axis, None for per-tensor
    clamped_nonzero: int = 0  # non-zeros that would have rounded to zero
    codebook_size: int | None = None  # distinct non-zero values, for codebook tensors
    merged_centroids: int = 0  # centroids that share an integer level with another one
    symbols: int = 0  # distinct integers in q
    info: dict = field(default_factory=dict)

    def dequantize(self) -> np.ndarray:
        return dequantize_values(self.q, self.scale, self.zero_point, self.axis)


def channel_ranges(x: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of x, over everything (axis None) or per index along `axis`."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return np.zeros(() if axis is None else x.shape[axis]), np.zeros(() if axis is None else x.shape[axis])
    if axis is None:
        return np.asarray(x.min()), np.asarray(x.max())
    moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    return moved.min(axis=1), moved.max(axis=1)


def quantize_array(
    x,
    axis: int | None,
    qmin: int,
    qmax: int,
    symmetric: bool,
    keep_nonzeros: bool = True,
    mantissa_bits: int | None = None,
) -> QuantizedArray:
    """Min/max quantization of a weight tensor, per tensor (axis None) or per channel
    (scales rounded up to ``mantissa_bits``, see scale_zero_point)."""
    x = np.asarray(x, dtype=np.float32)
    rmin, rmax = channel_ranges(x, axis)
    scale, zp = scale_zero_point(rmin, rmax, qmin, qmax, symmetric, mantissa_bits)
    q = quantize_values(x, scale, zp, qmin, qmax, axis)
    clamped = 0
    if keep_nonzeros:
        q, clamped = keep_nonzero(x, q, zp, qmin, qmax, axis)
    return QuantizedArray(q, scale, zp, axis, clamped_nonzero=clamped, symbols=distinct_count(q))


# ------------------------------------------------------------------ codebooks


def codebook(x: np.ndarray, max_size: int = MAX_CODEBOOK) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, counts) of the distinct non-zero values when they look like a shared codebook.

    A codebook has at most ``max_size`` values and each is used about twice or more on
    average — an ordinary float tensor has (almost) as many distinct values as elements.
    """
    flat = np.asarray(x).ravel()
    nz = sortable(flat[flat != 0])
    if nz.size == 0:
        return None
    found = distinct_values(nz, max_size)
    if found is None:
        return None
    values, counts = found
    if values.size > max_size or nz.size < 2 * values.size:
        return None
    return values.astype(np.float64), counts


# Values a codebook's distinct values are first looked for in (evenly spread over the tensor),
# and the rounds that add the values they missed, before a full sort.
CODEBOOK_PROBE = 1 << 16
PROBE_ROUNDS = 2


def distinct_values(x: np.ndarray, max_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``np.unique(x, return_counts=True)`` of a 1-D array, or None when it has more than
    `max_size` distinct values.  A tensor of few distinct values (share's) is looked up in
    the distinct values of a spread probe (one pass of a binary search over a small table,
    not a sort of every value); one whose probe alone holds more than `max_size` is none."""
    probe = np.unique(x[:: max(1, x.size // CODEBOOK_PROBE)])
    for _ in range(PROBE_ROUNDS):
        if probe.size > max_size:
            return None
        found = _probe_counts(x, probe)
        if isinstance(found, np.ndarray):
            return probe, found
        if found is None:
            break
        probe = np.union1d(probe, np.concatenate(found))
    values, counts = np.unique(x, return_counts=True)
    return (values, counts) if values.size <= max_size else None


def _probe_counts(x: np.ndarray, probe: np.ndarray) -> np.ndarray | list[np.ndarray] | None:
    """How often each probe value occurs in x, or the values of x the probe missed (a list of
    blocks), or None when they are more than CODEBOOK_PROBE; block by block (int64 indices
    of one block at a time)."""
    counts = np.zeros(probe.size, dtype=np.int64)
    extra: list[np.ndarray] = []
    n_extra = 0
    for start in range(0, x.size, BLOCK):
        part = x[start : start + BLOCK]
        idx = np.searchsorted(probe, part)
        np.minimum(idx, probe.size - 1, out=idx)
        missed = probe[idx] != part
        if missed.any():
            extra.append(part[missed])
            n_extra += extra[-1].size
            if n_extra > CODEBOOK_PROBE:
                return None
        elif not extra:
            counts += np.bincount(idx, minlength=probe.size)
    return extra if extra else counts


def _codebook_levels(values: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    q = np.clip(np.rint(values.astype(np.float32) / np.float32(scale)).astype(np.int64) + zp, qmin, qmax)
    tiny = q == zp
    q[tiny] = np.clip(zp + np.sign(values[tiny]).astype(np.int64), qmin, qmax)
    return q


def choose_codebook_scale(
    values: np.ndarray,
    counts: np.ndarray,
    qmin: int,
    qmax: int,
    symmetric: bool,
    candidates: int = 160,
    low: float = 0.9,
    high: float = 1.25,
) -> tuple[float, int, np.ndarray, int]:
    """One scale and zero point for a codebook: fewest merged centroids, then least error.

    A codebook on a uniform grid (``grid_step``) also tries that grid's step: its error is zero.

    The min/max scale ``s0`` (the largest centroid on the last level) is always a candidate;
    the others span [low, high] x s0 (a slightly finer scale clips the extreme centroid by a
    level or so, a coarser one shifts where the rounding boundaries fall, which can separate
    two centroids closer than a level).  The error is the squared error over all weights
    (centroid errors weighted by their counts).  Returns (scale, zero point, integer level of
    each centroid, merged centroids).
    """
    values = np.asarray(values, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    base_scale, base_zp = scale_zero_point(values.min(), values.max(), qmin, qmax, symmetric)
    base_scale, base_zp = float(base_scale), int(base_zp)
    scales = [float(np.float32(base_scale * f)) for f in np.concatenate([[1.0], np.geomspace(low, high, candidates)])]
    step = grid_step(values, max(abs(qmin), abs(qmax))) if symmetric else None
    if step is not None:
        # A uniform grid (share's "uniform" method): its own step maps every value to its
        # level exactly; float32 neighbours too, in case the step estimate is an ulp off.
        s32 = np.float32(step)
        scales += [float(s32), float(np.nextafter(s32, np.float32(0))), float(np.nextafter(s32, np.float32(np.inf)))]
    best = None
    for s in scales:
        if symmetric:
            zp = base_zp
        else:
            zp = int(
                np.clip(
                    np.rint(qmin - min(values.min(), 0.0) / s), qmin + (values.min() < 0), qmax - (values.max() > 0)
                )
            )
        levels = _codebook_levels(values, s, zp, qmin, qmax)
        merges = int(values.size - np.unique(levels).size)
        err = float(np.sum(counts * ((levels - zp) * s - values) ** 2))
        key = (merges, err)
        if best is None or key < best[0]:
            best = (key, s, zp, levels)
    (merges, _), s, zp, levels = best
    return s, zp, levels, merges


def quantize_codebook(x, qmin: int, qmax: int, symmetric: bool, book: tuple[np.ndarray, np.ndarray]) -> QuantizedArray:
    """Quantize a shared tensor per tensor so its centroids map to distinct levels."""
    x = np.asarray(x, dtype=np.float32)
    values, counts = book
    scale, zp, levels, merges = choose_codebook_scale(values, counts, qmin, qmax, symmetric)
    q = np.full(x.shape, zp, dtype=int_type(qmin, qmax))
    # The codebook's values came from float32 weights: searched in float32 (the same order,
    # without a float64 copy of every weight) when each is exactly a float32.
    exact = values.astype(np.float32)
    table = exact if np.array_equal(exact.astype(np.float64), values) else values
    used = np.zeros(values.size, dtype=bool)  # the levels q holds: no sort of q itself
    flat_x, flat_q = (x.reshape(1), q.reshape(1)) if x.ndim == 0 else (x, q)
    for rows in row_blocks(flat_x.shape):  # int64 indices of one block of rows at a time
        block, out = flat_x[rows], flat_q[rows]
        nz = block != 0
        idx = np.searchsorted(table, block[nz].astype(table.dtype, copy=False))
        out[nz] = levels[idx]
        used[idx] = True
    return QuantizedArray(
        q,
        np.asarray(scale, dtype=np.float32),
        np.asarray(zp, dtype=np.int64),
        None,
        codebook_size=int(values.size),
        merged_centroids=merges,
        symbols=int(np.unique(levels[used]).size),
    )


# ------------------------------------------------------------------ calibration


# Values folded into a RangeCollector at a time.
UPDATE_CHUNK = 1 << 20


class RangeCollector:
    """Streaming range statistics of one tensor (min, max, signed histogram)."""

    def __init__(self, bins: int = HIST_BINS):
        self.bins = bins
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self.zeros = 0
        self.limit = 0.0  # histograms cover [0, limit] on each side
        self.pos = np.zeros(bins, dtype=np.int64)
        self.neg = np.zeros(bins, dtype=np.int64)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        x = x.astype(np.float32, copy=False).ravel()
        # Chunks bound the temporaries (masks, bin indices) of a large activation; the result is
        # the same as in one piece (power-of-two limits: a grown histogram merges exactly).
        for start in range(0, x.size, UPDATE_CHUNK):
            self._update(x[start : start + UPDATE_CHUNK])

    def _update(self, x: np.ndarray) -> None:
        finite = x[np.isfinite(x)] if not np.all(np.isfinite(x)) else x
        if finite.size == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += finite.size
        peak = max(-lo, hi)
        if peak >= self.limit and peak > 0:
            self._grow(peak)
        if self.limit == 0.0:
            self.zeros += finite.size
            return
        # One histogram over both sides: |x|'s bin (|x * s| is |x| * s exactly), moved past the
        # negative bins for x > 0; zeros fall in the negative side's first bin and are taken out.
        bins = self.bins
        idx = np.minimum(np.abs(finite * (bins / self.limit)).astype(np.int64), bins - 1)
        idx += bins * (finite > 0)
        counts = np.bincount(idx, minlength=2 * bins)
        zeros = int(np.count_nonzero(finite == 0))
        counts[0] -= zeros
        self.neg += counts[:bins]
        self.pos += counts[bins:]
        self.zeros += zeros

    def _grow(self, peak: float) -> None:
        if self.limit == 0.0:
            # A power of two strictly above the peak: every value falls inside a bin, and
            # collectors of different tensors have aligned bins (exact merges).
            self.limit = float(2.0 ** (np.floor(np.log2(peak)) + 1))
            return
        while self.limit <= peak:  # merge pairs of bins: the range doubles, exactly
            for name in ("pos", "neg"):
                h = getattr(self, name)
                merged = np.zeros_like(h)
                merged[: self.bins // 2] = h.reshape(-1, 2).sum(axis=1)
                setattr(self, name, merged)
            self.limit *= 2.0

    def merge(self, other: RangeCollector) -> RangeCollector:
        """A collector holding both sets of samples (for tensors that share parameters)."""
        out = RangeCollector(self.bins)
        out.min, out.max = min(self.min, other.min), max(self.max, other.max)
        out.count, out.zeros = self.count + other.count, self.zeros + other.zeros
        out.limit = max(self.limit, other.limit)
        for src in (self, other):  # limits are powers of two: bins merge exactly
            if src.limit == 0.0:
                continue
            idx = np.arange(self.bins) // int(round(out.limit / src.limit))
            out.pos += np.bincount(idx, weights=src.pos, minlength=self.bins).astype(np.int64)
            out.neg += np.bincount(idx, weights=src.neg, minlength=self.bins).astype(np.int64)
        return out

    # ---- ranges

    def minmax(self) -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        return float(self.min), float(self.max)

    def _edge(self, side: np.ndarray, tail: float) -> float:
        """Smallest magnitude v on one side with at most `tail` samples beyond it."""
        beyond = np.cumsum(side[::-1])[::-1]  # samples in bin i and above
        ok = np.nonzero(beyond <= tail)[0]
        first = int(ok[0]) if ok.size else self.bins
        return first * self.limit / self.bins

    def percentile(self, p: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
        """Range with (100 - p) % of all samples cut, half from each tail (ORT's convention)."""
        if self.count == 0 or self.limit == 0.0:
            return self.minmax()
        tail = self.count * (100.0 - p) / 200.0
        hi = min(self.max, self._edge(self.pos, tail)) if self.max > 0 else self.max
        lo = max(self.min, -self._edge(self.neg, tail)) if self.min < 0 else self.min
        return float(lo), float(hi)

    def entropy(self, levels: int = 128, stride: int = 8) -> tuple[float, float]:
        """TensorRT's KL threshold on |x| (both sides merged), intersected with [min, max].

        Exact zeros (ReLU outputs, padding, blank pixels) are left out of the histogram: the
        integer zero point represents them exactly, and a large spike at zero would otherwise
        pull the threshold down and clip the values that carry the signal.
        """
        if self.count == 0 or self.limit == 0.0:
            return self.minmax()
        hist = (self.pos + self.neg).astype(np.float64)
        threshold_bin = kl_threshold(hist, levels, stride)
        t = threshold_bin * self.limit / self.bins
        return float(max(self.min, -t)), float(min(self.max, t))


def kl_threshold(hist: np.ndarray, levels: int = 128, stride: int = 8) -> int:
    """Number of bins to keep so the clipped, `levels`-level quantized distribution has least KL."""
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.size
    nonzero = np.nonzero(hist)[0]
    if nonzero.size == 0:
        return n
    last = int(nonzero[-1]) + 1
    if last <= levels:
        return last
    best_kl, best_i = np.inf, last
    total_tail = np.cumsum(hist[::-1])[::-1]
    for i in list(range(levels, last, stride)) + [last]:
        ref = hist[:i].copy()
        if i < n:
            ref[i - 1] += total_tail[i]
        edges = (np.arange(levels + 1) * i) // levels
        sums = np.add.reduceat(hist[:i], edges[:-1])
        nz = (hist[:i] != 0).astype(np.float64)
        nnz = np.add.reduceat(nz, edges[:-1])
        group = np.repeat(np.arange(levels), np.diff(edges))
        with np.errstate(divide="ignore", invalid="ignore"):
            per_bin = np.where(nnz[group] > 0, sums[group] / nnz[group], 0.0) * nz
        p = ref / ref.sum()
        q = per_bin / per_bin.sum() if per_bin.sum() > 0 else per_bin
        mask = p > 0
        qm = np.where(q[mask] > 0, q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i
