"""Process-wide settings for CPU training: glibc's allocator.

glibc maps every block over 32 MiB afresh and gives freed memory back to the kernel, so a training step
that allocates the same large activations each time page-faults them in again on every step. On the
2-core VMs a fault costs ~1 µs per 4 KiB page. At L=1000, batch 256, 1 thread that was 35–40% of a step
(``benchmarks/imn_cost.py`` with and without ``--default-malloc``: IMN 2.50 → 1.63 ms/sample, DIN 4.55 →
2.67) and it bent IMN's cost curve: time per sample at L=1000 over L=250 went from 4.74 to 3.68 with the
memory kept (``benchmarks/results/imn_cost*.md``). The price is that the process keeps its peak memory
until it exits, which suits a training job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["retain_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Serve every block from glibc's heap and never hand freed memory back; True when in effect.

    Idempotent. A no-op (False) off Linux/glibc, e.g. on macOS or musl.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            # M_MMAP_MAX=0: no block gets a mapping of its own; the heap shrinks only past 2 GiB free at its top.
            _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if not _applied:
        logger.info("glibc mallopt unavailable: freed memory goes back to the OS as usual")
    return _applied
