"""glibc's allocator, set for training on a CPU: freed memory is kept for the next step instead of being handed
back to the operating system.

A training step allocates and frees the same large activations every time (a 4×512×1376 fp32 tensor is 11 MB).
glibc serves such sizes with mmap, or trims them off the top of the heap when freed, so every step maps fresh pages
and takes a page fault for every 4 KB of them: on the 25m tiny model, LoRA dropout's dropped copies and masks made
that 9% of an fp32 step (850 vs 935 tokens/s, 2-core AMD EPYC). With the mmap and trim thresholds at 1 GiB the
memory is reused and the step runs at the speed of dropout 0 (bench/train_throughput.py; `mallopt(3)`).
The price: up to 1 GiB of freed memory stays with the process until it exits (peak memory is unchanged).
Only on Linux with glibc, only when the user has not set glibc's own MALLOC_* variables or tunables, and
MEDPT_MALLOC=default leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

_M_TRIM_THRESHOLD = -1  # malloc.h
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when it was done."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or os.environ.get("MEDPT_MALLOC") == "default":
        return False
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return False  # the user's own settings win
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
