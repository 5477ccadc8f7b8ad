"""Process-wide settings the command line makes before any work: how torch's threads wait, and how
glibc's allocator returns memory. Both are defaults a user can override from the environment.

Measured on a 2-core AVX2 EPYC (``docs/performance.md``, "CPU training: the allocator"): a demo
training step allocates and frees ~100 MB of activations and gradients. glibc serves blocks above
its mmap threshold with fresh ``mmap`` pages and trims the heap top after each free, so every step
page-faults its memory back in and the kernel zeroes it. Keeping freed memory cut the step's CPU
time by about a quarter.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# serve blocks up to this size from the heap (glibc's own cap for its dynamic threshold on 64-bit)
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# give the heap top back only past 2 GiB free (mallopt takes an int): the next step needs it again
TRIM_THRESHOLD_BYTES = 2**31 - 1
# grow the heap in large steps
TOP_PAD_BYTES = 256 * 1024 * 1024

# the user's own choice wins over ours
MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
OPT_OUT = "FRESNET_DEFAULT_MALLOC"


def prefer_sleeping_threads() -> None:
    """Let torch's OpenMP threads sleep while they wait, unless the user chose (``OMP_WAIT_POLICY``).

    By default a waiting OpenMP thread spins. When the cores are shared (a CI runner, a laptop doing
    other work) the spinning threads take the time slices the working ones need: on a 2-core machine
    at load 5-10 a demo training step took 3-4.6 s with spinning threads and 0.3-0.7 s with sleeping
    ones, at about the same CPU time per step as one thread. Only works before torch is imported,
    so the command line sets it first thing; ``OMP_WAIT_POLICY=ACTIVE`` restores spinning."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def user_chose_malloc_settings() -> bool:
    """True when the environment already decides how malloc behaves: glibc's ``MALLOC_*_`` variables,
    a ``glibc.malloc`` tunable, another allocator preloaded, or ``FRESNET_DEFAULT_MALLOC=1``."""
    if os.environ.get(OPT_OUT, "").strip() not in ("", "0"):
        return True
    if any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return True
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc"))


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel after
    every free (see the module's docstring). Returns whether the settings were applied: only on
    Linux with glibc, and only when :func:`user_chose_malloc_settings` is false. The cost is that the
    process keeps its peak heap until it exits, which a command that runs one job can afford."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_chose_malloc_settings():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                (M_TOP_PAD, TOP_PAD_BYTES))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
