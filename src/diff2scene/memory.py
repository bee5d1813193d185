"""What the process holds in memory, and making freed blocks go back to the system.

A memory budget is about the whole process (what a robot's supervisor sees and kills for), so
it is measured as the resident set size from ``/proc``, not summed from our own arrays.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from pathlib import Path

#: glibc's mallopt parameter for the size above which allocations are separate mappings.
_M_MMAP_THRESHOLD = -3


def rss_mib() -> float | None:
    """Current resident set size of this process in MiB (Linux ``/proc``); None elsewhere."""
    try:
        with Path("/proc/self/statm").open() as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``getrusage``; KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def return_freed_blocks_to_system(threshold_bytes: int = 128 << 10) -> bool:
    """Make glibc serve allocations of ``threshold_bytes`` and more from their own mappings,
    which go back to the system when freed.

    By default glibc raises that threshold each time such a block is freed (up to 32 MiB), so
    the map's 0.2-2 MiB blocks end up on the heap after the first ones are freed, and spilling
    them no longer lowers the resident size. Returns whether the setting took (False off glibc).
    """
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
