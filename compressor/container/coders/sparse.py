"""sparse (codec 17): positions of the non-fill elements as Huffman-coded gaps, then their
values as codebook symbols or raw bytes (FORMAT.md §7.2)."""

from __future__ import annotations

from ...codec import ByteReader, CorruptData
from ...codec import sparse as layouts
from .registry import Candidate, Coder, EncodeRequest, register

ID = 17


def propose(request: EncodeRequest, best: Candidate | None) -> Candidate | None:
    """The smallest sparse layout; the raw-values one is built to be measured (its values
    go through a general-purpose codec)."""
    if not request.coded:
        return None
    analysis = request.analysis(layouts.analyse)
    if analysis.positions is None or not analysis.positions.size:
        return None
    chosen = None
    raw = analysis.entry_codebook is None
    for layout in layouts.sparse_layouts(
        request.elements, analysis.fill, analysis.positions, analysis.entry_codebook, raw=raw, entries=analysis.entries
    ):
        build = layout.build
        if layout.params["values"] == "raw":
            payload = layout.builder()
            layout.size = len(payload)
            build = lambda payload=payload: payload  # noqa: E731
        request.report(f"sparse+{layout.params['values']}", layout.size, layout.streams)
        if chosen is None or layout.size < chosen.size:
            chosen = Candidate(ID, layout.size, build, layout.streams, layout.params)
    return chosen


def decode(payload, decoded_length: int, width: int, what: str, context=None):
    return layouts.decode_elements(layouts.decode_sparse, payload, width, decoded_length, what)


def details(payload) -> dict:
    reader = ByteReader(payload, "sparse section")
    try:
        width = reader.u8()
        gap_width, value_mode, _ = reader.u8(), reader.u8(), reader.u8()
        entries = reader.u64()
        return {
            "width": width,
            "gap_width": gap_width,
            "values": "codebook" if value_mode == layouts.VALUES_CODEBOOK else "raw",
            "entries": entries,
        }
    except CorruptData:
        return {}


def details_text(details: dict) -> str:
    return f"gap={details['gap_width']}b {details['values']}" if "gap_width" in details else ""


def summary(params: dict) -> str:
    values = f"k={params['codebook_size']}" if params.get("values") == "codebook" else "raw"
    return f"sparse gap={params['gap_width']}b {values}"


CODER = register(
    Coder(ID, "sparse", decode, propose=propose, order=11, summary=summary, details=details, details_text=details_text)
)
