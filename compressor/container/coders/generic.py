"""stored / zstd / xz: the general-purpose section codecs (FORMAT.md §4).

The only codecs allowed for the manifest and graph sections.  For a tensor field, pack
proposes the smallest of the three, measured in full up to 256 KiB and on a sample above
(then built only if it could beat the best coded layout: ``registry.generic_margin``).
"""

from __future__ import annotations

from ...codec import SAMPLE_THRESHOLD, STORED, XZ, ZSTD, compress_best, decompress, estimate_best
from .registry import Candidate, Coder, EncodeRequest, generic_margin, name_of, register


def propose(request: EncodeRequest, best: Candidate | None) -> Candidate | None:
    """The best general-purpose codec, unless its sampled estimate is clearly beaten by ``best``."""
    data = request.data
    if len(data) <= SAMPLE_THRESHOLD or best is None:
        codec, payload = compress_best(data)
    else:
        codec, estimate = estimate_best(data)
        if estimate >= generic_margin(len(data)) * best.size:
            request.report(name_of(codec), estimate, [], exact=False)
            return None
        codec, payload = compress_best(data, codec)
    request.report(name_of(codec), len(payload), [])
    return Candidate(codec, len(payload), lambda: payload)


def _decoder(codec: int):
    def decode(payload, decoded_length: int, width: int, what: str, context=None) -> bytes:
        return decompress(payload, codec, decoded_length, what)

    return decode


# Ties go to the general-purpose codec: a coded layout is kept only when strictly smaller.
register(Coder(STORED, "stored", _decoder(STORED), propose=propose, order=20, wins_ties=True, generic=True,
               stored_is_decoded=True))  # fmt: skip
register(Coder(ZSTD, "zstd", _decoder(ZSTD), generic=True))
register(Coder(XZ, "xz", _decoder(XZ), generic=True))
