"""Byte planes: multi-byte elements regrouped by byte position, then zstd or xz (FORMAT.md §7.4).

A float32 tensor of per-channel scales, or an int32 bias, has bytes of very different
statistics side by side: the exponent byte of the scales takes two or three values, the
low mantissa byte is noise (or, with rounded scales, always 0), the top bytes of the
biases are 0x00 or 0xff.  A general-purpose compressor sees them interleaved; laid out
plane by plane (all first bytes, then all second bytes, ...) each plane is a run of
similar bytes.  This is the "shuffle" filter of Blosc and HDF5.
"""

from __future__ import annotations

import numpy as np

from . import GENERIC_NAMES, XZ, ZSTD, ByteReader, CorruptData, compress, decompress, sample_spans

INNER_CODECS = (ZSTD, XZ)
WIDTHS = (2, 4, 8)
HEADER_BYTES = 2  # width, inner codec


def to_planes(data, width: int) -> bytes:
    """Element bytes regrouped by position: byte 0 of every element, then byte 1, ..."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if width not in WIDTHS or raw.size % width:
        raise ValueError(f"{raw.size} bytes are not whole {width}-byte elements")
    return raw.reshape(-1, width).T.tobytes()


def planes_sample(data, width: int) -> bytes:
    """The sample of ``to_planes(data, width)`` that ``estimate_best`` measures, gathered from
    ``data`` without regrouping all of it."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if width not in WIDTHS or raw.size % width:
        raise ValueError(f"{raw.size} bytes are not whole {width}-byte elements")
    elements = raw.size // width
    parts = []
    for start, stop in sample_spans(raw.size):
        at = np.arange(start, stop, dtype=np.int64)  # positions in the planes
        parts.append(raw[(at % elements) * width + at // elements].tobytes())
    return b"".join(parts)


def from_planes(data, width: int) -> bytes:
    """Inverse of ``to_planes``."""
    raw = np.frombuffer(data, dtype=np.uint8)
    return raw.reshape(width, -1).T.tobytes()


def encode(data, width: int, codec: int) -> bytes:
    """The payload of a planes section: width, inner codec, then the compressed planes."""
    return header(width, codec) + compress(to_planes(data, width), codec)


def header(width: int, codec: int) -> bytes:
    """The first HEADER_BYTES of a planes payload."""
    if codec not in INNER_CODECS or width not in WIDTHS:
        raise ValueError(f"planes need width 2/4/8 and zstd or xz, not {width} / {GENERIC_NAMES.get(codec, codec)}")
    return bytes([width, codec])


def decode(payload, width: int, size: int, what: str) -> bytes:
    """Decode a planes payload to exactly ``size`` bytes of ``width``-byte elements."""
    reader = ByteReader(payload, what)
    declared, codec = reader.u8(f"{what} header"), reader.u8(f"{what} header")
    if declared != width:
        raise CorruptData(f"{what}: element width {declared}, the manifest says {width}")
    if width not in WIDTHS or size % width:
        raise CorruptData(f"{what}: {size} bytes are not whole {width}-byte elements")
    if codec not in INNER_CODECS:
        raise CorruptData(f"{what}: inner codec {codec} is not zstd or xz")
    planes = decompress(reader.take(reader.remaining), codec, size, what)
    return from_planes(planes, width)
