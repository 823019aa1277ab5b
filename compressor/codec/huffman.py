"""Canonical, length-limited Huffman coding of symbol streams, vectorised with numpy.

* Code lengths come from package-merge (optimal under the ``MAX_CODE_LENGTH`` = 15 bit
  limit), so decoding tables stay at most 2**15 entries.  Only the lengths are stored;
  codes are canonical (ordered by length, then symbol), bits are written MSB first.
* Encoding is vectorised: every code is placed into a 24-bit window at its bit offset
  and the windows are summed byte by byte (codes never overlap, so sum == or).
* Decoding is table-driven and lane-parallel: symbol i of a stream belongs to lane
  i mod n_lanes, each lane is coded contiguously, and the bit length of every lane is
  stored.  All lanes are decoded together, one symbol per lane per numpy step, through a
  table indexed by the next ``max_len`` bits; step k yields symbols k*n_lanes ... in
  stream order, so the output needs no transpose.

Stream layout (FORMAT.md §6), all integers little-endian::

    u64 symbol_count | u32 alphabet_size | u8 max_len | u8 reserved=0 | u16 lane_symbols
    max_len == 0:  u32 the one symbol (a constant stream has no payload)
    max_len >= 1:  ceil(alphabet_size/2) bytes of 4-bit code lengths (high nibble first)
                   n_lanes x u16 lane bit lengths, u64 payload_bytes, payload
    where n_lanes = ceil(symbol_count / lane_symbols)
"""

from __future__ import annotations

import math
import struct

import numpy as np

from . import ByteReader, CorruptData, symbol_counts

MAX_CODE_LENGTH = 15
MAX_ALPHABET = 1 << MAX_CODE_LENGTH  # package-merge needs n_used <= 2**max_len
MAX_LANE_SYMBOLS = 4096  # 4096 * 15 bits < 2**16: a lane's bit length fits a u16
# Decoding costs one numpy step per symbol of a lane, for all lanes at once: many lanes
# make it fast, but each costs a u16 in the lane table.  1024 symbols per lane (~0.3 % of
# a 5-bit stream) up to 1 M symbols, then ~1024 lanes, at most 4096 symbols each.
MIN_LANE_SYMBOLS = 1024
TARGET_LANES = 1024
HEADER_BYTES = 16


# ------------------------------------------------------------------ code lengths


def code_lengths(counts: np.ndarray, max_len: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal length-limited prefix-code lengths (package-merge) for symbol counts.

    Unused symbols get length 0.  A single used symbol gets length 1 (callers that can
    should code it as a constant stream instead).  Ties are broken by symbol index, so
    the result is deterministic.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.uint8)
    used = np.flatnonzero(counts)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used] = 1
        return lengths
    if n > (1 << max_len):
        raise ValueError(f"{n} symbols cannot be coded with codes of at most {max_len} bits")
    order = used[np.argsort(counts[used], kind="stable")]
    leaf_weights = counts[order]
    # Level lists from the deepest (length max_len) upwards.  Each list is the sorted merge
    # of the leaves and the pairwise packages of the previous list.  The selected items of
    # every list are a prefix of it, so we only need, per list, which positions are leaves.
    leaf_flags = [np.ones(n, dtype=bool)]
    previous = leaf_weights
    leaf_true = np.ones(n, dtype=bool)
    for _ in range(max_len - 1):
        pairs = previous.size // 2
        packages = previous[0 : 2 * pairs : 2] + previous[1 : 2 * pairs : 2]
        merged = np.concatenate([leaf_weights, packages])
        is_leaf = np.concatenate([leaf_true, np.zeros(pairs, dtype=bool)])
        order_merged = np.argsort(merged, kind="stable")  # leaves first on ties
        previous = merged[order_merged]
        leaf_flags.append(is_leaf[order_merged])
    depth = np.zeros(n, dtype=np.int64)
    selected = 2 * n - 2
    for flags in reversed(leaf_flags):
        leaves = int(np.count_nonzero(flags[:selected]))
        depth[:leaves] += 1  # the `leaves` lightest symbols sit one level deeper
        selected = 2 * (selected - leaves)
    lengths[order] = depth
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes (uint32) for code lengths: shorter codes first, then by symbol."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.uint32)
    code = 0
    previous_len = 0
    for length in range(1, int(lengths.max(initial=0)) + 1):
        symbols = np.flatnonzero(lengths == length)
        code <<= length - previous_len
        previous_len = length
        codes[symbols] = code + np.arange(symbols.size, dtype=np.uint32)
        code += symbols.size
    return codes


