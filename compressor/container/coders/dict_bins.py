"""dict-bins (codec 22, version 1.6): the dict layout's codebook, ordered by value, and its symbols
coded as offsets from the most frequent one under a binarised model with magnitude contexts
(FORMAT.md §7.7, codec.bins).

Proposed after dict-rans and built only when its estimated size beats the best so far.  Its
tables cost a few dozen bytes whatever the codebook, so it wins where dict-rans's per-symbol
tables do not pay (a few thousand weights, wide int8 codebooks) and where the previous weight's
magnitude tells about the next one (depthwise kernels, pruned or shared rows).
"""

from __future__ import annotations

import numpy as np

from ...codec import ByteReader, CorruptData, bins, huffman
from ...codec import sparse as layouts
from ...codec.sparse import StreamInfo
from .registry import Candidate, Coder, EncodeRequest, register

ID = 22
VERSION = (1, 6)


def _orders(values: np.ndarray) -> list[np.ndarray]:
    """Keys that order a codebook of unsigned elements by the value they may stand for: two's
    complement (int8 weights, int32 biases) and, for 2- to 8-byte elements, sign and magnitude
    (IEEE floats: k-means centroids)."""
    bits = 8 * values.dtype.itemsize
    sign = np.array(1 << (bits - 1), dtype=values.dtype)
    keys = [values ^ sign]
    if bits > 8:
        negative = (values & sign) != 0
        keys.append(np.where(negative, ~values, values | sign))
    return keys


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
    head = layouts.DICT_HEADER_BYTES + values.size * request.width
    chosen = None
    for key in _orders(values):
        order = np.argsort(key, kind="stable")
        rank = np.empty(values.size, dtype=np.uint16)
        rank[order] = np.arange(values.size, dtype=np.uint16)
        ranked = rank[symbols]
        centre = int(rank[int(np.argmax(counts))])
        candidate = bins.plan(ranked, int(values.size), centre)
        if chosen is None or candidate.estimated_bytes < chosen[0].estimated_bytes:
            chosen = (candidate, order, ranked)
    plan, order, ranked = chosen
    if best is not None and head + plan.estimated_bytes >= best.size:
        request.report("dict-bins", head + plan.estimated_bytes, [], exact=False)
        return None
    payload = layouts.dict_head(values[order], request.elements.dtype) + bins.encode_with(ranked, plan)
    streams = [
        StreamInfo(
            "symbols (bins)",
            int(ranked.size),
            int(values.size),
            len(payload) - head,
            bins.HEADER.size + len(plan.params),
            huffman.entropy_bits(counts),  # the order-0 bound the pack report compares with
        )
    ]
    request.report("dict-bins", len(payload), streams)
    params = {"codebook_size": int(values.size), "classes": plan.classes, "signs": plan.signs}
    return Candidate(ID, len(payload), lambda: payload, streams, params)


def decode(payload, decoded_length: int, width: int, what: str, context=None):
    return layouts.decode_elements(_decode_dict_bins, payload, width, decoded_length, what)


def _decode_dict_bins(reader: ByteReader, width: int, elements: int, what: str):
    return layouts.decode_dict(reader, width, elements, what, decode_symbols=bins.decode)


def details(payload) -> dict:
    reader = ByteReader(payload, "dict-bins section")
    try:
        width = reader.u8()
        reader.u8(), reader.u16()
        size = reader.u32()
        reader.array(np.uint8, size * width, "codebook")
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
