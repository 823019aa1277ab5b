"""dict-rans (codec 20, version 1.4): the dict layout's codebook, its symbols rANS-coded with
the previous symbol as context (FORMAT.md §7.5, codec.rans).

Proposed after the Huffman layouts and built only when its estimated size beats the best
of them: the context model pays off on long, correlated streams (a pruned layer's rows, runs
of one cluster), while its tables cost more than Huffman's on short ones.
"""

from __future__ import annotations

import numpy as np

from ...codec import ByteReader, CorruptData, huffman, rans
from ...codec import sparse as layouts
from ...codec.sparse import StreamInfo
from .registry import Candidate, Coder, EncodeRequest, register

ID = 20
VERSION = (1, 4)


def _stream_info(symbols: np.ndarray, counts: np.ndarray, chosen: rans.Plan, coded_bytes: int) -> StreamInfo:
    # The order-0 entropy, the bound the pack report compares every stream with.
    entropy = huffman.entropy_bits(counts)
    return StreamInfo("symbols (rans)", int(symbols.size), int(counts.size), coded_bytes, chosen.table_bytes, entropy)


def propose(request: EncodeRequest, best: Candidate | None) -> Candidate | None:
    if not request.coded:
        return None
    analysis = request.analysis(layouts.analyse)
    layout = analysis.dict_layout
    if layout is None or layout.codebook is None:
        return None
    values, counts, symbols = layout.codebook
    if values.size < 2:
        return None  # a constant tensor: nothing to model
    if symbols is None:
        # The sparse coder has proposed: its positions need not coexist with these symbols.
        analysis.release_entries()
        symbols = layouts.symbols_of(values, request.elements)
    chosen = rans.plan(symbols, int(values.size))
    head = layouts.DICT_HEADER_BYTES + values.size * request.width
    if best is not None and head + chosen.estimated_bytes >= best.size:
        request.report("dict-rans", head + chosen.estimated_bytes, [], exact=False)
        return None
    payload = layouts.dict_head(values, request.elements.dtype) + rans.encode_with(symbols, chosen)
    streams = [_stream_info(symbols, counts, chosen, len(payload) - head)]
    request.report("dict-rans", len(payload), streams)
    params = {"codebook_size": int(values.size), "contexts": chosen.contexts}
    return Candidate(ID, len(payload), lambda: payload, streams, params)


def decode(payload, decoded_length: int, width: int, what: str, context=None):
    return layouts.decode_elements(_decode_dict_rans, payload, width, decoded_length, what)


def _decode_dict_rans(reader: ByteReader, width: int, elements: int, what: str):
    return layouts.decode_dict(reader, width, elements, what, decode_symbols=rans.decode)


def details(payload) -> dict:
    reader = ByteReader(payload, "dict-rans section")
    try:
        width = reader.u8()
        reader.u8(), reader.u16()
        size = reader.u32()
        reader.array(np.uint8, size * width, "codebook")
        stream = rans.describe(reader)
        return {"width": width, "codebook_size": size, "contexts": stream["contexts"], "lanes": stream["lanes"]}
    except CorruptData:
        return {}


def details_text(details: dict) -> str:
    if "codebook_size" not in details:
        return ""
    return f"k={details['codebook_size']} contexts={details['contexts']} lanes={details['lanes']}"


CODER = register(
    Coder(
        ID,
        "dict-rans",
        decode,
        min_version=VERSION,
        propose=propose,
        order=90,
        summary=lambda params: f"dict-rans k={params['codebook_size']} ctx={params['contexts']}",
        details=details,
        details_text=details_text,
    )
)
