"""Splicing: the unpacked model is written without ever holding big tensors inside protobuf.

Each raw_data field gets a unique short marker, the (small) model is serialized, and
the serialization is re-emitted as chunks with every marker replaced by the tensor's
bytes and the lengths of the enclosing messages fixed.  The result is byte-identical to
SerializeToString() of the full model (fields keep their order and varints are minimal)
and saves three copies of every tensor.
"""

from __future__ import annotations

import bisect

import numpy as np

_SUBMESSAGES = {  # message kind -> {field number: submessage kind}, along iter_tensors' paths
    "model": {7: "graph"},
    "graph": {1: "node", 5: "tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 11: "graph"},
    "tensor": {},
}
_RAW_DATA_FIELD = 9
_MARKER_PREFIX = b"\x89cmpz-splice\x1a"


class SpliceFailed(Exception):
    """The serialized graph is not laid out as expected: fall back to plain serialization."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise SpliceFailed("bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def nbytes(chunk) -> int:
    return chunk.nbytes if isinstance(chunk, (np.ndarray, memoryview)) else len(chunk)


def _splice(
    buf: bytes, start: int, end: int, kind: str, payloads: dict, marker_at: list, chunks: list, found: set
) -> int:
    """Append the re-encoded message buf[start:end] to ``chunks``; return its new length."""
    view = memoryview(buf)
    total = 0
    run = start  # start of bytes copied through unchanged
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _read_varint(buf, pos, end)
        wire, number = key & 7, key >> 3
        if wire == 0:
            _, pos = _read_varint(buf, pos, end)
            continue
        if wire in (1, 5):
            pos += 8 if wire == 1 else 4
            continue
        if wire != 2:
            raise SpliceFailed(f"wire type {wire}")
        key_end = pos
        length, data_start = _read_varint(buf, pos, end)
        pos = data_end = data_start + length
        if data_end > end:
            raise SpliceFailed("field past its message")
        i = bisect.bisect_left(marker_at, data_start)
        if i == len(marker_at) or marker_at[i] >= data_end:
            continue  # no marker inside: copied through with the run
        inner: list = []
        if kind == "tensor" and number == _RAW_DATA_FIELD and data_start == marker_at[i]:
            marker = bytes(buf[data_start:data_end])
            if marker not in payloads or marker in found:
                raise SpliceFailed("raw_data is not a marker")
            found.add(marker)
            inner.append(payloads[marker])
            new_length = nbytes(payloads[marker])
        elif number in _SUBMESSAGES[kind]:
            new_length = _splice(
                buf, data_start, data_end, _SUBMESSAGES[kind][number], payloads, marker_at, inner, found
            )
        else:
            raise SpliceFailed(f"marker inside field {number} of a {kind}")
        if field_start > run:
            chunks.append(view[run:field_start])
            total += field_start - run
        head = bytes(buf[field_start:key_end]) + _varint(new_length)
        chunks.append(head)
        chunks.extend(inner)
        total += len(head) + new_length
        run = data_end
    if pos != end:
        raise SpliceFailed("message overruns")
    if end > run:
        chunks.append(view[run:end])
        total += end - run
    return total


def marker(index: int) -> bytes:
    """The raw_data placeholder of the ``index``-th spliced tensor."""
    return _MARKER_PREFIX + index.to_bytes(8, "little")


def _marker_positions(serialized: bytes, payloads: dict) -> list[int]:
    """Where each marker starts, in order: one scan for the common prefix (searching for
    each marker in turn would cost a pass over the serialization per tensor)."""
    marker_at = []
    seen = set()
    at = serialized.find(_MARKER_PREFIX)
    while at >= 0:
        key = serialized[at : at + len(_MARKER_PREFIX) + 8]
        if key not in payloads or key in seen:
            raise SpliceFailed("marker not unique")
        seen.add(key)
        marker_at.append(at)
        at = serialized.find(_MARKER_PREFIX, at + 1)
    if len(seen) != len(payloads):
        raise SpliceFailed("marker not found")
    return marker_at


def spliced_chunks(serialized: bytes, payloads: dict) -> list:
    """``serialized`` with each marker (a key of ``payloads``) replaced by its payload, as chunks.

    Raises SpliceFailed when the serialization is not laid out as expected."""
    marker_at = _marker_positions(serialized, payloads)
    chunks: list = []
    found: set = set()
    _splice(serialized, 0, len(serialized), "model", payloads, marker_at, chunks, found)
    if len(found) != len(payloads):
        raise SpliceFailed("a marker was not reached")
    return chunks
