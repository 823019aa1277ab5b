"""Context-modelled static rANS coding of symbol streams, vectorised over lanes with numpy.

Huffman spends a whole number of bits per symbol and codes every symbol with the same
table, so it can at best reach the zero-order entropy.  This coder spends fractional bits
(range ANS, Duda 2013) and conditions each symbol's probabilities on the symbol before it:
quantized and shared weights are strongly correlated along a row (pruned input columns,
runs of equal cluster indices), so the conditional entropy is below the zero-order one.

* Context: the previous symbol of the stream.  The ``contexts - 1`` most frequent symbols
  each open a context (a frequency table) of their own, in order of frequency; all other
  symbols share the last one.  The first symbol of a lane is coded in context 0.  The
  encoder picks the number of contexts and the precision that minimise the estimated
  size (tables included; near-ties go to fewer contexts and lower precision, which decode
  faster), so short or memoryless streams fall back to one table.
* Lanes: the stream is cut into ``lanes`` contiguous blocks of ``lane_symbols`` symbols
  (the last one may be shorter).  Every lane is its own rANS stream (32-bit state, 16-bit
  words), and all lanes advance together, one symbol per lane per numpy step; the previous
  symbol of a lane is the one decoded in the step before, so contexts cost nothing extra.
  The lanes' words are interleaved in one word stream: at each step the lanes that
  renormalise read (decoder) / wrote (encoder) one word each, in lane order.
* Frequencies: each context's table sums to ``2**precision``; a used symbol may have
  frequency 0 in a context where it never occurs.

Stream layout (FORMAT.md), all integers little-endian::

    u64 symbol_count | u32 alphabet_size | u8 precision | u8 contexts | u16 reserved=0 | u32 lane_symbols
    precision == 0:  u32 the one symbol (a constant or empty stream has no payload)
    precision >= 1:  ceil(alphabet_size/8) bytes: bitmap of the used symbols (LSB first), U >= 2 of them
                     (contexts - 1) x u16: the symbols with a context of their own, context 0 first
                     frequency table, bit-packed MSB first, contexts x U entries in context-major order:
                       ceil(5*contexts*U / 8) bytes: each entry's bit length L (0 = frequency 0)
                       ceil(sum(L-1) / 8) bytes: each entry's low L-1 bits (the top bit is implied)
                     lanes x u32 final lane states, u64 word_count, word_count x u16 words
    where lanes = ceil(symbol_count / lane_symbols); padding bits are zero.

Decoding: lane j holds symbols j*lane_symbols ... and starts in its stored state x and in
context 0.  Each step, every lane that has symbols left: slot = x mod 2**precision; the
symbol is the one whose range [cum, cum + freq) of the context's table (cumulative over
the used symbols in increasing order) holds slot; x = freq * (x >> precision) + slot - cum;
if x < 2**16, x = (x << 16) | the next word (lanes in increasing order); the next context
is the one the symbol opens.  At the end every lane is in state 2**16 and every word is read.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from . import ByteReader, CorruptData, symbol_counts

MAX_ALPHABET = 1 << 15
MAX_PRECISION = 16  # frequencies sum to at most 2**16, so one 16-bit word always renormalises
MAX_CONTEXTS = 16
STATE_LOW = 1 << 16  # rANS state interval [2**16, 2**32)
WORD_BITS = 16
LENGTH_BITS = 5  # a frequency <= 2**16 has a bit length <= 17
HEADER_BYTES = 20
# Each lane costs a few bytes (the encoder starts it in the state 2**16, whose 16 bits
# carry nothing, and flushes a 32-bit state) but each numpy step advances all lanes at
# once.  Lanes aim at LANE_PAYLOAD_BYTES of payload each, within [MIN_LANE_SYMBOLS,
# MAX_LANE_SYMBOLS] symbols, and long streams use up to MAX_LANES lanes.
LANE_PAYLOAD_BYTES = 512
MIN_LANE_SYMBOLS = 1024
MAX_LANE_SYMBOLS = 4096
MAX_LANES = 8192
CONTEXT_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16)
# The encoder prefers precisions up to 14 bits: closer to the 16-bit state bound rANS
# codes less exactly, and the decoder's tables (contexts x 2**precision) outgrow the cache.
PREFERRED_PRECISION = 14
NEAR_TIE = 0.002
PAIR_ALPHABET = 1024  # up to here, joint counts come from one bincount of symbol pairs
COUNT_CHUNK = 1 << 22
ENCODE_BLOCK = 1 << 20  # symbols of the lane grid made at a time
SCALAR_LANES = 32  # up to this many lanes, coding steps through Python integers instead of numpy

_HEADER = struct.Struct("<QIBBHI")


# ------------------------------------------------------------------ bit packing


def _pack_bits(values: np.ndarray, widths: np.ndarray) -> bytes:
    """``values[i]`` in ``widths[i]`` bits (MSB first), concatenated and zero-padded to bytes."""
    values = np.asarray(values, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    top = int(widths.max(initial=0))
    if top == 0:
        return b""
    columns = np.arange(top, dtype=np.int64)
    bits = (values[:, None] >> (top - 1 - columns)[None, :]) & 1
    keep = columns[None, :] >= (top - widths)[:, None]
    return np.packbits(bits[keep].astype(np.uint8)).tobytes()


def _unpack_bits(data: np.ndarray, widths: np.ndarray, what: str) -> np.ndarray:
    """Inverse of _pack_bits for known widths (``data`` holds exactly the padded bytes)."""
    widths = np.asarray(widths, dtype=np.int64)
    total = int(widths.sum())
    bits = np.unpackbits(np.asarray(data, dtype=np.uint8))
    if np.any(bits[total:]):
        raise CorruptData(f"{what}: padding bits are not zero")
    owner = np.repeat(np.arange(widths.size), widths)
    ends = np.cumsum(widths)
    exponent = ends[owner] - 1 - np.arange(total)
    weights = bits[:total].astype(np.int64) << exponent
    return np.bincount(owner, weights=weights, minlength=widths.size).astype(np.int64)


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Bit length of non-negative integers < 2**20 (0 for 0)."""
    values = np.asarray(values, dtype=np.int64)
    # v = m * 2**e with 0.5 <= m < 1: e is v's bit length, exactly for integers this small (frexp(0) = (0, 0)).
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)


