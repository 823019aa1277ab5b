"""Each tensor's last k-means result, kept compactly, so that the same clustering is not run twice.

share's ladder changes one kind of weight's width from rung to rung and keeps the other's
(conv 4 / fc 4, conv 4 / fc 5, conv 6 / fc 5, ...), and the share search makes some of the
same whole-tensor candidates: on a large model every repeat is a k-means of tens of millions
of values.  ``SharedMemo.shared`` returns a remembered result when the values (by digest), k,
init and seed are the same, else clusters and remembers that one instead (one per tensor
name, its labels in int8 / int16: a byte or two per weight).  Clustering is deterministic, so
a remembered result is exactly what clustering again would give.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .kmeans import SharedArray, codebook_values


def digest(array: np.ndarray) -> bytes:
    """A digest of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(array)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return h.digest()


def narrow_labels(labels: np.ndarray) -> np.ndarray:
    """k-means labels (-1 for a zero kept as it was) in int8 up to 127 centroids, else int16
    up to 32767, else as they are."""
    top = int(labels.max()) if labels.size else 0
    for dtype in (np.int8, np.int16):
        if top <= np.iinfo(dtype).max:
            return labels.astype(dtype)
    return labels


@dataclass(frozen=True)
class _Kept:
    key: tuple
    digest: bytes
    labels: np.ndarray  # narrowed
    codebook: np.ndarray
    centroids: np.ndarray
    counts: np.ndarray
    iterations: int

    def expand(self, array: np.ndarray) -> SharedArray:
        """The SharedArray ``share_array`` gave for `array`: its values where the labels are
        -1 (the zeros), the codebook's elsewhere."""
        labels = self.labels.astype(np.int32)
        values = codebook_values(array, self.labels, self.codebook) if self.codebook.size else array.copy()
        return SharedArray(values, labels, self.codebook, self.centroids, self.counts, self.iterations)


class SharedMemo:
    """The last ``share_array`` result of each tensor name (thread-safe: share clusters
    tensors on a small pool, one name per task)."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def shared(self, name: str, array: np.ndarray, key: tuple, make: Callable[[], SharedArray]) -> SharedArray:
        """`make()`'s result for tensor `name` with values `array` and settings `key` (k, init,
        seed: whatever `make` depends on besides the values), remembered from the last call
        with the same ones."""
        code = digest(array)
        with self._lock:
            kept = self._kept.get(name)
        if kept is not None and kept.key == key and kept.digest == code:
            with self._lock:
                self.hits += 1
            return kept.expand(array)
        with self._lock:
            self._kept.pop(name, None)  # freed before the next one is made
            self.misses += 1
        result = make()
        kept = _Kept(
            key,
            code,
            narrow_labels(result.labels),
            result.codebook,
            result.centroids,
            result.counts,
            result.iterations,
        )
        with self._lock:
            self._kept[name] = kept
        return result
