"""One stopwatch for the whole package: wall and CPU time of a piece of work, device work included.

CUDA runs kernels asynchronously: a ``perf_counter`` read right after a call measures the launch,
not the work. :func:`timed` therefore waits for the device before it starts and before it stops
(when the device, or a tensor on it, is CUDA), and records both clocks::

    with timed(device) as t:
        model(x)
    print(f"{t.wall:.3f} s wall, {t.cpu:.3f} s CPU")

A stopwatch that spans callbacks (a loop's time between two log rows) uses the record directly:
``t = Timing.start()`` ... ``t.wall`` (read while running) ... ``t.stop()``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

WALL_CLOCK = time.perf_counter
CPU_CLOCK = time.process_time


def synchronize(device: Any = None) -> None:
    """Wait for the queued work of a CUDA ``device`` (a ``torch.device``, ``'cuda:0'`` or a tensor on
    it); a CPU device, or None, needs no wait."""
    if device is None:
        return
    device = getattr(device, "device", device)  # a tensor: its device
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if kind != "cuda":
        return
    import torch

    torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall and CPU seconds of one piece of work; live while it runs, fixed once stopped."""

    wall_start: float
    cpu_start: float
    wall_end: Optional[float] = None
    cpu_end: Optional[float] = None

    @classmethod
    def start(cls) -> "Timing":
        return cls(WALL_CLOCK(), CPU_CLOCK())

    def stop(self) -> "Timing":
        if self.wall_end is None:
            self.wall_end, self.cpu_end = WALL_CLOCK(), CPU_CLOCK()
        return self

    @property
    def wall(self) -> float:
        """Seconds on the wall clock (so far, while running)."""
        return (WALL_CLOCK() if self.wall_end is None else self.wall_end) - self.wall_start

    @property
    def cpu(self) -> float:
        """Seconds of this process's CPU time, all threads (so far, while running)."""
        return (CPU_CLOCK() if self.cpu_end is None else self.cpu_end) - self.cpu_start


@contextmanager
def timed(device: Any = None) -> Iterator[Timing]:
    """Time the ``with`` block: the device's queued work finishes before the clocks start and before
    they stop. The yielded :class:`Timing` holds ``wall`` and ``cpu`` seconds (also if the block raises)."""
    synchronize(device)
    timing = Timing.start()
    try:
        yield timing
    finally:
        synchronize(device)
        timing.stop()
