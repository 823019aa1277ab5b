"""rows-lpc (codec 21, version 1.5): one-byte elements as rows, each row's values predicted
from its previous ones by its own linear predictor, the residuals zstd- or xz-compressed
(FORMAT.md §7.6): FLAC's linear prediction, per row of a tensor.

Learned weights are no smooth signals and never take it; a fixed analysis filterbank kept
as a convolution (an STFT or mel kernel of an audio model, its rows windowed sinusoids) is:
neighbouring taps predict each other, so the residuals carry fewer bits than the values.
The field's bytes come without a shape: the row length is chosen among the element count's
divisors by the residuals' order-0 entropy on a leading sample, and the coder is built only
when that estimate beats the best candidate so far.  Lossless: decoding recomputes each
prediction from the values already decoded, in integers.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from ...codec import STORED, ByteReader, CorruptData, compress_best, decompress, huffman
from .registry import Candidate, Coder, EncodeRequest, name_of, register

ID = 21
VERSION = (1, 5)
ORDER = 4  # predictor taps per row
SHIFT = 12  # coefficients are integers in units of 2^-SHIFT
ROW_LENGTHS = (16, 4096)  # the row lengths tried (divisors of the element count)
MIN_ELEMENTS = 4096
MAX_ELEMENTS = 1 << 22
SAMPLE_ELEMENTS = 1 << 16  # the row length is chosen on about this many leading elements
# The sampled estimate must beat the best size by this factor for the payload to be built.
MARGIN = 0.95
# The quick test first: predictors fitted to blocks of PROBE_BLOCK values of a leading sample
# of PROBE_ELEMENTS must leave residuals of at most this share of the values' order-0 entropy
# (learned weights' residuals have more: the search for a row length is not worth its time).
PROBE_ELEMENTS, PROBE_BLOCK, PROBE_SHARE = 8192, 256, 0.9
HEADER = struct.Struct("<BBI")  # order, inner codec, row length


def signed(values: np.ndarray) -> np.ndarray:
    """Bytes (any integers, taken mod 256) as int8 values in int64."""
    return ((np.asarray(values, dtype=np.int64) + 128) & 0xFF) - 128


def fit(rows: np.ndarray, order: int = ORDER) -> np.ndarray:
    """Each row's least-squares predictor of a value from the `order` before it, as int64
    coefficients in units of 2^-SHIFT (newest tap first), within int16."""
    r, n = rows.shape
    x = rows.astype(np.float64)
    taps = np.stack([x[:, order - 1 - j : n - 1 - j] for j in range(order)], axis=2)  # [r, n-order, order]
    a = np.einsum("rnp,rnq->rpq", taps, taps)
    b = np.einsum("rnp,rn->rp", taps, x[:, order:])
    ridge = 1e-6 * (np.trace(a, axis1=1, axis2=2)[:, None, None] + 1.0) * np.eye(order)
    c = np.linalg.solve(a + ridge, b[:, :, None])[:, :, 0]
    return np.clip(np.round(c * (1 << SHIFT)), -32768, 32767).astype(np.int64)


def predictions(rows: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """Each value's prediction from the values before it in its row (0 for the first `order`)."""
    r, n = rows.shape
    order = coefs.shape[1]
    pred = np.zeros((r, n), dtype=np.int64)
    for j in range(order):
        pred[:, order:] += coefs[:, j : j + 1] * rows[:, order - 1 - j : n - 1 - j]
    pred[:, order:] = (pred[:, order:] + (1 << (SHIFT - 1))) >> SHIFT
    return pred