# ------------------------------------------------------------------ models


def normalize_counts(counts: np.ndarray, total_frequency: int) -> np.ndarray:
    """Frequencies summing to ``total_frequency``, >= 1 wherever the count is, near-proportional.

    Floors of the proportional shares (at least 1), then the remainder goes to (or is taken
    from) the symbols with the largest count per frequency, one unit each per round.  Only
    integer arithmetic and correctly rounded divisions, so the result is the same everywhere.
    A row of zero counts gets the whole total on its first entry (a context that never occurs).
    """
    counts = np.asarray(counts, dtype=np.int64)
    freq = np.zeros_like(counts)
    for row in range(counts.shape[0]):
        c = counts[row]
        total = int(c.sum())
        if total == 0:
            freq[row, 0] = total_frequency
            continue
        used = c > 0
        if int(np.count_nonzero(used)) > total_frequency:
            raise ValueError("more symbols than the precision can represent")
        f = np.where(used, np.maximum(1, (c * total_frequency) // total), 0)
        missing = total_frequency - int(f.sum())
        while missing > 0:
            gain = np.where(used, c / np.maximum(f, 1), -1.0)
            take = np.argsort(-gain, kind="stable")[: min(missing, int(np.count_nonzero(used)))]
            f[take] += 1
            missing -= take.size
        while missing < 0:
            shrinkable = f > 1
            loss = np.where(shrinkable, c / np.maximum(f - 1, 1), np.inf)
            take = np.argsort(loss, kind="stable")[: min(-missing, int(np.count_nonzero(shrinkable)))]
            f[take] -= 1
            missing += take.size
        freq[row] = f
    return freq


def _cost_bits(counts: np.ndarray, freq: np.ndarray, precision: int) -> float:
    """Estimated payload bits of coding ``counts`` with ``freq`` (ideal rANS cost)."""
    used = counts > 0
    return float(np.sum(counts[used] * (precision - np.log2(freq[used]))))


def _table_bits(freq: np.ndarray) -> int:
    lengths = _bit_length(freq)
    return int(LENGTH_BITS * freq.size + np.maximum(lengths - 1, 0).sum())


def _context_counts(joint: np.ndarray, contexts: int) -> np.ndarray:
    """Merge the rows of ``joint`` (counts by previous-symbol rank) into ``contexts`` rows."""
    if contexts >= joint.shape[0]:
        return joint
    return np.vstack([joint[: contexts - 1], joint[contexts - 1 :].sum(axis=0, keepdims=True)])


def _joint_counts(symbols, index_of, by_rank) -> np.ndarray:
    """Counts by (rank of the previous symbol, clipped to MAX_CONTEXTS - 1) x symbol (used index)."""
    used_count = by_rank.size
    alphabet = index_of.size
    rows = min(MAX_CONTEXTS, used_count)
    rank_of = np.full(alphabet, rows - 1, dtype=np.int64)
    rank_of[by_rank[: rows - 1]] = np.arange(rows - 1)
    if alphabet <= PAIR_ALPHABET:
        # One pass over the stream: counts of (previous, current) pairs, then merged by rank.
        pairs = np.zeros(alphabet * alphabet, dtype=np.int64)
        pair_count = symbols.size - 1
        for start in range(0, pair_count, COUNT_CHUNK):  # chunks bound the temporary arrays
            stop = min(start + COUNT_CHUNK, pair_count)
            pair = symbols[start:stop].astype(np.int64) * alphabet
            pair += symbols[start + 1 : stop + 1]
            pairs += np.bincount(pair, minlength=alphabet * alphabet)
        pairs = pairs.reshape(alphabet, alphabet)
        by_previous = np.zeros((rows, alphabet), dtype=np.int64)
        np.add.at(by_previous, rank_of, pairs)
        joint = by_previous[:, np.sort(by_rank)]
        joint[0, index_of[symbols[0]]] += 1  # the first symbol has no predecessor: context 0
    else:
        joint = np.zeros(rows * used_count, dtype=np.int64)
        for start in range(0, symbols.size, COUNT_CHUNK):
            chunk = symbols[start : start + COUNT_CHUNK]
            key = np.empty(chunk.size, dtype=np.int64)
            # the first symbol has no predecessor: context 0
            key[0] = rank_of[symbols[start - 1]] if start else 0
            np.take(rank_of, chunk[:-1], out=key[1:])
            key *= used_count
            key += index_of[chunk]
            joint += np.bincount(key, minlength=rows * used_count)
        joint = joint.reshape(rows, used_count)
    return joint


def _restart_lanes(joint, symbols, index_of, by_rank, lane_symbols) -> np.ndarray:
    """``joint`` of the whole stream with every lane start moved to context 0."""
    rows = joint.shape[0]
    rank_of = np.full(index_of.size, rows - 1, dtype=np.int64)
    rank_of[by_rank[: rows - 1]] = np.arange(rows - 1)
    joint = joint.copy()
    starts = np.arange(lane_symbols, symbols.size, lane_symbols)
    np.add.at(joint, (rank_of[symbols[starts - 1]], index_of[symbols[starts]]), -1)
    np.add.at(joint, (np.zeros(starts.size, dtype=np.int64), index_of[symbols[starts]]), 1)
    return joint


def _precision_needed(context_counts: np.ndarray) -> int:
    widest = int(np.count_nonzero(context_counts, axis=1).max())
    return max(1, (widest - 1).bit_length())


def lane_symbols_for(count: int, payload_bits: float) -> int:
    """Symbols per lane for a stream of ``count`` symbols costing about ``payload_bits``."""
    per_symbol = max(payload_bits / max(count, 1), 1e-3)
    target = math.ceil(LANE_PAYLOAD_BYTES * 8 / per_symbol)
    lane = min(MAX_LANE_SYMBOLS, max(MIN_LANE_SYMBOLS, target))
    return int(min(max(count, 1), max(lane, math.ceil(count / MAX_LANES))))


# ------------------------------------------------------------------ encode


@dataclass(frozen=True)
class Plan:
    """How ``encode`` will code a stream: the model, the lanes, and the estimated size."""

    count: int
    alphabet_size: int
    used: np.ndarray  # the symbols that occur, increasing
    context_symbols: np.ndarray  # the symbols that open contexts 0 .. contexts-2
    precision: int  # 0 for a constant (or empty) stream
    lane_symbols: int
    freq: np.ndarray  # contexts x used, each row summing to 2**precision
    estimated_bytes: int  # about len(encode(...)): exact but for the payload, within a byte per lane

    @property
    def contexts(self) -> int:
        return int(self.freq.shape[0]) if self.precision else 0

    @property
    def table_bytes(self) -> int:
        """The stream's bytes before its payload: header, used-symbol bitmap, context symbols, tables."""
        if not self.precision:
            return HEADER_BYTES + 4
        lengths = _bit_length(self.freq)
        tables = (LENGTH_BITS * self.freq.size + 7) // 8 + (int(np.maximum(lengths - 1, 0).sum()) + 7) // 8
        return HEADER_BYTES + (self.alphabet_size + 7) // 8 + 2 * (self.contexts - 1) + tables


def plan(
    symbols: np.ndarray,
    alphabet_size: int,
    contexts: int | None = None,
    precision: int | None = None,
    lane_symbols: int | None = None,
) -> Plan:
    """The model and lanes ``encode`` uses for these symbols (nothing is coded).

    ``contexts`` and ``precision`` default to the pair that minimises the estimated size;
    ``lane_symbols`` to ``lane_symbols_for`` the estimated size.
    """
    symbols = _checked_symbols(symbols, alphabet_size)
    count = int(symbols.size)
    counts = symbol_counts(symbols, alphabet_size)
    used = np.flatnonzero(counts)
    if used.size <= 1:
        empty = np.zeros((0, 0), dtype=np.int64)
        return Plan(count, alphabet_size, used, used[:0], 0, 0, empty, HEADER_BYTES + 4)
    # Symbols as indices into the used ones; ranks by frequency (ties by symbol) name contexts.
    index_of = np.zeros(alphabet_size, dtype=np.int32)
    index_of[used] = np.arange(used.size)
    by_rank = used[np.argsort(-counts[used], kind="stable")]

    # Choose contexts and precision on the counts of the whole stream (lane starts barely
    # matter), then the lanes from the estimated size, then the final tables.
    joint = _joint_counts(symbols, index_of, by_rank)
    # Sizes are about convex in both the precision and the number of contexts: each search
    # stops once the size grows.
    candidates = []
    context_options = [contexts] if contexts is not None else [c for c in CONTEXT_CHOICES if c <= used.size]
    for n_contexts in context_options:
        if not 1 <= n_contexts <= min(MAX_CONTEXTS, used.size):
            raise ValueError(f"contexts {n_contexts} out of range for {used.size} used symbols")
        ctx_counts = _context_counts(joint, n_contexts)
        needed = _precision_needed(ctx_counts)
        precision_options = (
            [precision] if precision is not None else range(needed, max(needed, PREFERRED_PRECISION) + 1)
        )
        best_so_far = min((c[0] for c in candidates), default=math.inf)
        previous = math.inf
        for bits in precision_options:
            if not needed <= bits <= MAX_PRECISION:
                raise ValueError(f"precision {bits} cannot represent {used.size} symbols")
            freq = normalize_counts(ctx_counts, 1 << bits)
            payload = _cost_bits(ctx_counts, freq, bits)
            size = 16 * (n_contexts - 1) + _table_bits(freq) + payload
            candidates.append((size, n_contexts, bits, payload))
            if size > previous:
                break
            previous = size
        if previous > best_so_far:
            break
    # The fewest contexts, then the lowest precision, within a hair of the smallest estimate:
    # smaller decoding tables are faster, and near-ties are noise of the counts (the float
    # estimates could differ in the last bit between math libraries: that matters only at an
    # exact boundary).
    smallest = min(c[0] for c in candidates)
    _, n_contexts, bits, payload = next(c for c in candidates if c[0] <= smallest * (1 + NEAR_TIE))
    lane_symbols = lane_symbols_for(count, payload) if lane_symbols is None else min(count, int(lane_symbols))
    if lane_symbols < 1:
        raise ValueError(f"lane_symbols {lane_symbols} out of range")
    ctx_counts = _context_counts(_restart_lanes(joint, symbols, index_of, by_rank, lane_symbols), n_contexts)
    bits = max(bits, _precision_needed(ctx_counts))
    freq = normalize_counts(ctx_counts, 1 << bits)
    lanes = -(-count // lane_symbols)
    lengths = _bit_length(freq)
    table_bytes = (LENGTH_BITS * freq.size + 7) // 8 + (int(np.maximum(lengths - 1, 0).sum()) + 7) // 8
    # Words and final states hold the payload plus the 16 empty bits each lane starts with,
    # and a final state rarely carries a full 16 bits of payload: about 3 bytes per lane.
    coded_bytes = math.ceil(_cost_bits(ctx_counts, freq, bits) / 8) + 3 * lanes
    estimate = HEADER_BYTES + (alphabet_size + 7) // 8 + 2 * (n_contexts - 1) + table_bytes + 8 + coded_bytes
    return Plan(count, alphabet_size, used, by_rank[: n_contexts - 1], bits, lane_symbols, freq, estimate)


def estimated_size(symbols: np.ndarray, alphabet_size: int) -> int:
    """About ``len(encode(symbols, alphabet_size))``, without coding."""
    return plan(symbols, alphabet_size).estimated_bytes


def _checked_symbols(symbols, alphabet_size: int) -> np.ndarray:
    symbols = np.asarray(symbols).ravel()
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise ValueError(f"alphabet size {alphabet_size} out of range")
    if symbols.size and symbols.dtype.kind not in "iub":
        raise ValueError(f"symbols must be integers, not {symbols.dtype}")
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet_size):
        raise ValueError("symbol outside the alphabet")
    return symbols.astype(np.uint16, copy=False)  # alphabet <= 2**15


def encode(
    symbols: np.ndarray,
    alphabet_size: int,
    contexts: int | None = None,
    precision: int | None = None,
    lane_symbols: int | None = None,
) -> bytes:
    """rANS-code a stream of symbols in [0, alphabet_size) into the stream layout above.

    The options are ``plan``'s.  The output depends only on the inputs.
    """
    chosen = plan(symbols, alphabet_size, contexts, precision, lane_symbols)
    return encode_with(symbols, chosen)


def encode_with(symbols: np.ndarray, chosen: Plan, block_symbols: int = ENCODE_BLOCK) -> bytes:
    """Code the stream with a ``plan`` made for exactly these symbols.

    The lanes' symbols are gathered about ``block_symbols`` at a time; the bytes do not depend on it.
    """
    symbols = _checked_symbols(symbols, chosen.alphabet_size)
    count, alphabet_size, used = chosen.count, chosen.alphabet_size, chosen.used
    if chosen.precision == 0:
        symbol = int(used[0]) if used.size else 0
        return _HEADER.pack(count, alphabet_size, 0, 0, 0, 0) + struct.pack("<I", symbol)
    index_of = np.zeros(alphabet_size, dtype=np.int32)
    index_of[used] = np.arange(used.size)
    freq, bits, lane_symbols, context_symbols = (
        chosen.freq,
        chosen.precision,
        chosen.lane_symbols,
        chosen.context_symbols,
    )
    states, words = _encode_lanes(
        symbols, index_of, context_symbols, freq, bits, lane_symbols, block_symbols, chosen.estimated_bytes // 2
    )

    bitmap = np.zeros(((alphabet_size + 7) // 8) * 8, dtype=np.uint8)
    bitmap[used] = 1
    lengths = _bit_length(freq.ravel())
    mantissa_widths = np.maximum(lengths - 1, 0)
    mantissas = freq.ravel() - np.where(lengths > 0, 1 << np.maximum(lengths - 1, 0), 0)
    return b"".join(
        [
            _HEADER.pack(count, alphabet_size, bits, chosen.contexts, 0, lane_symbols),
            np.packbits(bitmap, bitorder="little").tobytes(),
            context_symbols.astype("<u2").tobytes(),
            _pack_bits(lengths, np.full(lengths.size, LENGTH_BITS)),
            _pack_bits(mantissas, mantissa_widths),
            states.astype("<u4").tobytes(),
            struct.pack("<Q", words.size),
            memoryview(words.astype("<u2", copy=False)).cast("B"),
        ]
    )


def _context_of(used_count: int, context_symbols: np.ndarray, index_of: np.ndarray) -> np.ndarray:
    """The context each symbol (as a used index) opens: its place among the context symbols, else the last."""
    context_of = np.full(used_count, context_symbols.size, dtype=np.int64)
    context_of[index_of[context_symbols]] = np.arange(context_symbols.size)
    return context_of


def _cumulative(freq: np.ndarray) -> np.ndarray:
    cumulative = np.zeros_like(freq)
    np.cumsum(freq[:, :-1], axis=1, out=cumulative[:, 1:])
    return cumulative


def _step_rows(symbols, index_of, lanes: int, lane_symbols: int, first: int, stop: int) -> np.ndarray:
    """rows[k - first, j] = index_of[symbol k of lane j] for steps first <= k < stop (0 past the end)."""
    rows = np.zeros((stop - first, lanes), dtype=index_of.dtype)
    whole = symbols[: (lanes - 1) * lane_symbols].reshape(lanes - 1, lane_symbols)
    rows[:, : lanes - 1] = index_of[whole[:, first:stop]].T
    rest = symbols[(lanes - 1) * lane_symbols :][first:stop]
    rows[: rest.size, lanes - 1] = index_of[rest]
    return rows


def _encode_lanes(
    symbols,
    index_of,
    context_symbols,
    freq,
    bits,
    lane_symbols,
    block_symbols=ENCODE_BLOCK,
    words_guess=0,
    context_of=None,
):
    """Final lane states and the interleaved words (the decoder's order: steps, then lanes).

    ``context_of`` (the context each used index opens) replaces the one ``context_symbols`` define."""
    count = symbols.size
    used_count = freq.shape[1]
    lanes = -(-count // lane_symbols)
    last_lane = count - (lanes - 1) * lane_symbols
    # key = context * used_count + symbol indexes the flattened tables.
    freq_flat = freq.ravel()
    cum_flat = _cumulative(freq).ravel()
    if context_of is None:
        context_of = _context_of(used_count, context_symbols, index_of)
    context_row = np.asarray(context_of, dtype=np.int64) * used_count  # first key of the opened context
    if lanes <= SCALAR_LANES:
        return _encode_lanes_scalar(index_of[symbols], lanes, lane_symbols, freq_flat, cum_flat, context_row, bits)
    narrow_index = index_of.astype(np.uint16)  # used indices < 2**15
    state = np.full(lanes, STATE_LOW, dtype=np.int64)
    # Words are emitted last step first: they fill ``words`` from its end (grown if the
    # plan's estimate of the stream, which exceeds its words, was short).
    words = np.empty(max(words_guess, lanes), dtype=np.uint16)
    low = words.size  # words[low:] are the words emitted so far, in the decoder's order
    key = np.empty(lanes, dtype=np.int64)
    f = np.empty(lanes, dtype=np.int64)
    c = np.empty(lanes, dtype=np.int64)
    limit = np.empty(lanes, dtype=np.int64)
    over = np.empty(lanes, dtype=bool)
    quotient = np.empty(lanes, dtype=np.int64)
    remainder = np.empty(lanes, dtype=np.int64)
    shift = 32 - bits
    # Steps are coded last to first, from a window of the step grid (step k of every lane,
    # and step k-1 for its context) made about ``block_symbols`` symbols at a time.
    span = max(1, block_symbols // lanes)
    for top in range(lane_symbols, 0, -span):
        bottom = max(0, top - span)
        first = max(0, bottom - 1)
        grid = _step_rows(symbols, narrow_index, lanes, lane_symbols, first, top)
        for step in range(top - 1, bottom - 1, -1):
            row = step - first
            active = lanes if step < last_lane else lanes - 1
            x = state[:active]
            k, fa, ca, lim, ov = key[:active], f[:active], c[:active], limit[:active], over[:active]
            q, r = quotient[:active], remainder[:active]
            if step:
                context_row.take(grid[row - 1, :active], out=k, mode="clip")
                k += grid[row, :active]
            else:
                k[:] = grid[row, :active]
            freq_flat.take(k, out=fa, mode="clip")
            cum_flat.take(k, out=ca, mode="clip")
            np.left_shift(fa, shift, out=lim)
            np.greater_equal(x, lim, out=ov)
            if ov.any():
                low_bits = x[ov]
                if low_bits.size > low:
                    words, low = _grown(words, low, low_bits.size)
                words[low - low_bits.size : low] = low_bits  # the low 16 bits
                low -= low_bits.size
                np.right_shift(x, WORD_BITS, out=x, where=ov)
            np.divmod(x, fa, out=(q, r))
            np.left_shift(q, bits, out=x)
            x += r
            x += ca
    return state, words[low:]


def _grown(words: np.ndarray, low: int, need: int) -> tuple[np.ndarray, int]:
    """``words`` with at least ``need`` free entries before ``low`` (the filled tail is kept)."""
    extra = max(need, words.size)
    grown = np.empty(words.size + extra, dtype=words.dtype)
    grown[low + extra :] = words[low:]
    return grown, low + extra


def _encode_lanes_scalar(indices, lanes, lane_symbols, freq_flat, cum_flat, context_row, bits):
    """_encode_lanes with Python integers, for few lanes (where numpy's per-call cost dominates)."""
    indices = indices.tolist()
    freq_flat, cum_flat, context_row = freq_flat.tolist(), cum_flat.tolist(), context_row.tolist()
    count = len(indices)
    last_lane = count - (lanes - 1) * lane_symbols
    state = [STATE_LOW] * lanes
    steps = []
    shift = 32 - bits
    for step in range(lane_symbols - 1, -1, -1):
        active = lanes if step < last_lane else lanes - 1
        emitted = []
        for lane in range(active):
            at = lane * lane_symbols + step
            key = indices[at] + (context_row[indices[at - 1]] if step else 0)
            f = freq_flat[key]
            x = state[lane]
            if x >= f << shift:
                emitted.append(x & 0xFFFF)
                x >>= WORD_BITS
            state[lane] = ((x // f) << bits) + x % f + cum_flat[key]
        steps.append(emitted)
    words = [word for emitted in reversed(steps) for word in emitted]
    return np.array(state, dtype=np.int64), np.array(words, dtype=np.uint16)


# ------------------------------------------------------------------ decode


def decode(reader, expected_count: int, alphabet_size: int, what: str = "rans stream") -> np.ndarray:
    """Decode one stream (at a ByteReader's position, or all of a bytes-like); returns uint16 symbols.

    Every declared size is checked before anything is allocated, the tables must be
    consistent, every step's words must exist, and every lane must end in the encoder's
    initial state after consuming exactly the stored words; anything else raises CorruptData.
    """
    whole = not isinstance(reader, ByteReader)
    if whole:
        reader = ByteReader(reader, what)
    count = reader.u64(f"{what} header")
    alphabet = reader.u32(f"{what} header")
    bits = reader.u8(f"{what} header")
    n_contexts = reader.u8(f"{what} header")
    reserved = reader.u16(f"{what} header")
    lane_symbols = reader.u32(f"{what} header")
    if count != expected_count:
        raise CorruptData(f"{what}: {count} symbols declared, {expected_count} expected")
    if alphabet != alphabet_size or not 1 <= alphabet <= MAX_ALPHABET:
        raise CorruptData(f"{what}: alphabet of {alphabet} symbols, {alphabet_size} expected")
    if reserved != 0 or bits > MAX_PRECISION:
        raise CorruptData(f"{what}: bad header (precision {bits}, reserved {reserved})")
    if bits == 0:
        if n_contexts != 0 or lane_symbols != 0:
            raise CorruptData(f"{what}: constant stream with contexts or lanes")
        symbol = reader.u32(f"{what} symbol")
        if symbol >= alphabet:
            raise CorruptData(f"{what}: constant symbol {symbol} outside the alphabet")
        out = np.full(count, symbol, dtype=np.uint16)
    else:
        out = _decode_body(reader, count, alphabet, bits, n_contexts, lane_symbols, what)
    if whole:
        reader.expect_end()
    return out


def describe(data) -> dict:
    """The header of a stream as a dict (symbols, alphabet, precision, contexts, lane_symbols, lanes)."""
    reader = data if isinstance(data, ByteReader) else ByteReader(data, "rans stream")
    count = reader.u64("rans header")
    alphabet = reader.u32("rans header")
    bits = reader.u8("rans header")
    contexts = reader.u8("rans header")
    reader.u16("rans header")
    lane_symbols = reader.u32("rans header")
    lanes = -(-count // lane_symbols) if bits and lane_symbols else 0
    return {
        "symbols": count,
        "alphabet": alphabet,
        "precision": bits,
        "contexts": contexts,
        "lane_symbols": lane_symbols,
        "lanes": lanes,
    }


def _decode_body(reader, count, alphabet, bits, n_contexts, lane_symbols, what) -> np.ndarray:
    if count == 0 or not 1 <= lane_symbols <= count:
        raise CorruptData(f"{what}: bad lane size {lane_symbols} for {count} symbols")
    bitmap = np.unpackbits(reader.array(np.uint8, (alphabet + 7) // 8, f"{what} symbol bitmap"), bitorder="little")
    if np.any(bitmap[alphabet:]):
        raise CorruptData(f"{what}: symbol bitmap padding is not zero")
    used = np.flatnonzero(bitmap)
    if used.size < 2 or not 1 <= n_contexts <= min(MAX_CONTEXTS, used.size):
        raise CorruptData(f"{what}: {n_contexts} contexts for {used.size} used symbols")
    context_symbols = reader.array(np.uint16, n_contexts - 1, f"{what} contexts").astype(np.int64)
    if np.any(context_symbols >= alphabet) or not np.all(bitmap[context_symbols]):
        raise CorruptData(f"{what}: a context symbol is not used")
    if np.unique(context_symbols).size != context_symbols.size:
        raise CorruptData(f"{what}: repeated context symbol")
    entries = n_contexts * used.size
    length_bytes = reader.array(np.uint8, (LENGTH_BITS * entries + 7) // 8, f"{what} frequency lengths")
    lengths = _unpack_bits(length_bytes, np.full(entries, LENGTH_BITS), f"{what} frequency lengths")
    if np.any(lengths > MAX_PRECISION + 1):
        raise CorruptData(f"{what}: a frequency is longer than the precision")
    widths = np.maximum(lengths - 1, 0)
    mantissa_bytes = reader.array(np.uint8, (int(widths.sum()) + 7) // 8, f"{what} frequencies")
    mantissas = _unpack_bits(mantissa_bytes, widths, f"{what} frequencies")
    freq = (np.where(lengths > 0, 1 << widths, 0) + mantissas).reshape(n_contexts, used.size)
    if np.any(freq.sum(axis=1) != 1 << bits):
        raise CorruptData(f"{what}: a frequency table does not sum to 2**{bits}")
    lanes = -(-count // lane_symbols)
    states = reader.array(np.uint32, lanes, f"{what} lane states").astype(np.int64)
    if np.any(states < STATE_LOW):
        raise CorruptData(f"{what}: a lane state is below 2**16")
    word_count = reader.u64(f"{what} word count")
    # Each lane reads at most one word per symbol.
    if word_count > count:
        raise CorruptData(f"{what}: {word_count} words for {count} symbols")
    words = reader.array(np.uint16, word_count, f"{what} words").astype(np.int64)
    index_of = np.zeros(alphabet, dtype=np.int64)
    index_of[used] = np.arange(used.size)
    decoded = _decode_lanes(states, words, count, lane_symbols, index_of, context_symbols, freq, bits, what)
    return used.astype(np.uint16)[decoded]


def _slot_tables(context_of, freq, bits):
    """Per (context, slot): the symbol, its frequency, slot - cumulative, and the next context's row."""
    n_contexts, used_count = freq.shape
    total = 1 << bits
    symbol = np.empty(n_contexts * total, dtype=np.uint16)
    for row in range(n_contexts):
        symbol[row * total : (row + 1) * total] = np.repeat(np.arange(used_count), freq[row])
    cumulative = _cumulative(freq)
    rows = np.repeat(np.arange(n_contexts), total)
    slot = np.tile(np.arange(total, dtype=np.int64), n_contexts)
    frequency = freq[rows, symbol]
    delta = slot - cumulative[rows, symbol]
    next_row = context_of[symbol] * total
    return symbol, frequency, delta, next_row


def _decode_lanes(states, words, count, lane_symbols, index_of, context_symbols, freq, bits, what, context_of=None):
    lanes = states.size
    last_lane = count - (lanes - 1) * lane_symbols
    if context_of is None:
        context_of = _context_of(freq.shape[1], context_symbols, index_of)
    tables = _slot_tables(context_of, freq, bits)
    if lanes <= SCALAR_LANES:
        return _decode_lanes_scalar(states, words, count, lane_symbols, tables, bits, what)
    symbol_t, freq_t, delta_t, next_t = tables
    out = np.empty((lane_symbols, lanes), dtype=np.uint16)
    x = states.copy()
    base = np.zeros(lanes, dtype=np.int64)  # a lane starts in context 0
    index = np.empty(lanes, dtype=np.int64)
    f = np.empty(lanes, dtype=np.int64)
    d = np.empty(lanes, dtype=np.int64)
    low = np.empty(lanes, dtype=bool)
    mask = (1 << bits) - 1
    position = 0
    word_count = words.size
    for step in range(lane_symbols):
        if step == last_lane:  # the last lane is shorter: drop it
            x, base, index, f, d, low = x[:-1], base[:-1], index[:-1], f[:-1], d[:-1], low[:-1]
        np.bitwise_and(x, mask, out=index)
        index += base
        # mode="clip" skips numpy's buffered bounds check: base + slot is always in range.
        symbol_t.take(index, out=out[step, : x.size], mode="clip")
        freq_t.take(index, out=f, mode="clip")
        delta_t.take(index, out=d, mode="clip")
        next_t.take(index, out=base, mode="clip")
        x >>= bits
        x *= f
        x += d
        np.less(x, STATE_LOW, out=low)
        refill = int(np.count_nonzero(low))
        if refill:
            if position + refill > word_count:
                raise CorruptData(f"{what}: words run out")
            x[low] = (x[low] << WORD_BITS) | words[position : position + refill]
            position += refill
    if position != word_count or np.any(x != STATE_LOW):
        raise CorruptData(f"{what}: lanes do not end in the initial state after all words")
    return out.T.reshape(-1)[:count]


def _decode_lanes_scalar(states, words, count, lane_symbols, tables, bits, what) -> np.ndarray:
    """_decode_lanes with Python integers, for few lanes (where numpy's per-call cost dominates)."""
    symbol_t, freq_t, delta_t, next_t = (t.tolist() for t in tables)
    words = words.tolist()
    lanes = len(states)
    last_lane = count - (lanes - 1) * lane_symbols
    x = states.tolist()
    base = [0] * lanes
    out = np.empty((lanes, lane_symbols), dtype=np.uint16)
    rows = [[0] * lane_symbols for _ in range(lanes)]
    mask = (1 << bits) - 1
    position = 0
    word_count = len(words)
    active = lanes
    for step in range(lane_symbols):
        if step == last_lane:
            active = lanes - 1
        for lane in range(active):
            state = x[lane]
            index = base[lane] + (state & mask)
            rows[lane][step] = symbol_t[index]
            base[lane] = next_t[index]
            state = freq_t[index] * (state >> bits) + delta_t[index]
            if state < STATE_LOW:
                if position == word_count:
                    raise CorruptData(f"{what}: words run out")
                state = (state << WORD_BITS) | words[position]
                position += 1
            x[lane] = state
    if position != word_count or any(state != STATE_LOW for state in x):
        raise CorruptData(f"{what}: lanes do not end in the initial state after all words")
    for lane in range(lanes):
        out[lane] = rows[lane]
    return out.reshape(-1)[:count]
