"""The layers' covariance sums of one captured batch, on two threads.

``layers.accumulate_inputs`` adds each batch's input rows to every layer's X^T X: float64
products on one BLAS thread (the searches run under ``compensate.one_blas_thread``), one
layer after the other, while the second core waits.  Each layer's sums are its own and are
added in the same order whatever thread runs them, so spreading the layers over
``ACCUMULATE_THREADS`` threads (numpy releases the GIL in its products) gives the same
covariances bit for bit.  BLAS is held to one thread inside, so two layers never ask for
four threads on two cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

# Layers accumulated at once: one per core, at most two (the machines the plans are counted for).
ACCUMULATE_THREADS = min(2, os.cpu_count() or 1)

_BLAS = ThreadpoolController()


class LayerPool:
    """A pool that adds a batch's rows to every layer (``accumulate``), each layer on one thread;
    a context manager (the threads end with it)."""

    def __init__(self, threads: int = ACCUMULATE_THREADS):
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._limit = None

    def __enter__(self) -> LayerPool:
        if self.threads > 1:
            self._limit = _BLAS.limit(limits=1, user_api="blas")
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="compressor-covariance")
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._limit is not None:
            self._limit.restore_original_limits()
            self._limit = None

    def accumulate(self, layers: Sequence, values: dict[str, np.ndarray]) -> None:
        """``layer.accumulate(values[layer.x_name])`` for every layer; returns when all are done
        (an error in one is raised here)."""
        if self._pool is None or len(layers) < 2:
            for layer in layers:
                layer.accumulate(values[layer.x_name])
            return
        done = [self._pool.submit(layer.accumulate, values[layer.x_name]) for layer in layers]
        for future in done:
            future.result()
