"""Sparse and codebook layouts of a tensor's elements (Deep Compression, Han et al. 2016).

Elements are handled as unsigned integers of their byte width (1, 2, 4 or 8), so every
layout is bit-exact for any dtype: floats keep -0.0 and NaN payloads.

* ``dict``: the distinct values (codebook) plus one Huffman-coded symbol per element.
* ``sparse``: the positions of the elements that differ from a fill value (0, unless
  another value is more frequent) as gaps of a fixed bit width, a filler entry being
  inserted whenever a run of fill values overflows the width; the gap stream is
  Huffman-coded.  The entries' values follow either as codebook + Huffman-coded symbols
  or as raw bytes through a general-purpose codec.

Payload layouts (FORMAT.md §7), integers little-endian::

    dict:   u8 width | u8 0 | u16 0 | u32 K | K*width codebook | huffman(elements symbols, alphabet K)
    sparse: u8 width | u8 gap_width | u8 value_mode | u8 0 | u64 entry_count | width bytes fill value
            huffman(entry_count gaps, alphabet 2**gap_width)
            value_mode 0: u32 K | K*width codebook | huffman(entry_count symbols, alphabet K)
            value_mode 1: u8 codec | u64 stored_length | stored bytes -> entry_count*width bytes
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import GENERIC_NAMES, ByteReader, CorruptData, compress_best, decompress, huffman

ELEMENT_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
MAX_GAP_WIDTH = 15  # 2**15 gap symbols = huffman.MAX_ALPHABET
MAX_CODEBOOK = 4096  # what pack builds; the format allows up to huffman.MAX_ALPHABET
VALUES_CODEBOOK = 0
VALUES_RAW = 1
SPARSE_MIN_FILL = 0.25  # try position coding when at least this share equals the fill value
DICT_HEADER_BYTES = 8
SPARSE_HEADER_BYTES = 12  # + width bytes of fill value
# A tensor's sparse analysis (positions, entry symbols) is dropped once proposed if it holds
# at least this much, and found again only if a sparse layout is built (ElementAnalysis).
RELEASE_BYTES = 64 << 20


def element_view(data, width: int) -> np.ndarray:
    """The bytes as little-endian unsigned integers of ``width`` bytes (no copy)."""
    return np.frombuffer(data, dtype=ELEMENT_DTYPES[width])


# ------------------------------------------------------------------ analysis


@dataclass
class Codebook:
    """Distinct values (sorted), each element's symbol, and how often each value occurs."""

    values: np.ndarray
    symbols: np.ndarray  # uint16
    counts: np.ndarray  # int64

    @property
    def size(self) -> int:
        return int(self.values.size)


