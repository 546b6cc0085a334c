"""Keep freed memory in the process for reuse (glibc), set by ``lckd segment`` before inference.

glibc's malloc serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap``
and returns it to the system on ``free``; the next block of that size is page-faulted in again,
4 KiB at a time. The network's activations are such blocks (a paper tile's stem output is 262 MB
in bf16), so every layer paid for faulting in its output: a channels-last paper tile took 3.10 s
in bf16 and 6.43 s in fp32 with the default, 2.36 s and 4.20 s with the setting below (2 threads;
`Testing/Benchmarks/tile_ablation.py`, Resources/Docs/Benchmarks.md).
Serving large blocks from the heap and never trimming it makes freed activations reusable without
faults; the price is that the process keeps its peak memory until it exits, which suits a
command that exits after its cases. It is what the PyTorch CPU tuning guides get from jemalloc
or tcmalloc, without preloading a library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and never trim it; False where libc is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
