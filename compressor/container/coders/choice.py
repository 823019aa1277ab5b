"""The encoder's choice: the smallest of the registered coders' proposals for one field."""

from __future__ import annotations

from .registry import Candidate, EncodedTensor, EncodeRequest, proposers


def encode_tensor_data(data: bytes, width: int) -> EncodedTensor:
    """Encode one field's bytes with the smallest measured candidate (exact sizes where cheap).

    Each coder proposes in turn, knowing the best candidate so far: the Huffman-based
    layouts are sized exactly from symbol histograms before anything is written; the
    general-purpose codecs are measured on the whole data when it is at most 256 KiB and
    on a sample otherwise (then built in full only if they could win).  Only the winner
    is built.
    """
    request = EncodeRequest(data, width)
    best: Candidate | None = None
    for coder in proposers():
        candidate = coder.propose(request, best)
        if candidate is None:
            continue
        if best is None or candidate.size < best.size or (candidate.size == best.size and coder.wins_ties):
            best = candidate
    if best is None:
        raise ValueError("no coder proposed an encoding")  # the general-purpose coder always does
    return EncodedTensor(best.codec, best.build(), best.streams, best.params, request.candidates)