def find_codebook(
    values: np.ndarray, limit: int = MAX_CODEBOOK, sample: int = 65536, positions: np.ndarray | None = None
) -> Codebook | None:
    """The codebook of ``values`` (of ``values[positions]`` if given) if they take at most
    ``limit`` distinct values, else None."""
    if positions is not None and values.dtype.itemsize <= 2:
        values, positions = values[positions], None  # narrow: the gathered copy is smaller than positions
    n = values.size if positions is None else positions.size
    if n == 0:
        return None
    if values.dtype.itemsize <= 2:
        counts = np.bincount(values, minlength=1 << (8 * values.dtype.itemsize))
        codebook = np.flatnonzero(counts)
        if codebook.size > limit:
            return None
        lookup = np.zeros(counts.size, dtype=np.uint16)
        lookup[codebook] = np.arange(codebook.size, dtype=np.uint16)
        return Codebook(codebook.astype(values.dtype), lookup[values], counts[codebook].astype(np.int64))

    def block_of(start: int) -> np.ndarray:
        if positions is None:
            return values[start : start + INDEX_BLOCK]
        return values[positions[start : start + INDEX_BLOCK]]

    # Wider elements: guess the codebook from a strided sample, then check every element,
    # block by block (uint16 symbols; no index array of the tensor's length is ever int64).
    stride = max(1, n // sample)
    candidates = np.unique(values[::stride] if positions is None else values[positions[::stride]])
    for _ in range(2):
        if candidates.size > limit:
            return None
        symbols = np.empty(n, dtype=np.uint16)
        counts = np.zeros(candidates.size, dtype=np.int64)
        missing = []
        for start in range(0, n, INDEX_BLOCK):
            block = block_of(start)
            index = np.searchsorted(candidates, block)
            np.minimum(index, candidates.size - 1, out=index)
            wrong = candidates[index] != block
            if wrong.any():
                missing.append(np.unique(block[wrong]))
            symbols[start : start + block.size] = index
            counts += np.bincount(index, minlength=candidates.size)
        if not missing:
            return Codebook(candidates, symbols, counts)
        candidates = np.union1d(candidates, np.unique(np.concatenate(missing)))
    return None  # unreachable: the second pass knows every value


INDEX_BLOCK = 1 << 20  # elements per block where per-element indices are computed


def index_dtype(n: int) -> type:
    """The narrowest signed integer that indexes ``n`` elements, with room for the gap-symbol
    count of a sparse layout (at most twice the elements)."""
    return np.int32 if n < (1 << 30) else np.int64


def flatnonzero_narrow(values: np.ndarray, fill: int | None = None) -> np.ndarray:
    """np.flatnonzero(values) (of ``values != fill`` if given) with int32 indices where they
    fit, computed block by block into one array (no int64 array of the tensor's length)."""
    flat = values.reshape(-1)

    def found_in(start: int) -> np.ndarray:
        block = flat[start : start + INDEX_BLOCK]
        return np.flatnonzero(block if fill is None else block != block.dtype.type(fill))

    if fill is None:
        total = int(np.count_nonzero(flat))
    else:
        total = sum(
            int(np.count_nonzero(flat[i : i + INDEX_BLOCK] != flat.dtype.type(fill)))
            for i in range(0, flat.size, INDEX_BLOCK)
        )
    positions = np.empty(total, dtype=index_dtype(flat.size))
    at = 0
    for start in range(0, flat.size, INDEX_BLOCK):
        found = found_in(start)
        positions[at : at + found.size] = found
        positions[at : at + found.size] += start
        at += found.size
    return positions


def gap_skips(positions: np.ndarray) -> np.ndarray:
    """Fill values skipped before each entry (the first entry counts from position 0)."""
    skips = np.diff(positions, prepend=-1)
    skips -= 1
    return skips


def gap_skip_blocks(positions: np.ndarray, block: int = INDEX_BLOCK):
    """``gap_skips(positions)`` block by block: yields (start, int64 skips of positions[start:start+block])."""
    for start in range(0, positions.size, block):
        part = positions[start : start + block].astype(np.int64)
        previous = int(positions[start - 1]) if start else -1
        skips = np.diff(part, prepend=previous)
        skips -= 1
        yield start, skips


class GapStatistics:
    """Gap-symbol counts for every gap width, from one pass over the skips."""

    def __init__(self, skips: np.ndarray):
        self._values = np.arange(1 << MAX_GAP_WIDTH, dtype=np.int64)
        self.entries = 0
        self.histogram = np.zeros(self._values.size, dtype=np.int64)
        large = []  # runs longer than any width: rare, kept exactly
        self._add(np.asarray(skips), large)
        self.large = np.concatenate(large) if large else np.zeros(0, dtype=np.int64)

    @classmethod
    def of_positions(cls, positions: np.ndarray) -> GapStatistics:
        """The statistics of ``gap_skips(positions)``, counted block by block."""
        stats = cls(np.zeros(0, dtype=np.int64))
        large = [stats.large]
        for _, skips in gap_skip_blocks(positions):
            stats._add(skips, large)
        stats.large = np.concatenate(large)
        return stats

    def _add(self, skips: np.ndarray, large: list) -> None:
        limit = self._values.size
        for start in range(0, skips.size, INDEX_BLOCK):
            part = skips[start : start + INDEX_BLOCK]
            small = part < limit
            self.entries += int(part.size)
            self.histogram += np.bincount(part[small], minlength=limit)
            large.append(part[~small].astype(np.int64))

    def counts(self, width: int) -> tuple[np.ndarray, int]:
        """(counts of the 2**width gap symbols, number of filler entries) at this width."""
        top = (1 << width) - 1
        counts = np.bincount(self._values & top, weights=self.histogram, minlength=top + 1).astype(np.int64)
        fillers = int(np.dot(self.histogram, self._values >> width)) + int(np.sum(self.large >> width))
        if self.large.size:
            counts += np.bincount(self.large & top, minlength=top + 1)
        counts[top] += fillers
        return counts, fillers


def sparse_entries(positions: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap symbols of all entries (fillers included) and the index of each real entry among them.

    A run of s fill values before an entry becomes s // 2**width fillers (gap 2**width - 1,
    each standing on a fill value) followed by the entry with gap s % 2**width.  Computed
    block by block: the indices are the narrowest signed integers that hold them.
    """
    top = (1 << width) - 1
    fillers = sum(int(np.sum(skips >> width)) for _, skips in gap_skip_blocks(positions))
    total = int(positions.size) + fillers
    gaps = np.full(total, top, dtype=np.uint16)
    real_index = np.empty(positions.size, dtype=np.int32 if total < (1 << 31) else np.int64)
    before = 0  # entries (fillers included) before the block
    for start, skips in gap_skip_blocks(positions):
        per_entry = (skips >> width) + 1
        index = np.cumsum(per_entry)
        index += before - 1
        before = int(index[-1]) + 1
        real_index[start : start + index.size] = index
        gaps[index] = skips & top
    return gaps, real_index


def positions_from_gaps(gaps: np.ndarray) -> np.ndarray:
    positions = np.cumsum(gaps.astype(np.int64) + 1)
    positions -= 1
    return positions


# ------------------------------------------------------------------ stream stats


@dataclass
class StreamInfo:
    """One Huffman-coded stream, for the pack report."""

    name: str
    symbols: int
    alphabet: int
    coded_bytes: int  # the whole stream: header, tables and payload
    table_bytes: int
    entropy_bits: float

    def as_dict(self) -> dict:
        payload = self.coded_bytes - self.table_bytes
        bound = self.entropy_bits / 8
        return {
            "stream": self.name,
            "symbols": self.symbols,
            "alphabet": self.alphabet,
            "coded_bytes": self.coded_bytes,
            "payload_bytes": payload,
            "entropy_bound_bytes": round(bound, 1),
            "overhead_pct": round(100.0 * (self.coded_bytes - bound) / bound, 2) if bound > 0 else None,
        }


def stream_info(name: str, counts: np.ndarray) -> StreamInfo:
    total = int(counts.sum())
    size = huffman.stream_size(counts)
    table = min(size, huffman.table_bytes(counts.size, total)) if np.count_nonzero(counts) > 1 else size
    return StreamInfo(name, total, int(counts.size), size, table, huffman.entropy_bits(counts))


# ------------------------------------------------------------------ layouts


@dataclass
class Layout:
    """An exactly sized candidate encoding of one tensor; ``build`` writes it."""

    encoding: str  # "dict" | "sparse"
    size: int
    streams: list[StreamInfo]
    params: dict = field(default_factory=dict)
    builder: object = None
    codebook: tuple | None = (
        None  # dict layouts: (values, counts, symbols or None), for other coders of the same symbols
    )

    def build(self) -> bytes:
        data = self.builder()
        if len(data) != self.size:
            raise AssertionError(f"{self.encoding}: built {len(data)} bytes, sized {self.size}")
        return data


def symbols_of(values: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """Each element's position in the sorted codebook ``values``, as uint16, block by block."""
    flat = elements.reshape(-1)
    symbols = np.empty(flat.size, dtype=np.uint16)
    for start in range(0, flat.size, INDEX_BLOCK):
        symbols[start : start + INDEX_BLOCK] = np.searchsorted(values, flat[start : start + INDEX_BLOCK])
    return symbols


def dict_head(values: np.ndarray, dtype) -> bytes:
    """A dict payload's header and codebook (FORMAT.md §7.1); its symbol stream follows."""
    dtype = np.dtype(dtype)
    return struct.pack("<BBHI", dtype.itemsize, 0, 0, values.size) + values.astype(dtype).tobytes()


def dict_layout(
    elements: np.ndarray, values: np.ndarray, counts: np.ndarray, symbols: np.ndarray | None = None
) -> Layout:
    """Codebook ``values`` (sorted, with their ``counts``) + Huffman-coded symbols of every element.

    ``symbols`` may be left out: they are then looked up only if this layout is built.
    """
    width = elements.dtype.itemsize
    info = stream_info("symbols", counts)
    size = DICT_HEADER_BYTES + values.size * width + info.coded_bytes

    def build() -> bytes:
        coded = symbols if symbols is not None else symbols_of(values, elements)
        return dict_head(values, elements.dtype) + huffman.encode(coded, values.size, counts=counts)

    return Layout("dict", size, [info], {"codebook_size": int(values.size)}, build, (values, counts, symbols))


def with_fill(values_codebook: Codebook, fill: int, fillers: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Codebook values and counts once ``fillers`` fill entries are added; and the fill symbol."""
    values, counts = values_codebook.values, values_codebook.counts
    if fillers == 0:
        return values, counts, -1
    at = int(np.searchsorted(values, fill))
    values = np.insert(values, at, np.array(fill, dtype=values.dtype))
    counts = np.insert(counts, at, fillers)
    return values, counts, at


def _holding(positions: np.ndarray, codebook: Codebook | None) -> Callable[[], tuple]:
    return lambda: (positions, codebook)


def sparse_layouts(
    elements: np.ndarray,
    fill: int,
    positions: np.ndarray,
    codebook: Codebook | None,
    raw: bool = True,
    entries: Callable[[], tuple[np.ndarray, Codebook | None]] | None = None,
) -> list[Layout]:
    """Sparse candidates: the best gap width with codebook values, and with raw values.

    ``positions`` are the indices of the elements that differ from ``fill`` and
    ``codebook`` is the codebook of their values (None if they have too many distinct
    values; it must leave room for the fill value).  Sizes are exact for the codebook
    variant.  The raw variant's values go through a general-purpose codec, so its size is
    only known once built: its Layout.size is 0 and the caller builds it to measure it.
    ``entries()``, if given, returns ``positions`` and ``codebook`` when a layout is built
    (so the layouts need not hold them).
    """
    width = elements.dtype.itemsize
    if entries is None:
        entries = _holding(positions, codebook)
    if positions.size == 0:
        return []
    stats = GapStatistics.of_positions(positions)
    layouts = []
    fixed = SPARSE_HEADER_BYTES + width
    if codebook is not None:
        best = None
        for gap_width in range(1, MAX_GAP_WIDTH + 1):
            gap_counts, fillers = stats.counts(gap_width)
            gap_info = stream_info("gaps", gap_counts)
            values, counts, _ = with_fill(codebook, fill, fillers)
            sym_info = stream_info("symbols", counts)
            size = fixed + gap_info.coded_bytes + 4 + values.size * width + sym_info.coded_bytes
            if best is None or size < best[0]:
                best = (size, gap_width, gap_info, sym_info, values.size)
        size, gap_width, gap_info, sym_info, k = best
        layouts.append(
            Layout(
                "sparse",
                size,
                [gap_info, sym_info],
                {
                    "gap_width": gap_width,
                    "values": "codebook",
                    "codebook_size": k,
                    "fill": int(fill),
                    "nonzeros": int(positions.size),
                },
                lambda width=gap_width: _build_sparse_codebook(elements, fill, *entries(), width),
            )
        )
    if not raw:
        return layouts
    # Raw values: the filler entries each cost a value, so price them at `width` bytes.
    best = None
    for gap_width in range(1, MAX_GAP_WIDTH + 1):
        gap_counts, fillers = stats.counts(gap_width)
        gap_info = stream_info("gaps", gap_counts)
        cost = gap_info.coded_bytes + fillers * width
        if best is None or cost < best[0]:
            best = (cost, gap_width, gap_info)
    _, gap_width, gap_info = best
    layouts.append(
        Layout(
            "sparse",
            0,  # filled in by the caller after building (general-purpose codec)
            [gap_info],
            {"gap_width": gap_width, "values": "raw", "fill": int(fill), "nonzeros": int(positions.size)},
            lambda width=gap_width: _build_sparse_raw(elements, fill, entries()[0], width),
        )
    )
    return layouts


@dataclass
class ElementAnalysis:
    """What the dict and sparse layouts of one tensor are built from (``analyse``)."""

    dict_layout: Layout | None  # codebook + symbols of every element, if few distinct values
    fill: int  # the value position coding skips
    positions: np.ndarray | None  # indices of the elements that differ from ``fill`` (None: not worth it)
    entry_codebook: Codebook | None  # codebook of those elements' values (None: too many)
    elements: np.ndarray | None = field(default=None, repr=False)  # what was analysed (for ``entries``)

    def entries(self) -> tuple[np.ndarray | None, Codebook | None]:
        """``positions`` and ``entry_codebook``, found again if ``release_entries`` dropped them."""
        if self.positions is None and self.elements is not None:
            positions = flatnonzero_narrow(self.elements, self.fill)
            return positions, find_codebook(self.elements, limit=MAX_CODEBOOK - 1, positions=positions)
        return self.positions, self.entry_codebook

    def release_entries(self, min_bytes: int = RELEASE_BYTES) -> None:
        """Drop ``positions`` and ``entry_codebook`` if they hold at least ``min_bytes`` (builds
        that need them find them again): later, larger per-element arrays then need not coexist
        with them."""
        if self.positions is None:
            return
        held = self.positions.nbytes + (self.entry_codebook.symbols.nbytes if self.entry_codebook else 0)
        if held >= min_bytes:
            self.positions, self.entry_codebook = None, None


def analyse(elements: np.ndarray) -> ElementAnalysis:
    """Find the codebook and the fill value of ``elements`` once, for both layouts.

    Mostly zeros: only the non-zeros are analysed and the dense codebook is theirs plus 0.
    Otherwise the dense codebook is found and, when one value fills at least
    ``SPARSE_MIN_FILL`` of the tensor, position coding is tried around it (e.g. a
    non-zero zero-point).
    """
    n = elements.size
    layout, fill, positions, entry_codebook = None, 0, None, None
    zeros = n - int(np.count_nonzero(elements))
    if zeros >= SPARSE_MIN_FILL * n:
        positions = flatnonzero_narrow(elements)
        entry_codebook = find_codebook(elements, limit=MAX_CODEBOOK - 1, positions=positions)
        if entry_codebook is not None:
            values, counts, _ = with_fill(entry_codebook, 0, zeros)
            layout = dict_layout(elements, values, counts)
        elif positions.size == 0:
            layout = dict_layout(elements, elements[:1].copy(), np.array([n], dtype=np.int64))
    else:
        dense = find_codebook(elements, limit=MAX_CODEBOOK)
        if dense is not None:
            layout = dict_layout(elements, dense.values, dense.counts, dense.symbols)
            most = int(np.argmax(dense.counts))
            if dense.counts[most] >= SPARSE_MIN_FILL * n and dense.size > 1:
                fill = int(dense.values[most])
                positions = flatnonzero_narrow(elements, fill)
                entry_codebook = find_codebook(elements, limit=MAX_CODEBOOK - 1, positions=positions)
    return ElementAnalysis(layout, fill, positions, entry_codebook, elements)


def _sparse_header(width: int, gap_width: int, value_mode: int, entries: int, fill: int, dtype) -> bytes:
    return struct.pack("<BBBBQ", width, gap_width, value_mode, 0, entries) + np.array(fill, dtype=dtype).tobytes()


def _build_sparse_codebook(elements, fill, positions, codebook: Codebook, gap_width: int) -> bytes:
    width = elements.dtype.itemsize
    gaps, real_index = sparse_entries(positions, gap_width)
    fillers = gaps.size - positions.size
    values, counts, fill_symbol = with_fill(codebook, fill, fillers)
    if fill_symbol >= 0:
        symbols = np.full(gaps.size, fill_symbol, dtype=np.uint16)
        shifted = codebook.symbols + (codebook.symbols >= fill_symbol).astype(np.uint16)
        symbols[real_index] = shifted
    else:
        symbols = codebook.symbols
    return b"".join(
        [
            _sparse_header(width, gap_width, VALUES_CODEBOOK, gaps.size, fill, elements.dtype),
            huffman.encode(gaps, 1 << gap_width),
            struct.pack("<I", values.size),
            values.astype(elements.dtype).tobytes(),
            huffman.encode(symbols, values.size, counts=counts),
        ]
    )


def _build_sparse_raw(elements, fill, positions, gap_width: int) -> bytes:
    width = elements.dtype.itemsize
    gaps, real_index = sparse_entries(positions, gap_width)
    values = np.full(gaps.size, fill, dtype=elements.dtype)
    for start in range(0, positions.size, INDEX_BLOCK):
        values[real_index[start : start + INDEX_BLOCK]] = elements[positions[start : start + INDEX_BLOCK]]
    del real_index
    codec, stored = compress_best(values.tobytes())
    return b"".join(
        [
            _sparse_header(width, gap_width, VALUES_RAW, gaps.size, fill, elements.dtype),
            huffman.encode(gaps, 1 << gap_width),
            struct.pack("<BQ", codec, len(stored)),
            stored,
        ]
    )


# ------------------------------------------------------------------ decoding


def _read_width(reader: ByteReader, width: int, what: str) -> None:
    got = reader.u8(f"{what} header")
    if got != width:
        raise CorruptData(f"{what}: element width {got}, {width} expected")


def _read_codebook(reader: ByteReader, dtype, what: str) -> np.ndarray:
    size = reader.u32(f"{what} codebook size")
    if not 1 <= size <= huffman.MAX_ALPHABET:
        raise CorruptData(f"{what}: codebook of {size} values")
    return reader.array(dtype, size, f"{what} codebook")


def decode_elements(decoder, payload, width: int, size: int, what: str) -> np.ndarray:
    """Decode a whole dict or sparse payload (``decoder`` is decode_dict or decode_sparse)
    into ``size`` bytes of ``width``-byte elements, as a contiguous array."""
    if width not in ELEMENT_DTYPES or size % width:
        raise CorruptData(f"{what}: {size} bytes are not a whole number of {width}-byte elements")
    reader = ByteReader(payload, what)
    values = decoder(reader, width, size // width, what)
    reader.expect_end()
    return np.ascontiguousarray(values, dtype=ELEMENT_DTYPES[width])


def decode_dict(reader: ByteReader, width: int, elements: int, what: str, decode_symbols=huffman.decode) -> np.ndarray:
    """Decode a dict payload into ``elements`` unsigned integers of ``width`` bytes.

    ``decode_symbols(reader, count, alphabet_size, what)`` reads the symbol stream: Huffman for
    ``dict``, rANS for ``dict-rans`` (same header and codebook)."""
    dtype = ELEMENT_DTYPES[width]
    _read_width(reader, width, what)
    if reader.u8(f"{what} header") != 0 or reader.u16(f"{what} header") != 0:
        raise CorruptData(f"{what}: reserved header bytes are not zero")
    codebook = _read_codebook(reader, dtype, what)
    symbols = decode_symbols(reader, elements, codebook.size, f"{what} symbols")
    return codebook[symbols]


def decode_sparse(reader: ByteReader, width: int, elements: int, what: str) -> np.ndarray:
    """Decode a sparse payload into ``elements`` unsigned integers of ``width`` bytes."""
    dtype = ELEMENT_DTYPES[width]
    _read_width(reader, width, what)
    gap_width = reader.u8(f"{what} header")
    value_mode = reader.u8(f"{what} header")
    if reader.u8(f"{what} header") != 0:
        raise CorruptData(f"{what}: reserved header byte is not zero")
    entries = reader.u64(f"{what} entry count")
    fill = reader.array(dtype, 1, f"{what} fill value")[0]
    if not 1 <= gap_width <= MAX_GAP_WIDTH:
        raise CorruptData(f"{what}: gap width {gap_width} outside 1..{MAX_GAP_WIDTH}")
    if value_mode not in (VALUES_CODEBOOK, VALUES_RAW):
        raise CorruptData(f"{what}: unknown value mode {value_mode}")
    if entries > elements:
        raise CorruptData(f"{what}: {entries} entries for a tensor of {elements} elements")
    gaps = huffman.decode(reader, entries, 1 << gap_width, f"{what} gaps")
    positions = positions_from_gaps(gaps)
    if entries and positions[-1] >= elements:
        raise CorruptData(f"{what}: gaps run past the end of the tensor")
    if value_mode == VALUES_CODEBOOK:
        codebook = _read_codebook(reader, dtype, what)
        values = codebook[huffman.decode(reader, entries, codebook.size, f"{what} symbols")]
    else:
        codec = reader.u8(f"{what} value codec")
        stored_length = reader.u64(f"{what} value length")
        if codec not in GENERIC_NAMES:
            raise CorruptData(f"{what}: unknown value codec {codec}")
        stored = reader.take(stored_length, f"{what} values")
        values = np.frombuffer(decompress(stored, codec, entries * width, f"{what} values"), dtype=dtype)
    out = np.full(elements, fill, dtype=dtype)
    out[positions] = values
    return out
