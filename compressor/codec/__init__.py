"""Pure byte codecs and their math, used by the .cmpz container (see FORMAT.md).

This package module holds what every codec shares:

* ``CorruptData``: the one exception a decoder raises for any malformed input (a
  ``CompressorError``, so the CLI prints one line and exits 1).
* ``ByteReader``: a bounds-checked little-endian cursor.  Every length or count read
  from a file goes through it, so nothing is allocated before it is known to fit.
* The general-purpose byte codecs (stored, zstd, xz) with decompression capped at the
  declared size, and ``compress_best`` which keeps the smallest of them.

``huffman`` codes symbol streams, ``sparse`` lays out sparse / codebook tensors and
``planes`` regroups bytes by position.  None of them imports onnx or anything of
compressor but its errors; the container format itself (header, section table, which
codec id means what) is ``compressor.container``.
"""

from __future__ import annotations

import lzma
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import zstandard

from ..errors import CompressorError

T = TypeVar("T")


class CorruptData(CompressorError):
    """A container (or a stream inside it) is malformed, truncated or lies about a size."""


# General-purpose codec ids, shared by the section table and by sub-blocks (FORMAT.md §4).
STORED = 0
ZSTD = 1
XZ = 2
GENERIC_NAMES = {STORED: "stored", ZSTD: "zstd", XZ: "xz"}

ZSTD_LEVEL = 19
XZ_PRESET = 9
# An xz stream made by preset 9 needs ~65 MiB to decode; refuse streams that ask for far more.
XZ_MEMLIMIT = 256 << 20


# Per-element work on large arrays goes block by block, so that temporaries wider than the
# elements (np.bincount's intp copy, int64 indices) stay bounded whatever the tensor's size.
COUNT_BLOCK = 1 << 20


def symbol_counts(symbols: np.ndarray, alphabet_size: int, block: int = COUNT_BLOCK) -> np.ndarray:
    """np.bincount(symbols, minlength=alphabet_size) as int64, counted block by block."""
    flat = np.asarray(symbols).reshape(-1)
    counts = np.zeros(alphabet_size, dtype=np.int64)
    for start in range(0, flat.size, block):
        found = np.bincount(flat[start : start + block], minlength=alphabet_size)
        if found.size > counts.size:  # a symbol outside the alphabet: the caller's check says so
            found[: counts.size] += counts
            counts = found.astype(np.int64)
        else:
            counts[: found.size] += found
    return counts


