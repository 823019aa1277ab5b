"""dict-bins (codec 23, version 1.7): a codebook ordered by value and the elements' symbols coded
as offsets from the most frequent one under a binarised model with magnitude contexts
(FORMAT.md §7.8, codec.bins).

Proposed after dict-rans and built only when its estimated size beats the best so far.  Its
tables cost a few dozen bytes whatever the codebook, so it wins where dict-rans's per-symbol
tables do not pay (a few thousand weights, wide int8 codebooks) and where the previous weight's
magnitude tells about the next one (depthwise kernels, pruned or shared rows).  The codebook is
itself coded by its order: a bitmap of the byte values used (one-byte elements) or the gaps
between consecutive sorted keys as varints (k-means centroids, sorted floats), when shorter than
the listed values.
"""

from __future__ import annotations

import struct

import numpy as np

from ...codec import ByteReader, CorruptData, bins, huffman
from ...codec import sparse as layouts
from ...codec.sparse import ELEMENT_DTYPES, StreamInfo
from .registry import Candidate, Coder, EncodeRequest, register

ID = 23
VERSION = (1, 7)
HEAD = struct.Struct("<BBHI")  # width, codebook layout, reserved, K
# Codebook layouts: the values listed in symbol order; a bitmap of the byte values used, in
# two's-complement or unsigned order (one-byte elements); the sorted keys' gaps as varints,
# keys in sign-magnitude (IEEE float) or two's-complement order (2- to 8-byte elements).
LISTED, BITMAP_SIGNED, BITMAP_UNSIGNED, GAPS_SIGN_MAGNITUDE, GAPS_SIGNED = range(5)
ORDER_UNSIGNED, ORDER_SIGNED, ORDER_SIGN_MAGNITUDE = "unsigned", "signed", "sign-magnitude"


def to_keys(values: np.ndarray, width: int, order: str) -> np.ndarray:
    """Unsigned keys whose increasing order is the values' order as unsigned or signed integers
    or as IEEE floats (sign and magnitude)."""
    values = values.astype(np.uint64)
    if order == ORDER_UNSIGNED:
        return values
    sign = np.uint64(1 << (8 * width - 1))
    mask = np.uint64((1 << (8 * width)) - 1)
    if order == ORDER_SIGNED:
        return values ^ sign
    return np.where(values & sign, ~values & mask, values | sign)


def from_keys(keys: np.ndarray, width: int, order: str) -> np.ndarray:
    """The inverse of ``to_keys``."""
    keys = keys.astype(np.uint64)
    if order == ORDER_UNSIGNED:
        return keys
    sign = np.uint64(1 << (8 * width - 1))
    mask = np.uint64((1 << (8 * width)) - 1)
    if order == ORDER_SIGNED:
        return keys ^ sign
    return np.where(keys & sign, keys ^ sign, ~keys & mask)


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_varints(reader: ByteReader, count: int, limit: int, what: str) -> list[int]:
    values = []
    for _ in range(count):
        value, shift = 0, 0
        while True:
            byte = reader.u8(f"{what} codebook")
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 63:
                raise CorruptData(f"{what}: a codebook gap is too long")
        if value >= limit:
            raise CorruptData(f"{what}: a codebook gap outside the element range")
        values.append(value)
    return values


def codebook_bytes(values_in_order: np.ndarray, width: int, order: str) -> tuple[int, bytes]:
    """The shortest codebook layout of values already in ``order``: (layout, its bytes)."""
    listed = values_in_order.astype(ELEMENT_DTYPES[width]).tobytes()
    if width == 1:
        if values_in_order.size * width <= 32:
            return LISTED, listed
        bitmap = np.zeros(256, dtype=np.uint8)
        bitmap[values_in_order.astype(np.int64)] = 1
        layout = BITMAP_SIGNED if order == ORDER_SIGNED else BITMAP_UNSIGNED
        return layout, np.packbits(bitmap, bitorder="little").tobytes()
    keys = to_keys(values_in_order, width, order)
    gaps = np.diff(keys, prepend=np.uint64(0))
    coded = _varints(gaps)
    if len(coded) < len(listed):
        return (GAPS_SIGN_MAGNITUDE if order == ORDER_SIGN_MAGNITUDE else GAPS_SIGNED), coded
    return LISTED, listed


def read_codebook(reader: ByteReader, layout: int, width: int, size: int, what: str) -> np.ndarray:
    dtype = ELEMENT_DTYPES[width]
    if layout == LISTED:
        return reader.array(dtype, size, f"{what} codebook")
    if layout in (BITMAP_SIGNED, BITMAP_UNSIGNED):
        if width != 1:
            raise CorruptData(f"{what}: a bitmap codebook for {width}-byte elements")
        used = np.flatnonzero(np.unpackbits(reader.array(np.uint8, 32, f"{what} codebook"), bitorder="little"))
        if used.size != size:
            raise CorruptData(f"{what}: the codebook bitmap holds {used.size} values, {size} declared")
        if layout == BITMAP_SIGNED:
            used = used[np.argsort(used ^ 0x80, kind="stable")]
        return used.astype(dtype)
    if layout in (GAPS_SIGN_MAGNITUDE, GAPS_SIGNED) and width > 1:
        limit = 1 << (8 * width)
        gaps = _read_varints(reader, size, limit, what)
        if any(g == 0 for g in gaps[1:]):
            raise CorruptData(f"{what}: codebook keys do not increase")
        keys = np.cumsum(np.array(gaps, dtype=object))
        if keys.size and int(keys[-1]) >= limit:
            raise CorruptData(f"{what}: a codebook key outside the element range")
        order = ORDER_SIGN_MAGNITUDE if layout == GAPS_SIGN_MAGNITUDE else ORDER_SIGNED
        return from_keys(keys.astype(np.uint64), width, order).astype(dtype)
    raise CorruptData(f"{what}: unknown codebook layout {layout} for {width}-byte elements")


