"""Process-wide settings the command line makes before any work: how long torch's threads spin while
they wait, and how glibc's allocator returns memory. Both are defaults a user can override from the environment.

Measured on a 2-core AVX2 EPYC (``docs/performance.md``, "CPU training: threads and the
allocator"): a short spin before sleeping made the demo's 2-thread training step ~1.5x faster on a
quiet machine than never spinning, and no slower on a busy one; keeping freed memory took its page
faults from ~9,400 to ~60 per step.
"""
from __future__ import annotations

import ctypes
import os
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
# OpenMP spins before a waiting thread sleeps (libgomp counts; its default is 300,000)
SPIN_COUNT = 10000


def wait_briefly_then_sleep() -> None:
    """Let torch's OpenMP threads spin only briefly while they wait, then sleep: ``GOMP_SPINCOUNT``
    :data:`SPIN_COUNT`, unless the user chose (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set).

    A waiting OpenMP thread spins before it sleeps (libgomp: 300,000 spins by default). When the
    cores are shared (a CI runner, a laptop doing other work) long spins take the time slices the
    working threads need: on a 2-core machine at load 5-10 a demo training step took 3-4.6 s with
    the default spin and 0.3-0.7 s with threads that never spin (``OMP_WAIT_POLICY=PASSIVE``). But
    never spinning costs a quiet machine: every wait becomes a futex sleep and wake-up, and a step
    of the demo's small network has hundreds of them: 175-309 ms per step with PASSIVE against
    113-130 ms spinning, the second thread then slower than none (158-199 ms on one thread). A
    short spin gets both (docs/performance.md, "CPU training: threads and the allocator"): 116-153 ms
    quiet, and 530-637 ms against PASSIVE's 537-706 ms beside four busy processes. Only works before torch is imported,
    so the command line sets it first thing."""
    if "torch" in sys.modules or any(name in os.environ for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)


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


def running_on_glibc() -> bool:
    """Whether this process's C library is glibc (``confstr``, free: the command line asks at every
    start, where ``platform.libc_ver()`` and ``ctypes.util.find_library`` cost ~30 ms together)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # the name is unknown outside glibc's systems
        return False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel after
    every free (see the module's docstring). Returns whether the settings were applied: only with
    glibc, and only when :func:`user_chose_malloc_settings` is false. The cost is that the
    process keeps its peak heap until it exits, which a command that runs one job can afford."""
    if not running_on_glibc() or user_chose_malloc_settings():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                (M_TOP_PAD, TOP_PAD_BYTES))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
