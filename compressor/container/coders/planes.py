"""planes (codec 19, format 1.2): multi-byte elements regrouped by byte position, then
zstd or xz (FORMAT.md §7.4)."""

from __future__ import annotations

import math

from ...codec import SAMPLE_THRESHOLD, STORED, compress, compress_best, estimate_from_sample
from ...codec import planes as byte_planes
from .registry import GENERIC_MARGIN, Candidate, Coder, EncodeRequest, name_of, names, register

ID = 19


def propose(request: EncodeRequest, best: Candidate | None) -> Candidate | None:
    """The planes payload if smaller than ``best``.

    Like the generic codecs, it is compressed in full up to 256 KiB (once: the winner's
    bytes are kept) and measured on a sample above, then built only if it could win."""
    width = request.width
    if not request.coded or width not in byte_planes.WIDTHS:
        return None
    to_beat = best.size if best is not None else math.inf
    if len(request.data) <= SAMPLE_THRESHOLD:
        codec, inner = compress_best(byte_planes.to_planes(request.data, width))
        size, exact = len(inner) + byte_planes.HEADER_BYTES, True
    else:  # measured on a sample of the planes: the whole tensor is regrouped only if it could win
        codec, estimate = estimate_from_sample(byte_planes.planes_sample(request.data, width), len(request.data))
        inner, size, exact = None, estimate + byte_planes.HEADER_BYTES, False
    if codec == STORED:
        return None
    name = f"planes+{name_of(codec)}"
    request.report(name, size, [], exact=exact)
    if size >= (to_beat if exact else to_beat / GENERIC_MARGIN):
        return None
    if inner is None:
        inner = compress(byte_planes.to_planes(request.data, width), codec)
        request.report(name, len(inner) + byte_planes.HEADER_BYTES, [])
    payload = byte_planes.header(width, codec) + inner
    if len(payload) >= to_beat:
        return None
    return Candidate(ID, len(payload), lambda: payload, [], {"inner": name_of(codec)})


def decode(payload, decoded_length: int, width: int, what: str, context=None) -> bytes:
    return byte_planes.decode(payload, width, decoded_length, what)


def details(payload) -> dict:
    head = bytes(payload[:2])
    return {"width": head[0], "inner": names().get(head[1], "?")} if len(head) == 2 else {}


CODER = register(
    Coder(
        ID,
        "planes",
        decode,
        min_version=(1, 2),
        propose=propose,
        order=30,
        summary=lambda params: f"planes+{params['inner']}",
        details=details,
    )
)
