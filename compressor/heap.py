"""Freed memory given back to the system between a run's steps.

glibc's malloc keeps freed blocks below its mmap threshold (up to 32 MiB, raised as large
blocks are freed) in its heaps for reuse, and a heap shrinks only from its top: after a large
model's candidate is freed, gigabytes can stay resident, unused, and the next candidate's
peak comes on top of them.  ``give_back`` asks glibc to return every free page
(``malloc_trim(0)``); elsewhere (another C library) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _trim_function():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _trim_function()


def give_back() -> None:
    """Return the heap's free pages to the system (glibc; a no-op elsewhere)."""
    if _TRIM is not None:
        _TRIM(0)