def residual_bytes(values: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients [rows, ORDER] int64, residual bytes uint8) of int8 `values` in rows of `length`."""
    rows = values.reshape(-1, length)
    coefs = fit(rows)
    return coefs, ((rows - predictions(rows, coefs)) & 0xFF).astype(np.uint8).ravel()


def _entropy_bits(symbols: np.ndarray) -> float:
    return huffman.entropy_bits(np.bincount(symbols, minlength=256))


def promising(values: np.ndarray) -> bool:
    """Whether predicted blocks of a leading sample of int8 `values` leave residuals of at most
    PROBE_SHARE of the values' entropy (a few milliseconds: most fields stop here)."""
    sample = values[: (min(values.size, PROBE_ELEMENTS) // PROBE_BLOCK) * PROBE_BLOCK]
    if sample.size == 0:
        return False
    _, res = residual_bytes(sample, PROBE_BLOCK)
    return _entropy_bits(res) <= PROBE_SHARE * _entropy_bits((sample & 0xFF).astype(np.uint8))


def row_length(values: np.ndarray) -> tuple[int, float] | None:
    """The row length (a divisor of the element count within ROW_LENGTHS) whose residuals have
    the least order-0 entropy on a leading sample, and that estimate in bytes for the whole
    field (coefficients included); None when no length fits."""
    n = values.size
    best = None
    for length in range(max(ROW_LENGTHS[0], ORDER * 4), min(ROW_LENGTHS[1], n) + 1):
        if n % length:
            continue
        rows = max(1, min(n // length, SAMPLE_ELEMENTS // length))
        _, res = residual_bytes(values[: rows * length], length)
        bits = _entropy_bits(res)
        estimate = bits / 8 * (n / res.size) + (n // length) * ORDER * 2
        if best is None or estimate < best[1]:
            best = (length, estimate)
    return best


def propose(request: EncodeRequest, best: Candidate | None) -> Candidate | None:
    if request.width != 1 or not MIN_ELEMENTS <= request.elements.size <= MAX_ELEMENTS:
        return None
    if not promising(signed(request.elements[:PROBE_ELEMENTS])):
        return None
    values = signed(request.elements)
    found = row_length(values)
    if found is None:
        return None
    length, estimate = found
    to_beat = best.size if best is not None else math.inf
    request.report("rows-lpc", estimate, [], exact=False)
    if estimate >= MARGIN * to_beat:
        return None
    codec, payload = encode(values, length)
    if codec == STORED:
        return None
    request.report(f"rows-lpc+{name_of(codec)}", len(payload), [])
    if len(payload) >= to_beat:
        return None
    params = {"row_length": length, "order": ORDER, "inner": name_of(codec)}
    return Candidate(ID, len(payload), lambda: payload, [], params)


def encode(values: np.ndarray, length: int) -> tuple[int, bytes]:
    """(the inner codec, the payload) of int8 `values` in rows of `length` (a divisor of their count)."""
    coefs, res = residual_bytes(values, length)
    codec, inner = compress_best(coefs.astype("<i2").tobytes() + res.tobytes())
    return codec, HEADER.pack(ORDER, codec, length) + inner


def decode(payload, decoded_length: int, width: int, what: str, context=None) -> bytes:
    reader = ByteReader(bytes(payload), what)
    if width != 1 or len(payload) < HEADER.size:
        raise CorruptData(f"{what}: rows-lpc needs one-byte elements and its header")
    order, codec, length = HEADER.unpack(reader.take(HEADER.size))
    # Only what the encoder writes: a corrupt header must not buy a decode loop of its own size.
    if order != ORDER or not ROW_LENGTHS[0] <= length <= ROW_LENGTHS[1] or decoded_length % length:
        raise CorruptData(f"{what}: rows-lpc order {order}, row length {length} for {decoded_length} bytes")
    rows = decoded_length // length
    coef_bytes = rows * order * 2
    body = decompress(reader.take(len(payload) - HEADER.size), codec, coef_bytes + decoded_length, what)
    coefs = np.frombuffer(body[:coef_bytes], dtype="<i2").astype(np.int64).reshape(rows, order)
    res = np.frombuffer(body[coef_bytes:], dtype=np.uint8).astype(np.int64).reshape(rows, length)
    out = np.empty((rows, length), dtype=np.int64)
    out[:, :order] = signed(res[:, :order])
    for i in range(order, length):
        pred = np.zeros(rows, dtype=np.int64)
        for j in range(order):
            pred += coefs[:, j] * out[:, i - 1 - j]
        out[:, i] = signed(((pred + (1 << (SHIFT - 1))) >> SHIFT) + res[:, i])
    return out.astype(np.int8).tobytes()


def _summary(params: dict) -> str:
    return f"rows-lpc {params['row_length']} x order {params['order']} + {params['inner']}"


register(Coder(ID, "rows-lpc", decode, min_version=VERSION, propose=propose, order=95, summary=_summary))
