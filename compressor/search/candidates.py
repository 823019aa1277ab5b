"""Search candidates kept compactly: a tensor's k-means or uniform-grid candidate as its codes.

The per-tensor searches (``share_budget``, ``ecq_budget``) make several candidates of every
tensor and measure a few allocations of them on the whole model.  Kept as float arrays, the
candidates would take the model's size times the number kept per tensor; kept as codes
(k-means labels and codebook, or uniform levels and step: a byte or two per weight) they are
decoded when an allocation is measured, to exactly the arrays ``share_array`` /
``uniform_quantize`` gave.  A large tensor's codes are kept zstd-compressed (``PackedInts``):
a search holds every candidate of a tensor until its front is known, and the front's through
the whole stage (a 30522 x 384 embedding table's two dozen grids were hundreds of MB as int8 /
int16 levels); the codes are exact either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import zstandard

from ..kmeans import SharedArray

# Codes of at least this many elements are kept compressed (smaller ones cost less than the calls).
PACK_ABOVE = 1 << 16
# A fast level: the codes are a few bits of entropy per byte, and each is packed once and
# unpacked each time a measurement or an error sum reads it.
PACK_LEVEL = 1


class PackedInts:
    """An integer array kept zstd-compressed; ``array()`` gives it back exactly."""

    __slots__ = ("payload", "dtype", "shape")

    def __init__(self, a: np.ndarray):
        a = np.ascontiguousarray(a)
        self.dtype, self.shape = a.dtype, a.shape
        self.payload = zstandard.ZstdCompressor(level=PACK_LEVEL, write_content_size=True).compress(a.data)

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    def array(self) -> np.ndarray:
        raw = zstandard.ZstdDecompressor().decompress(self.payload)
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape)


def compact(a: np.ndarray) -> np.ndarray | PackedInts:
    """Integer codes as kept: ``small_ints``, compressed when large (``PackedInts``)."""
    small = small_ints(a)
    return PackedInts(small) if small.size >= PACK_ABOVE else small


def unpacked(codes: np.ndarray | PackedInts) -> np.ndarray:
    return codes.array() if isinstance(codes, PackedInts) else codes


def small_ints(a: np.ndarray) -> np.ndarray:
    """`a` (integers) in the narrowest of int8 / int16 / int32 that holds it."""
    low, high = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for dtype in (np.int8, np.int16):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return a.astype(dtype)
    return a.astype(np.int32)


def kmeans_code(shared: SharedArray) -> tuple:
    """A k-means candidate's codes: its labels (-1: a zero kept as it was) and codebook."""
    return ("kmeans", compact(shared.labels), shared.codebook)


def uniform_code(levels: np.ndarray, step: float, dtype, fold: np.ndarray | None) -> tuple:
    """A uniform candidate's codes: its levels, its step in the tensor's dtype, and the weights
    measured as they were (``constant_mask``) or None."""
    return ("uniform", compact(levels), np.asarray(step, dtype=dtype), fold)


def decoded(original: np.ndarray, code: tuple) -> np.ndarray:
    """The candidate's array: exactly what ``share_array`` / ``uniform_quantize`` gave."""
    if code[0] == "kmeans":
        _, labels, codebook = code
        if codebook.size == 0:
            return original.copy()
        labels = unpacked(labels)
        return np.where(labels >= 0, codebook[labels], original)
    _, levels, step, fold = code
    values = unpacked(levels).astype(original.dtype) * step
    return values if fold is None else np.where(fold, original, values)


class LazyArrays(Mapping):
    """Arrays by key, each made on access by its own function (what it needs kept small)."""

    def __init__(self) -> None:
        self.makers: dict = {}

    def __getitem__(self, key) -> np.ndarray:
        return self.makers[key]()

    def __iter__(self) -> Iterator:
        return iter(self.makers)

    def __len__(self) -> int:
        return len(self.makers)

    def add(self, key, make: Callable[[], np.ndarray]) -> None:
        self.makers[key] = make

    def clear(self) -> None:
        self.makers.clear()
