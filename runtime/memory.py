"""Keep freed memory for the next forward instead of handing it back to the kernel.

A forward allocates and frees the same large activations every time. glibc's malloc serves
blocks above its mmap threshold with fresh mmaps and returns the top of its heap to the kernel
once it is free, so every forward touches new pages: BERT-base took 9-13 thousand minor page
faults per forward, about 5% of its time (docs/PERFORMANCE.md), and under a CPU quota the
kernel's page zeroing counts against the device's share. Raising both thresholds makes those
blocks come back from the heap, fault-free, from the second forward on. The heap then keeps
its peak size, which an inference process reaches anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest: blocks below it come from the heap
TRIM_THRESHOLD_BYTES = 1 << 30  # free heap top kept before any is returned


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed activations for reuse; False (and nothing changed)
    where the C library is not glibc or refuses."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.debug("retain_freed_memory: not glibc (%s), left as is", platform.libc_ver())
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    done = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    log.debug("retain_freed_memory: mallopt %s", "applied" if done else "refused")
    return done
