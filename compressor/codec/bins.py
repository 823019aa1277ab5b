"""Symbols coded by rANS under tables that a few binary probabilities define (a binarised model,
after DeepCABAC), in contexts of the previous symbol's magnitude.

A symbol ``s`` in ``[0, K)`` is taken as the signed offset ``d = s - centre`` from a centre
symbol (the packer's codebooks are ordered by value, the centre is the most frequent symbol:
a weight's zero or its mode).  ``d`` is binarised as DeepCABAC binarises a quantized weight: a
significance bin (``d != 0``), a sign bin, the bit length ``e`` of ``|d|`` in unary (``e > 1``?,
``e > 2``? ... up to the longest length the alphabet allows), then the ``e - 1`` bits of ``|d|``
below its top bit, the first two with probabilities of their own and the rest even.  Each bin's
probability is one transmitted byte (``p / 256`` that the bin is 1):

* significance and length bins, per *class* of the previous symbol: ``min(e_prev, C - 1)``
  (class 0: the previous symbol was the centre);
* the sign bin, per sign of the previous symbol (negative, zero, positive) or one for all;
* the two top bits below ``|d|``'s top bit, per length ``e`` (the second given the first).

Multiplying a symbol's bin probabilities gives its probability in each context (class x sign
of the previous symbol); the tables, normalised to ``2**precision``, drive the lane-parallel
static rANS coder of ``codec.rans`` (the same lanes, states, words and decoder).  Where
``dict-rans`` sends a frequency per symbol and context, this sends a few dozen bytes whatever
the alphabet, so magnitude contexts pay off on tensors of a few thousand weights too, and the
unary length bins model any spread of magnitudes.

Stream layout (FORMAT.md §7.8), all integers little-endian::

    u64 symbol_count | u16 alphabet_size K | u16 centre | u8 precision | u8 classes C
    u8 sign_contexts S (1 or 3) | u8 reserved=0 | u32 lane_symbols
    probabilities, one u8 each in 1..255:  C significance | S sign | C x (E - 1) length
                                           | for e = 2..E: 1 (e == 2) or 3 (e > 2) mantissa
    lanes x u32 final lane states | u64 word_count | word_count x u16 words

where ``E`` is the bit length of ``max(centre, K - 1 - centre)`` and ``lanes = ceil(symbol_count
/ lane_symbols)``.  Tables: for each context ``c * S + s``, symbol ``t``'s weight starts at
``2**44`` and for each of its bins becomes ``(w * f) >> 8`` with ``f = p`` for a 1 and ``256 - p``
for a 0 (``f = 128`` for the even mantissa bits), at least 1; the weights are then normalised to
``2**precision`` by ``rans.normalize_counts``.  A lane starts in context 0.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from . import ByteReader, CorruptData, rans

HEADER = struct.Struct("<QHHBBBBI")
MAX_CLASSES = 8
SIGN_CONTEXT_CHOICES = (1, 3)
PRECISION = 14  # the encoder's finest; the decoder accepts MIN_PRECISION..MAX_PRECISION
MIN_PRECISION = 10
# The encoder tries coarser tables too and keeps the coarsest within NEAR_TIE of the smallest
# estimate: the decoder's tables (contexts x 2**precision entries) are built per tensor, and
# small alphabets lose nothing measurable at 11 or 12 bits.
PRECISION_CHOICES = (11, 12, 13, 14)
NEAR_TIE = 0.001
MAX_PRECISION = 14  # contexts x 2**precision decoding tables stay a few MB
WEIGHT_BITS = 44  # weights stay below 2**52: exact in int64 and in float64 (normalize_counts)
PROB_ONE = 256
# The even mantissa bits (below the top two) are each one half.
HALF = PROB_ONE // 2
# A lane's final state (4 bytes) carries about 2 bytes of payload and its first word starts
# from the empty state 2**16: about 3 bytes a lane beyond the payload's entropy (measured).
LANE_OVERHEAD_BYTES = 3
COUNT_CHUNK = 1 << 22
# Lanes aim at LANE_PAYLOAD_BYTES each (0.1 % overhead where ``codec.rans``'s 512 spend 0.6 %
# and more), within MAX_LANE_SYMBOLS symbols
# so that the decoder's numpy steps (one symbol of every lane each) stay few.
LANE_PAYLOAD_BYTES = 4096
MAX_LANE_SYMBOLS = 4096


def max_alphabet(precision: int) -> int:
    """The largest alphabet a table of ``2**precision`` codes without crowding it (every symbol >= 1)."""
    return 1 << (precision - 2)


def _bit_length(values: np.ndarray) -> np.ndarray:
    return rans._bit_length(values)


@dataclass(frozen=True)
class Shape:
    """The binarisation of an alphabet around its centre: each symbol's offset, magnitude, length."""

    alphabet: int
    centre: int

    @property
    def offsets(self) -> np.ndarray:
        return np.arange(self.alphabet, dtype=np.int64) - self.centre

    @property
    def longest(self) -> int:
        """E: the bit length of the largest magnitude the alphabet allows."""
        return int(max(self.centre, self.alphabet - 1 - self.centre)).bit_length()

    def parameter_count(self, classes: int, signs: int) -> int:
        longest = self.longest
        mantissa = sum(1 if e == 2 else 3 for e in range(2, longest + 1))
        return classes + signs + classes * max(longest - 1, 0) + mantissa

    def context_of(self, classes: int, signs: int) -> np.ndarray:
        """The context each symbol opens for the next one: class x sign of its offset."""
        d = self.offsets
        cls = np.minimum(_bit_length(np.abs(d)), classes - 1)
        sign = np.where(d == 0, 0, np.where(d > 0, 1, 2)) if signs == 3 else np.zeros_like(d)
        return cls * signs + sign


