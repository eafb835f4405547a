"""glibc's heap, tuned so that freed memory goes back to the OS: what keeps a long report or server flat.

- ``return_freed_memory``: a fixed mmap threshold, so big freed blocks are unmapped at once;
- ``trim_heap``: ``malloc_trim(0)`` after a burst of mid-sized blocks (LayerCAM, a dropped explorer run).

Both are no-ops (returning False) where the C library is not glibc.

Examples:
    >>> from pipeline.core.heap import return_freed_memory, trim_heap
    >>> return_freed_memory(), trim_heap()  # on Linux with glibc
    (True, True)
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc's malloc.h)
MMAP_THRESHOLD = 8 << 20  # 1 MB cost the engine ~2 ms per 640 photo (its few-MB buffers mmapped each time)


def return_freed_memory() -> bool:
    """Make glibc hand every freed block of 8 MB or more straight back to the OS; True where it applied.

    glibc serves big blocks from mmap, but each big free raises its threshold (up to 32 MB), after which
    tensors of a few MB come from its heaps and stay there when freed: a report, which allocates feature
    maps of every size in turn, then peaks higher on a large photo. A fixed threshold stops that drift.
    8 MB, not 1: at 1 MB the engine's per-photo buffers (a 640 photo decoded, and as float) were mmapped and
    zeroed for every photo (rows mmap-1mb and mmap-8mb in docs/benchmarks.md); tests/test_memory.py's
    limits hold at 8 MB. Linux with glibc only.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def trim_heap() -> bool:
    """Hand the free pages inside glibc's heaps back to the OS (``malloc_trim(0)``); True where it applied.

    Blocks under ``MMAP_THRESHOLD`` come from the heaps, and freeing them keeps the pages: after the report's
    LayerCAM (backward passes of few-MB feature maps) hundreds of MB stayed resident, and every section after
    it stacked on top (tests/test_memory.py holds the report's whole-process peak).
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
