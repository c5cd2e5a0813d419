"""Process memory policy for the szoq application (called by entry points, not by the library).

glibc raises its mmap threshold dynamically (up to 32 MiB) after large blocks are freed, so
the per-layer temporaries of weight streaming, scoring and dequantization (1-4 MiB each) end
up on the heap between long-lived small tensors and are never returned: measured on
SmolLM2-135M, loading the nf4 runtime peaked anywhere between 0.63 and 1.37 GB from run to
run, and a fisher pass kept ~0.45 GB of freed activations resident. Pinning the threshold
at 1 MiB sends every tensor-sized block straight to mmap, which is returned on free:
the same load then peaks at 0.63 GB every time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_applied = False


def use_predictable_malloc(threshold: int = 1 << 20) -> bool:
    """Pin glibc's mmap threshold so that freed tensor memory goes back to the OS.

    Args:
        threshold: Allocations of at least this many bytes are served by mmap.

    Returns:
        True when applied (glibc), False elsewhere (other C libraries keep their policy).
    """
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        _applied = False
    log.debug("mmap threshold pinned at %d bytes: %s", threshold, _applied)
    return _applied