def _probability(ones: np.ndarray, total: np.ndarray) -> np.ndarray:
    """(ones + 1/2) / (total + 1) in 1/256ths, rounded, within 1..255 (integer arithmetic)."""
    ones = np.asarray(ones, dtype=np.int64)
    total = np.asarray(total, dtype=np.int64)
    p = (2 * PROB_ONE * ones + PROB_ONE + total + 1) // (2 * total + 2)
    return np.clip(p, 1, PROB_ONE - 1)


def estimate_parameters(shape: Shape, counts: np.ndarray, classes: int, signs: int) -> np.ndarray:
    """The probabilities (u8, in stream order) that fit ``counts`` (contexts x alphabet)."""
    d = shape.offsets
    m = np.abs(d)
    e = _bit_length(m)
    longest = shape.longest
    by_class = counts.reshape(classes, signs, -1).sum(axis=1)
    by_sign = counts.reshape(classes, signs, -1).sum(axis=0)
    every = counts.sum(axis=0)
    params = [_probability(by_class[:, m > 0].sum(axis=1), by_class.sum(axis=1))]
    params.append(_probability(by_sign[:, d < 0].sum(axis=1), by_sign[:, m > 0].sum(axis=1)))
    length = np.zeros((classes, max(longest - 1, 0)), dtype=np.int64)
    for k in range(1, longest):
        length[:, k - 1] = _probability(by_class[:, e > k].sum(axis=1), by_class[:, e >= k].sum(axis=1))
    params.append(length.ravel())
    mantissa = []
    for k in range(2, longest + 1):
        in_length = e == k
        rest = m - (1 << (k - 1))
        top = (rest >> (k - 2)) & 1
        mantissa.append(_probability(every[in_length & (top == 1)].sum(), every[in_length].sum()))
        if k > 2:
            second = (rest >> (k - 3)) & 1
            for t in (0, 1):
                sel = in_length & (top == t)
                mantissa.append(_probability(every[sel & (second == 1)].sum(), every[sel].sum()))
    params.append(np.array(mantissa, dtype=np.int64))
    return np.concatenate(params).astype(np.int64)


def tables(shape: Shape, params: np.ndarray, classes: int, signs: int, precision: int) -> np.ndarray:
    """Frequencies (contexts x alphabet, rows summing to ``2**precision``) the probabilities define."""
    d = shape.offsets
    m = np.abs(d)
    e = _bit_length(m)
    longest = shape.longest
    params = np.asarray(params, dtype=np.int64)
    significance = params[:classes]
    sign = params[classes : classes + signs]
    at = classes + signs
    length = params[at : at + classes * max(longest - 1, 0)].reshape(classes, max(longest - 1, 0))
    at += length.size
    # The mantissa bins' factors, the same in every context.
    shared = []  # (mask, factor) pairs applied in order
    for k in range(2, longest + 1):
        in_length = e == k
        rest = m - (1 << (k - 1))
        top = (rest >> (k - 2)) & 1
        p_top = params[at]
        at += 1
        shared.append((in_length, np.where(top == 1, p_top, PROB_ONE - p_top)))
        if k > 2:
            second = (rest >> (k - 3)) & 1
            p_second = np.where(top == 1, params[at + 1], params[at])
            at += 2
            shared.append((in_length, np.where(second == 1, p_second, PROB_ONE - p_second)))
            for _ in range(k - 3):
                shared.append((in_length, np.full(shape.alphabet, HALF, dtype=np.int64)))
    weights = np.empty((classes * signs, shape.alphabet), dtype=np.int64)
    for cls in range(classes):
        for s in range(signs):
            p, q = significance[cls], sign[s]
            factors = [(m >= 0, np.where(m > 0, p, PROB_ONE - p)), (m > 0, np.where(d < 0, q, PROB_ONE - q))]
            for k in range(1, longest):
                p = length[cls, k - 1]
                factors.append((e >= k, np.where(e > k, p, PROB_ONE - p)))
            w = np.full(shape.alphabet, 1 << WEIGHT_BITS, dtype=np.int64)
            for mask, factor in factors + shared:
                w = np.where(mask, (w * factor) >> 8, w)
            weights[cls * signs + s] = np.maximum(w, 1)
    return rans.normalize_counts(weights, 1 << precision)