def _orders(width: int) -> list[str]:
    """Orders of the codebook by the value its elements may stand for: two's complement (int8
    weights, int32 biases), and unsigned for one-byte elements (uint8 weights around a zero
    point), sign and magnitude for wider ones (IEEE floats: k-means centroids)."""
    return [ORDER_SIGNED, ORDER_UNSIGNED] if width == 1 else [ORDER_SIGNED, ORDER_SIGN_MAGNITUDE]


def propose(request: EncodeRequest, best: Candidate | None) -> Candidate | None:
    if not request.coded:
        return None
    analysis = request.analysis(layouts.analyse)
    layout = analysis.dict_layout
    if layout is None or layout.codebook is None:
        return None
    values, counts, symbols = layout.codebook
    if not 2 <= values.size <= bins.max_alphabet(bins.PRECISION):
        return None
    if symbols is None:
        analysis.release_entries()
        symbols = layouts.symbols_of(values, request.elements)
    width = request.width
    chosen = None
    for order_name in _orders(width):
        order = np.argsort(to_keys(values, width, order_name), kind="stable")
        rank = np.empty(values.size, dtype=np.uint16)
        rank[order] = np.arange(values.size, dtype=np.uint16)
        ranked = rank[symbols]
        centre = int(rank[int(np.argmax(counts))])
        plan = bins.plan(ranked, int(values.size), centre)
        book = codebook_bytes(values[order], width, order_name)
        size = HEAD.size + len(book[1]) + plan.estimated_bytes
        if chosen is None or size < chosen[0]:
            chosen = (size, plan, book, ranked)
    size, plan, (book_layout, book), ranked = chosen
    if best is not None and size >= best.size:
        request.report("dict-bins", size, [], exact=False)
        return None
    head = HEAD.pack(width, book_layout, 0, values.size) + book
    payload = head + bins.encode_with(ranked, plan)
    streams = [
        StreamInfo(
            "symbols (bins)",
            int(ranked.size),
            int(values.size),
            len(payload) - len(head),
            bins.HEADER.size + len(plan.params),
            huffman.entropy_bits(counts),  # the order-0 bound the pack report compares with
        )
    ]
    request.report("dict-bins", len(payload), streams)
    params = {"codebook_size": int(values.size), "classes": plan.classes, "signs": plan.signs}
    return Candidate(ID, len(payload), lambda: payload, streams, params)


def _read_head(reader: ByteReader, width: int, what: str) -> tuple[int, int]:
    got, book_layout, reserved, size = HEAD.unpack(bytes(reader.take(HEAD.size, f"{what} header")))
    if got != width:
        raise CorruptData(f"{what}: element width {got}, {width} expected")
    if reserved:
        raise CorruptData(f"{what}: reserved header bytes are not zero")
    if not 2 <= size <= bins.max_alphabet(bins.MAX_PRECISION):
        raise CorruptData(f"{what}: codebook of {size} values")
    return book_layout, size


def _decode_dict_bins(reader: ByteReader, width: int, elements: int, what: str) -> np.ndarray:
    book_layout, size = _read_head(reader, width, what)
    codebook = read_codebook(reader, book_layout, width, size, what)
    symbols = bins.decode(reader, elements, size, f"{what} symbols")
    return codebook[symbols]


def decode(payload, decoded_length: int, width: int, what: str, context=None):
    return layouts.decode_elements(_decode_dict_bins, payload, width, decoded_length, what)


def details(payload) -> dict:
    reader = ByteReader(payload, "dict-bins section")
    try:
        width = reader.u8()
        _, size = _read_head(ByteReader(payload, "dict-bins section"), width, "dict-bins section")
        book_layout = reader.u8()
        reader.u16(), reader.u32()
        read_codebook(reader, book_layout, width, size, "dict-bins section")
        stream = bins.describe(reader)
        return {"width": width, "codebook_size": size, **{k: stream[k] for k in ("classes", "signs", "lanes")}}
    except CorruptData:
        return {}


def details_text(details: dict) -> str:
    if "codebook_size" not in details:
        return ""
    return f"k={details['codebook_size']} classes={details['classes']}x{details['signs']} lanes={details['lanes']}"


CODER = register(
    Coder(
        ID,
        "dict-bins",
        decode,
        min_version=VERSION,
        propose=propose,
        order=95,
        summary=lambda params: f"dict-bins k={params['codebook_size']} ctx={params['classes']}x{params['signs']}",
        details=details,
        details_text=details_text,
    )
)
