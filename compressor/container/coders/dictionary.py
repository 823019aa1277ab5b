"""dict (codec 16): a codebook of the distinct values + one Huffman-coded symbol per element (FORMAT.md §7.1)."""

from __future__ import annotations

from ...codec import ByteReader, CorruptData
from ...codec import sparse as layouts
from .registry import Candidate, Coder, EncodeRequest, register

ID = 16


def propose(request: EncodeRequest, best: Candidate | None) -> Candidate | None:
    if not request.coded:
        return None
    layout = request.analysis(layouts.analyse).dict_layout
    if layout is None:
        return None
    request.report("dict", layout.size, layout.streams)
    return Candidate(ID, layout.size, layout.build, layout.streams, layout.params)


def decode(payload, decoded_length: int, width: int, what: str, context=None):
    return layouts.decode_elements(layouts.decode_dict, payload, width, decoded_length, what)


def details(payload) -> dict:
    reader = ByteReader(payload, "dict section")
    try:
        width = reader.u8()
        reader.u8(), reader.u16()
        return {"width": width, "codebook_size": reader.u32()}
    except CorruptData:
        return {}


def details_text(details: dict) -> str:
    return f"k={details['codebook_size']}" if "codebook_size" in details else ""


CODER = register(
    Coder(
        ID,
        "dict",
        decode,
        propose=propose,
        order=10,
        summary=lambda params: f"dict k={params['codebook_size']}",
        details=details,
        details_text=details_text,
    )
)