def _cost_bits(counts: np.ndarray, freq: np.ndarray, precision: int) -> float:
    used = counts > 0
    return float(np.sum(counts[used] * (precision - np.log2(freq[used]))))


@dataclass(frozen=True)
class Plan:
    shape: Shape
    classes: int
    signs: int
    params: np.ndarray
    freq: np.ndarray
    lane_symbols: int
    estimated_bytes: int
    precision: int = PRECISION

    @property
    def contexts(self) -> int:
        return self.classes * self.signs


def _fine_counts(symbols: np.ndarray, shape: Shape, lane_symbols: int) -> np.ndarray:
    """Counts by (the previous symbol's class of MAX_CLASSES x its sign, of 3) x symbol; a lane's
    first symbol counts as following the centre (context 0).  Counted a chunk at a time, so the
    int64 keys never span the whole stream."""
    fine = shape.context_of(MAX_CLASSES, 3)
    rows = MAX_CLASSES * 3
    counts = np.zeros(rows * shape.alphabet, dtype=np.int64)
    for start in range(0, symbols.size, COUNT_CHUNK):
        chunk = symbols[start : start + COUNT_CHUNK]
        key = np.empty(chunk.size, dtype=np.int64)
        key[0] = fine[symbols[start - 1]] if start else 0
        np.take(fine, chunk[:-1], out=key[1:])
        key[(-start) % lane_symbols :: lane_symbols] = 0  # lane starts
        key *= shape.alphabet
        key += chunk
        counts += np.bincount(key, minlength=rows * shape.alphabet)
    return counts.reshape(rows, shape.alphabet)


def _merged(fine: np.ndarray, classes: int, signs: int) -> np.ndarray:
    by = fine.reshape(MAX_CLASSES, 3, -1)
    merged_classes = np.concatenate([by[: classes - 1], by[classes - 1 :].sum(axis=0, keepdims=True)])
    if signs == 1:
        return merged_classes.sum(axis=1)
    return merged_classes.reshape(classes * 3, -1)


