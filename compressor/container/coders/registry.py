"""The registry of section codecs ("coders") of the .cmpz format (FORMAT.md §4, §7).

A coder is one module that calls ``register(Coder(...))`` at import: its format id and
name, the format version that introduced it, how to decode a payload, how to describe it
(for ``inspect`` and the pack report) and, if pack may choose it, a ``propose`` function
that offers a sized candidate for one field's bytes (see ``choice.encode_tensor_data``).
Everything that reads, writes or describes a section looks its coder up here, so adding
a coder is adding one module.  Pure bytes and numpy: no onnx.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

from ...codec.sparse import StreamInfo, element_view

# Encoder policy shared by the coders' proposals.
MIN_CODED_ELEMENTS = 64  # fewer elements: Huffman tables cost more than they save
GENERIC_MARGIN = 1.15  # a sampled estimate this far above the best exact size is not built
# Above this many bytes a general-purpose codec is built only when its sampled estimate beats
# the best exact size outright: the sample is large enough to trust, and zstd -19 / xz -9 of a
# field this big costs minutes for what the margin might win.
LARGE_FIELD_BYTES = 16 << 20


def generic_margin(data_bytes: int) -> float:
    """How far above the best exact size a general-purpose codec's sampled estimate may be
    and the codec still be built to measure it exactly."""
    return GENERIC_MARGIN if data_bytes < LARGE_FIELD_BYTES else 1.0


class DecodeContext(Protocol):
    """What a coder that refers to other tensors (``refers_to_tensors``) may ask of the model."""

    def float32_values(self, index: int, elements: int) -> np.ndarray:
        """The ``elements`` float32 values of tensor ``index`` (raises CorruptData if it has not)."""
        ...


@dataclass
class EncodeRequest:
    """One field's bytes to encode; coders share analyses of them through ``analysis``."""

    data: bytes
    width: int
    candidates: dict = field(default_factory=dict)  # name -> size report, in the order measured
    _analyses: dict = field(default_factory=dict, repr=False)

    @cached_property
    def elements(self) -> np.ndarray:
        """The bytes as little-endian unsigned integers of ``width`` bytes."""
        return element_view(self.data, self.width)

    @property
    def coded(self) -> bool:
        """Enough elements for the Huffman-coded layouts (dict, sparse, planes) to be tried."""
        return self.elements.size >= MIN_CODED_ELEMENTS

    def analysis(self, analyse: Callable[[np.ndarray], object]):
        """``analyse(self.elements)``, computed once however many coders ask for it."""
        if analyse not in self._analyses:
            self._analyses[analyse] = analyse(self.elements)
        return self._analyses[analyse]

    def report(self, name: str, size: float, streams: list[StreamInfo], exact: bool = True) -> None:
        """Record a measured (or, with ``exact=False``, estimated) candidate for the pack report."""
        entry = {"bytes": int(round(size))}
        if not exact:
            entry["estimated"] = True
        if streams:
            entry["streams"] = [s.as_dict() for s in streams]
        self.candidates[name] = entry


@dataclass
class Candidate:
    """A proposed encoding of exactly ``size`` bytes; ``build`` writes its payload."""

    codec: int
    size: int
    build: Callable[[], bytes]
    streams: list[StreamInfo] = field(default_factory=list)
    params: dict = field(default_factory=dict)


@dataclass
class EncodedTensor:
    """A field's chosen encoding: section codec, payload and what the pack report shows."""

    codec: int
    payload: bytes
    streams: list[StreamInfo] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)


def _no_details(payload) -> dict:
    return {}


def _no_text(details: dict) -> str:
    return ""


@dataclass(frozen=True)
class Coder:
    """One section codec.

    ``decode(payload, decoded_length, width, what, context)`` returns exactly
    ``decoded_length`` bytes (bytes, or an array of ``width``-byte elements) or raises
    CorruptData naming ``what``.  ``propose(request, best)`` returns a Candidate (or None)
    given the best candidate so far; proposals run in ``order`` and one replaces the best
    when smaller (or equal, with ``wins_ties``).
    """

    id: int  # the codec byte of the section table
    name: str
    decode: Callable
    min_version: tuple[int, int] = (1, 0)
    propose: Callable[[EncodeRequest, Candidate | None], Candidate | None] | None = None
    order: int = 100
    wins_ties: bool = False
    summary: Callable[[dict], str] | None = None  # pack report detail, from the encoder's params
    details: Callable = _no_details  # inspect: what the payload's header says, without decoding
    details_text: Callable[[dict], str] = _no_text  # inspect table detail, from ``details``
    generic: bool = False  # a general-purpose codec: also for the manifest and graph sections
    shareable: bool = True  # several manifest records may share a section of this codec
    refers_to_tensors: bool = False  # decoded after the others, with a DecodeContext
    restores: tuple[int, str] | None = None  # the only (ONNX data type, field) it may restore
    payload_bytes: int | None = None  # a fixed payload length, checked with the section table
    stored_is_decoded: bool = False  # the payload is the decoded bytes themselves

    def describe(self, params: dict) -> str:
        return self.summary(params) if self.summary else self.name


_CODERS: dict[int, Coder] = {}


def register(coder: Coder) -> Coder:
    """Add a coder (its id and name must be new); returns it."""
    if not 0 <= coder.id <= 255:
        raise ValueError(f"coder id {coder.id} does not fit the section table's codec byte")
    if coder.id in _CODERS or any(c.name == coder.name for c in _CODERS.values()):
        raise ValueError(f"coder {coder.id} / {coder.name!r} is already registered")
    _CODERS[coder.id] = coder
    return coder


def unregister(coder_id: int) -> None:
    """Remove a coder (for tests that register their own)."""
    del _CODERS[coder_id]


def known(coder_id: int) -> bool:
    return coder_id in _CODERS


def get(coder_id: int) -> Coder:
    return _CODERS[coder_id]


def by_name(name: str) -> Coder:
    """The coder called ``name`` (KeyError if none is)."""
    for coder in _CODERS.values():
        if coder.name == name:
            return coder
    raise KeyError(name)


def name_of(coder_id: int) -> str:
    return _CODERS[coder_id].name


def names() -> dict[int, str]:
    """{id: name} of every registered coder."""
    return {cid: c.name for cid, c in sorted(_CODERS.items())}


def min_version(coder_id: int) -> tuple[int, int]:
    coder = _CODERS.get(coder_id)
    return coder.min_version if coder else (1, 0)


def proposers() -> list[Coder]:
    """The coders pack may choose, in proposal order."""
    return sorted((c for c in _CODERS.values() if c.propose), key=lambda c: (c.order, c.id))