class ByteReader:
    """A cursor over bytes that refuses to read past the end (raises CorruptData)."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, data, what: str, start: int = 0, end: int | None = None):
        self.buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        self.pos = start
        self.end = len(self.buf) if end is None else end
        self.what = what

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n: int, label: str = "data") -> None:
        if n < 0 or n > self.remaining:
            where = label if label.startswith(self.what) else f"{self.what}: {label}"
            raise CorruptData(f"{where}: truncated (needs {n} bytes, {max(self.remaining, 0)} left)")

    def take(self, n: int, label: str = "data") -> memoryview:
        self.need(n, label)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def _unpack(self, fmt: str, size: int, label: str):
        self.need(size, label)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u8(self, label: str = "u8") -> int:
        return self._unpack("<B", 1, label)

    def u16(self, label: str = "u16") -> int:
        return self._unpack("<H", 2, label)

    def u32(self, label: str = "u32") -> int:
        return self._unpack("<I", 4, label)

    def u64(self, label: str = "u64") -> int:
        return self._unpack("<Q", 8, label)

    def array(self, dtype, count: int, label: str = "array") -> np.ndarray:
        """``count`` little-endian elements of ``dtype`` (checked against the bytes left first)."""
        dt = np.dtype(dtype).newbyteorder("<")
        self.need(count * dt.itemsize, label)
        out = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos)
        self.pos += count * dt.itemsize
        return out

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise CorruptData(f"{self.what}: {self.end - self.pos} unexpected bytes after the data")


# Above this many bytes a zstd/xz call runs on a helper thread while the main thread waits, so
# Ctrl-C and SIGTERM are handled at once instead of after one long C call (both release the GIL).
INTERRUPTIBLE_BYTES = 4 << 20


def interruptibly(call: Callable[[], T], size: int) -> T:
    """``call()``, on a daemon thread when ``size`` is large, so the main thread still takes signals.

    The result (or the exception) is the call's own; an interrupt raises in the main thread
    and the abandoned thread ends with the process.
    """
    if size <= INTERRUPTIBLE_BYTES or threading.current_thread() is not threading.main_thread():
        return call()
    outcome: list = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # handed to the caller below
            outcome.append((False, e))

    worker = threading.Thread(target=target, name="compressor-codec", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.25)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def compress(data, codec: int) -> bytes:
    """Compress with one general-purpose codec (deterministic: fixed levels, one thread)."""
    return interruptibly(lambda: _compress(data, codec), len(data))


def _compress(data, codec: int) -> bytes:
    if codec == STORED:
        return bytes(data)
    if codec == ZSTD:
        # Content size in the frame header lets the reader check it against the declared size.
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False).compress(data)
    if codec == XZ:
        # Preset 9's 64 MiB dictionary costs ~70 ms to set up even for tiny inputs; a
        # dictionary no larger than the input compresses exactly as well.
        dict_size = min(64 << 20, max(4096, 1 << max(len(data) - 1, 1).bit_length()))
        filters = [{"id": lzma.FILTER_LZMA2, "preset": XZ_PRESET, "dict_size": dict_size}]
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=filters)
    raise ValueError(f"unknown codec {codec}")


def decompress(payload, codec: int, size: int, what: str) -> bytes:
    """Decode a general-purpose payload that must expand to exactly ``size`` bytes.

    Output is capped at ``size`` (no decompression bombs); a payload that decodes to more or
    fewer bytes, carries trailing data or is malformed raises CorruptData.
    """
    return interruptibly(lambda: _decompress(payload, codec, size, what), size)


def _decompress(payload, codec: int, size: int, what: str) -> bytes:
    if codec == STORED:
        if len(payload) != size:
            raise CorruptData(f"{what}: stored length {len(payload)} != declared {size}")
        return bytes(payload)
    if codec == ZSTD:
        try:
            # zstandard ignores max_output_size when the frame declares its size, so check that first.
            declared = zstandard.frame_content_size(payload)
            if declared != size:
                raise CorruptData(f"{what}: zstd frame declares {declared} bytes, the container {size}")
            out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise CorruptData(f"{what}: bad zstd data ({e})") from None
    elif codec == XZ:
        dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
        try:
            # One byte over the cap tells "longer than declared" apart, and lets an empty stream reach its end.
            out = dec.decompress(bytes(payload), max_length=size + 1)
        except lzma.LZMAError as e:
            raise CorruptData(f"{what}: bad xz data ({e})") from None
        if not dec.eof or dec.unused_data:
            raise CorruptData(f"{what}: xz data longer than declared or with trailing bytes")
    else:
        raise CorruptData(f"{what}: unknown codec {codec}")
    if len(out) != size:
        raise CorruptData(f"{what}: decoded {len(out)} bytes, declared {size}")
    return out


# Above this size the general-purpose codecs are tried on a sample first (see compress_best).
SAMPLE_THRESHOLD = 256 << 10
SAMPLE_CHUNK = 32 << 10
SAMPLE_CHUNKS = 8


def sample_spans(length: int) -> list[tuple[int, int]]:
    """The (start, stop) byte ranges of the sample ``estimate_best`` measures for ``length`` bytes."""
    chunk = min(SAMPLE_CHUNK, length // (2 * SAMPLE_CHUNKS))
    step = (length - chunk) // (SAMPLE_CHUNKS - 1)
    return [(i * step, i * step + chunk) for i in range(SAMPLE_CHUNKS)]


def _sample(data: bytes) -> bytes:
    return b"".join(data[start:stop] for start, stop in sample_spans(len(data)))


def estimate_best(data) -> tuple[int, float]:
    """(codec, estimated compressed size) of the best general-purpose codec, measured on a sample.

    Small inputs are compressed in full by both codecs.  Larger ones are measured on 8
    evenly spaced chunks (at most 32 KiB each, at most half the input) so that pack never runs two slow compressors over a
    whole large tensor; the winner then compresses the whole tensor once.
    """
    data = bytes(data)
    if len(data) <= SAMPLE_THRESHOLD:
        sizes = {c: len(compress(data, c)) for c in (STORED, ZSTD, XZ)}
        best = min(sizes, key=lambda c: (sizes[c], c))
        return best, float(sizes[best])
    return estimate_from_sample(_sample(data), len(data))


def estimate_from_sample(sample: bytes, length: int) -> tuple[int, float]:
    """``estimate_best`` of ``length`` bytes (above SAMPLE_THRESHOLD) whose sample is ``sample``."""
    scale = length / len(sample)
    sizes = {STORED: float(length)}
    for c in (ZSTD, XZ):
        sizes[c] = len(compress(sample, c)) * scale
    best = min(sizes, key=lambda c: (sizes[c], c))
    return best, sizes[best]


def compress_best(data, codec: int | None = None) -> tuple[int, bytes]:
    """Compress with the smallest of stored / zstd-19 / xz-9 (or the given codec), never above stored."""
    data = bytes(data)
    if codec is None:
        if len(data) <= SAMPLE_THRESHOLD:
            candidates = [(c, compress(data, c)) for c in (STORED, ZSTD, XZ)]
            return min(candidates, key=lambda cp: (len(cp[1]), cp[0]))
        codec, _ = estimate_best(data)
    payload = compress(data, codec)
    if len(payload) >= len(data):
        return STORED, data
    return codec, payload