def kraft_complete(lengths: np.ndarray) -> bool:
    """True if the non-zero lengths form a complete prefix code (sum of 2**-len == 1)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    used = lengths[lengths > 0]
    if used.size == 0:
        return False
    top = int(used.max())
    return int(np.sum(np.left_shift(1, top - used, dtype=np.int64))) == (1 << top)


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon bound of a stream with these symbol counts, in bits (n * H)."""
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(-(counts * np.log2(counts / total)).sum())


# ------------------------------------------------------------------ sizes


def lane_symbols_for(count: int) -> int:
    """Most symbols per lane (see MIN_LANE_SYMBOLS)."""
    return int(min(MAX_LANE_SYMBOLS, max(MIN_LANE_SYMBOLS, math.ceil(count / TARGET_LANES))))


def lane_count(count: int, lane_symbols: int) -> int:
    return -(-count // lane_symbols)


def stream_size(counts: np.ndarray, alphabet_size: int | None = None) -> int:
    """Exact size in bytes of ``encode`` for a stream with these symbol counts (nothing is coded)."""
    counts = np.asarray(counts, dtype=np.int64)
    alphabet_size = counts.size if alphabet_size is None else alphabet_size
    total = int(counts.sum())
    if np.count_nonzero(counts) <= 1:
        return HEADER_BYTES + 4
    lengths = code_lengths(counts)
    bits = int(np.dot(counts, lengths.astype(np.int64)))
    return table_bytes(alphabet_size, total) + (bits + 7) // 8


def table_bytes(alphabet_size: int, count: int) -> int:
    """Bytes of a (non-constant) stream that are not payload: header, code lengths, lane table."""
    return HEADER_BYTES + (alphabet_size + 1) // 2 + 2 * lane_count(count, lane_symbols_for(count)) + 8


# ------------------------------------------------------------------ encode


ENCODE_CHUNK = 1 << 20


def _pack_codes(codes: np.ndarray, lengths: np.ndarray, words: np.ndarray, bit_offset: int) -> None:
    """OR MSB-first codes (<= 15 bits each) into big-endian 64-bit ``words`` from ``bit_offset``.

    Neighbouring codes are merged twice (4 codes, <= 60 bits, per group); each group then
    lands in at most two words, and the groups of one word are OR-reduced with reduceat
    (groups come in bit order, so a word's groups are contiguous).
    """
    values = codes.astype(np.uint64)
    bits = lengths.astype(np.uint64)
    for _ in range(2):
        if values.size & 1:
            values = np.append(values, np.uint64(0))
            bits = np.append(bits, np.uint64(0))
        values = (values[0::2] << bits[1::2]) | values[1::2]
        bits = bits[0::2] + bits[1::2]
    ends = np.cumsum(bits.astype(np.int64))
    ends += bit_offset
    word = (ends - bits.astype(np.int64)) >> 6
    over = ends - (word << 6) - 64  # > 0: the group spills into the next word
    spill = np.maximum(over, 0).astype(np.uint64)
    head = (values >> spill) << np.maximum(-over, 0).astype(np.uint64)
    tail = np.where(over > 0, values << ((np.uint64(64) - spill) & np.uint64(63)), np.uint64(0))
    firsts = np.flatnonzero(np.diff(word, prepend=-1))
    targets = word[firsts]
    words[targets] |= np.bitwise_or.reduceat(head, firsts)
    words[targets + 1] |= np.bitwise_or.reduceat(tail, firsts)


def _lane_blocks(symbols: np.ndarray, lanes: int, rows: int, block_symbols: int):
    """The symbols in lane order (lane j holds symbols j, j + lanes, j + 2*lanes, ...), as
    blocks of whole lanes of about ``block_symbols`` symbols: yields (symbols, lane sizes)."""
    count = symbols.size
    full_lanes = count - (rows - 1) * lanes  # lanes 0..full_lanes-1 hold `rows` symbols, the rest rows-1
    body = symbols[: (rows - 1) * lanes].reshape(rows - 1, lanes)
    last = symbols[(rows - 1) * lanes :]
    step = max(1, block_symbols // rows)
    for first in range(0, lanes, step):
        stop = min(lanes, first + step)
        grid = np.empty((stop - first, rows), dtype=symbols.dtype)
        grid[:, : rows - 1] = body[:, first:stop].T
        full = min(max(full_lanes - first, 0), stop - first)
        grid[:full, rows - 1] = last[first : first + full]
        sizes = np.full(stop - first, rows - 1, dtype=np.int64)
        sizes[:full] = rows
        if full == stop - first:
            yield grid.reshape(-1), sizes
        else:  # drop the padding at the end of the short lanes
            yield np.concatenate([grid[:full].reshape(-1), grid[full:, : rows - 1].reshape(-1)]), sizes


def encode(
    symbols: np.ndarray, alphabet_size: int, counts: np.ndarray | None = None, block_symbols: int = ENCODE_CHUNK
) -> bytes:
    """Huffman-code a stream of symbols in [0, alphabet_size) into the stream layout above.

    Symbols are coded about ``block_symbols`` at a time (whole lanes), so per-symbol
    temporaries stay bounded; the bytes do not depend on it.
    """
    symbols = np.asarray(symbols).ravel()
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise ValueError(f"alphabet size {alphabet_size} out of range")
    count = int(symbols.size)
    if counts is None:
        counts = symbol_counts(symbols, alphabet_size)
    if counts.size != alphabet_size:
        raise ValueError("symbol outside the alphabet")
    used = np.flatnonzero(counts)
    if used.size <= 1:
        # Constant (or empty) stream: no payload, the header names the symbol.
        symbol = int(used[0]) if used.size else 0
        return struct.pack("<QIBBHI", count, alphabet_size, 0, 0, 0, symbol)
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    max_len = int(lengths.max())
    lane_symbols = lane_symbols_for(count)
    lanes = lane_count(count, lane_symbols)
    rows = -(-count // lanes)
    total_bits = int(np.dot(np.asarray(counts, dtype=np.int64), lengths.astype(np.int64)))
    words = np.zeros(total_bits // 64 + 2, dtype=np.uint64)
    lane_bits = np.empty(lanes, dtype=np.int64)
    bit = 0
    lane = 0
    for block, sizes in _lane_blocks(symbols, lanes, rows, block_symbols):
        block_bits = lengths[block]  # uint8: at most 15 bits a symbol
        starts = np.zeros(sizes.size, dtype=np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        lane_bits[lane : lane + sizes.size] = np.add.reduceat(block_bits, starts, dtype=np.int64)
        lane += sizes.size
        for start in range(0, block.size, ENCODE_CHUNK):
            chunk_bits = block_bits[start : start + ENCODE_CHUNK]
            _pack_codes(codes[block[start : start + ENCODE_CHUNK]], chunk_bits, words, bit)
            bit += int(chunk_bits.sum(dtype=np.int64))
    if bit != total_bits:
        raise ValueError("counts do not match the symbols")
    payload = words.astype(">u8").view(np.uint8)[: (total_bits + 7) // 8]
    nibbles = np.zeros(alphabet_size + (alphabet_size & 1), dtype=np.uint8)
    nibbles[:alphabet_size] = lengths
    packed_lengths = (nibbles[0::2] << 4) | nibbles[1::2]
    header = struct.pack("<QIBBH", count, alphabet_size, max_len, 0, lane_symbols)
    return b"".join(
        [
            header,
            packed_lengths.tobytes(),
            lane_bits.astype("<u2").tobytes(),
            struct.pack("<Q", payload.size),
            payload.tobytes(),
        ]
    )


# ------------------------------------------------------------------ decode


def _decode_table(lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbol and code length for every ``max_len``-bit window (complete codes fill it)."""
    codes = canonical_codes(lengths)
    used = np.flatnonzero(lengths)
    spans = np.left_shift(1, max_len - lengths[used].astype(np.int64))
    firsts = codes[used].astype(np.int64) << (max_len - lengths[used].astype(np.int64))
    # Canonical codes of a complete code tile [0, 2**max_len) in order of their first window.
    order = np.argsort(firsts, kind="stable")
    table_symbols = np.repeat(used[order], spans[order]).astype(np.uint16)
    table_lengths = np.repeat(lengths[used][order], spans[order]).astype(np.uint64)
    return table_symbols, table_lengths


def decode(reader: ByteReader, expected_count: int, alphabet_size: int, what: str = "huffman stream") -> np.ndarray:
    """Decode one stream at the reader's position; returns uint16 symbols.

    Every declared size is checked before anything is allocated: the symbol count and the
    alphabet must match what the caller expects, tables must fit the bytes left, lane
    lengths must add up to the payload, and every lane must end exactly where its length
    says.
    """
    count = reader.u64(f"{what} header")
    alphabet = reader.u32(f"{what} header")
    max_len = reader.u8(f"{what} header")
    reserved = reader.u8(f"{what} header")
    lane_symbols = reader.u16(f"{what} header")
    if count != expected_count:
        raise CorruptData(f"{what}: {count} symbols declared, {expected_count} expected")
    if alphabet != alphabet_size:
        raise CorruptData(f"{what}: alphabet of {alphabet} symbols, {alphabet_size} expected")
    if reserved != 0 or max_len > MAX_CODE_LENGTH:
        raise CorruptData(f"{what}: bad header (max_len {max_len}, reserved {reserved})")
    if max_len == 0:
        if lane_symbols != 0:
            raise CorruptData(f"{what}: constant stream with lanes")
        symbol = reader.u32(f"{what} symbol")
        if symbol >= alphabet:
            raise CorruptData(f"{what}: constant symbol {symbol} outside the alphabet")
        return np.full(count, symbol, dtype=np.uint16)
    if count == 0 or not 1 <= lane_symbols <= MAX_LANE_SYMBOLS:
        raise CorruptData(f"{what}: bad lane size {lane_symbols} for {count} symbols")
    packed = reader.array(np.uint8, (alphabet + 1) // 2, f"{what} code lengths")
    lengths = np.empty(packed.size * 2, dtype=np.uint8)
    lengths[0::2] = packed >> 4
    lengths[1::2] = packed & 0x0F
    if alphabet & 1 and lengths[-1] != 0:
        raise CorruptData(f"{what}: padding nibble is not zero")
    lengths = lengths[:alphabet]
    if int(lengths.max()) != max_len or not kraft_complete(lengths):
        raise CorruptData(f"{what}: code lengths do not form a complete prefix code")
    lanes = lane_count(count, lane_symbols)
    lane_bits = reader.array(np.uint16, lanes, f"{what} lane table").astype(np.uint64)
    payload_bytes = reader.u64(f"{what} payload length")
    payload = reader.array(np.uint8, payload_bytes, f"{what} payload")
    total_bits = int(lane_bits.sum())
    if (total_bits + 7) // 8 != payload_bytes:
        raise CorruptData(f"{what}: lane lengths add up to {total_bits} bits, payload has {payload_bytes} bytes")
    # Every symbol costs at least one bit: a cheap bound against lying counts.
    if total_bits < count:
        raise CorruptData(f"{what}: {total_bits} bits cannot hold {count} symbols")
    return _decode_lanes(payload, lane_bits, count, lengths, max_len, what)


def _windows(payload: np.ndarray, pad: int) -> np.ndarray:
    """words[i] = the 64 bits starting at byte i (big-endian), for i < payload.size + pad.

    One gather then gives a lane's window, and a left shift by the bit offset drops the
    bits already consumed.  Built from 8 strided big-endian views (one per byte offset).
    """
    n = payload.size + pad
    rows = -(-n // 8)
    buffer = np.zeros(rows * 8 + 8, dtype=np.uint8)
    buffer[: payload.size] = payload
    words = np.empty((rows, 8), dtype=np.uint64)
    for offset in range(8):
        words[:, offset] = np.frombuffer(buffer.data, dtype=">u8", offset=offset, count=rows)
    return words.reshape(-1)


def _decode_lanes(payload, lane_bits, count, lengths, max_len, what) -> np.ndarray:
    table_symbols, table_lengths = _decode_table(lengths, max_len)
    lanes = lane_bits.size
    rows = -(-count // lanes)
    full_lanes = count - (rows - 1) * lanes
    starts = np.zeros(lanes, dtype=np.uint64)
    np.cumsum(lane_bits[:-1], out=starts[1:])
    # Lanes may run past their end (corrupt data, or a lane one symbol short), so pad the
    # payload by the most a lane can read: rows * max_len bits plus a 64-bit window.
    words = _windows(payload, (rows * max_len) // 8 + 16)
    out = np.empty((rows, lanes), dtype=np.uint16)
    pos = starts.copy()
    short_end = starts.copy() if rows == 1 else None  # where lanes with rows-1 symbols stop
    byte = np.empty_like(pos)
    shift = np.empty_like(pos)
    window = np.empty_like(pos)
    step_bits = np.empty_like(pos)
    byte_index, window_index = byte.view(np.int64), window.view(np.int64)
    drop, three, seven = np.uint64(64 - max_len), np.uint64(3), np.uint64(7)
    take_words, take_symbols, take_lengths = words.take, table_symbols.take, table_lengths.take
    right_shift, left_shift, bitwise_and, add = np.right_shift, np.left_shift, np.bitwise_and, np.add
    # One symbol per lane per step.  mode="clip" avoids numpy's buffered bounds check; the
    # padding keeps every index in range anyway, and the end checks below catch bad data.
    for step in range(rows):
        right_shift(pos, three, out=byte)
        bitwise_and(pos, seven, out=shift)
        take_words(byte_index, out=window, mode="clip")
        left_shift(window, shift, out=window)
        right_shift(window, drop, out=window)
        take_symbols(window_index, out=out[step], mode="clip")
        take_lengths(window_index, out=step_bits, mode="clip")
        add(pos, step_bits, out=pos)
        if step == rows - 2:
            short_end = pos.copy()
    ends = starts + lane_bits
    if not (
        np.array_equal(pos[:full_lanes], ends[:full_lanes])
        and np.array_equal(short_end[full_lanes:], ends[full_lanes:])
    ):
        raise CorruptData(f"{what}: a lane does not end where its length says")
    return out.reshape(-1)[:count]