def plan(symbols: np.ndarray, alphabet: int, centre: int) -> Plan:
    """The classes and sign contexts (and their probabilities) of the smallest estimated stream."""
    symbols = np.asarray(symbols).ravel()
    count = symbols.size
    if count == 0 or not 2 <= alphabet <= max_alphabet(PRECISION) or not 0 <= centre < alphabet:
        raise ValueError("a bins stream needs symbols, an alphabet of 2..4096 and a centre inside it")
    shape = Shape(alphabet, centre)
    zero_order = np.bincount(symbols, minlength=alphabet)
    nz = zero_order[zero_order > 0]
    entropy_bits = float(-(nz * np.log2(nz / count)).sum())
    lanes = max(math.ceil(entropy_bits / 8 / LANE_PAYLOAD_BYTES), math.ceil(count / MAX_LANE_SYMBOLS))
    lane_symbols = -(-count // lanes)
    lanes = -(-count // lane_symbols)
    fine = _fine_counts(symbols, shape, lane_symbols)

    def size_of(counts, params, freq, precision) -> int:
        cost = math.ceil(_cost_bits(counts, freq, precision) / 8)
        return HEADER.size + params.size + 8 + cost + LANE_OVERHEAD_BYTES * lanes

    best = None
    for signs in SIGN_CONTEXT_CHOICES:
        for classes in range(1, MAX_CLASSES + 1):
            counts = _merged(fine, classes, signs)
            params = estimate_parameters(shape, counts, classes, signs)
            freq = tables(shape, params, classes, signs, PRECISION)
            size = size_of(counts, params, freq, PRECISION)
            if best is None or size < best.estimated_bytes:
                best = Plan(shape, classes, signs, params, freq, lane_symbols, size)
    counts = _merged(fine, best.classes, best.signs)
    choices = [best]
    for precision in PRECISION_CHOICES:
        if precision < PRECISION and alphabet <= max_alphabet(precision):
            freq = tables(shape, best.params, best.classes, best.signs, precision)
            size = size_of(counts, best.params, freq, precision)
            choices.append(Plan(shape, best.classes, best.signs, best.params, freq, lane_symbols, size, precision))
    smallest = min(c.estimated_bytes for c in choices)
    return min((c for c in choices if c.estimated_bytes <= smallest * (1 + NEAR_TIE)), key=lambda c: c.precision)


def encode_with(symbols: np.ndarray, chosen: Plan) -> bytes:
    symbols = np.asarray(symbols).ravel().astype(np.uint16, copy=False)
    shape = chosen.shape
    index_of = np.arange(shape.alphabet, dtype=np.int32)
    context_of = shape.context_of(chosen.classes, chosen.signs)
    states, words = rans._encode_lanes(
        symbols,
        index_of,
        None,
        chosen.freq,
        chosen.precision,
        chosen.lane_symbols,
        words_guess=chosen.estimated_bytes // 2,
        context_of=context_of,
    )
    return b"".join(
        [
            HEADER.pack(
                symbols.size,
                shape.alphabet,
                shape.centre,
                chosen.precision,
                chosen.classes,
                chosen.signs,
                0,
                chosen.lane_symbols,
            ),
            chosen.params.astype(np.uint8).tobytes(),
            states.astype("<u4").tobytes(),
            struct.pack("<Q", words.size),
            memoryview(words.astype("<u2", copy=False)).cast("B"),
        ]
    )


def encode(symbols: np.ndarray, alphabet: int, centre: int) -> bytes:
    return encode_with(symbols, plan(symbols, alphabet, centre))


def describe(reader: ByteReader) -> dict:
    count, alphabet, centre, precision, classes, signs, _, lane_symbols = _read_header(reader, "bins stream")
    lanes = -(-count // lane_symbols) if lane_symbols else 0
    return {"symbols": count, "centre": centre, "classes": classes, "signs": signs, "lanes": lanes}


def _read_header(reader: ByteReader, what: str):
    return HEADER.unpack(bytes(reader.array(np.uint8, HEADER.size, f"{what} header")))


def decode(reader, expected_count: int, alphabet_size: int, what: str = "bins stream") -> np.ndarray:
    """Decode one stream (at a ByteReader's position, or all of a bytes-like); returns uint16 symbols.

    Every declared size is checked before anything is allocated; anything off raises CorruptData."""
    if not isinstance(reader, ByteReader):
        whole = ByteReader(reader, what)
        out = decode(whole, expected_count, alphabet_size, what)
        whole.expect_end()
        return out
    count, alphabet, centre, precision, classes, signs, reserved, lane_symbols = _read_header(reader, what)
    if count != expected_count or count == 0:
        raise CorruptData(f"{what}: {count} symbols declared, {expected_count} expected")
    if alphabet != alphabet_size or not 2 <= alphabet:
        raise CorruptData(f"{what}: alphabet of {alphabet} symbols, {alphabet_size} expected")
    if not MIN_PRECISION <= precision <= MAX_PRECISION or alphabet > max_alphabet(precision):
        raise CorruptData(f"{what}: precision {precision} for an alphabet of {alphabet}")
    if centre >= alphabet or not 1 <= classes <= MAX_CLASSES or signs not in SIGN_CONTEXT_CHOICES or reserved:
        raise CorruptData(f"{what}: bad header (centre {centre}, classes {classes}, signs {signs})")
    if not 1 <= lane_symbols <= count:
        raise CorruptData(f"{what}: bad lane size {lane_symbols} for {count} symbols")
    shape = Shape(alphabet, centre)
    params = reader.array(np.uint8, shape.parameter_count(classes, signs), f"{what} probabilities").astype(np.int64)
    if np.any(params == 0):
        raise CorruptData(f"{what}: a probability of 0")
    lanes = -(-count // lane_symbols)
    states = reader.array(np.uint32, lanes, f"{what} lane states").astype(np.int64)
    if np.any(states < rans.STATE_LOW):
        raise CorruptData(f"{what}: a lane state is below 2**16")
    word_count = reader.u64(f"{what} word count")
    if word_count > count:  # each lane reads at most one word per symbol
        raise CorruptData(f"{what}: {word_count} words for {count} symbols")
    words = reader.array(np.uint16, word_count, f"{what} words").astype(np.int64)
    freq = tables(shape, params, classes, signs, precision)
    index_of = np.arange(alphabet, dtype=np.int64)
    context_of = shape.context_of(classes, signs)
    decoded = rans._decode_lanes(
        states, words, count, lane_symbols, index_of, None, freq, precision, what, context_of=context_of
    )
    return decoded.astype(np.uint16, copy=False)
