"""Test-suite settings: hypothesis draws the same examples on every run, so CI is reproducible
(a failure found while developing is kept as an explicit example, not left to chance).

numpy's BLAS runs on one thread (set before anything imports numpy; an explicit setting in the
environment wins): the suite's matrices are small, and on a busy 2-core machine OpenBLAS's
threads spin against ORT's and each other (the batched least-squares refits of the
compensation tests took about ten times the CPU)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from hypothesis import settings  # noqa: E402  (after the BLAS setting, in case it loads numpy)

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.load_profile("deterministic")
