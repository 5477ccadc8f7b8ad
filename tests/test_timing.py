"""fresnet.timing.timed: the one stopwatch (wall and CPU time, the device's queue drained first)."""
from __future__ import annotations

import pytest
import torch

from fresnet import timing


class Clocks:
    def __init__(self):
        self.wall, self.cpu = 100.0, 5.0


@pytest.fixture
def clocks(monkeypatch):
    c = Clocks()
    monkeypatch.setattr(timing, "WALL_CLOCK", lambda: c.wall)
    monkeypatch.setattr(timing, "CPU_CLOCK", lambda: c.cpu)
    return c


def test_timed_records_wall_and_cpu_seconds(clocks):
    with timing.timed() as t:
        clocks.wall += 2.5
        clocks.cpu += 4.0  # two threads busy
        assert t.wall == 2.5  # live while running
    clocks.wall += 10
    assert (t.wall, t.cpu) == (2.5, 4.0)  # fixed once the block ends


def test_timed_keeps_the_time_of_a_block_that_raises(clocks):
    with pytest.raises(ValueError):
        with timing.timed() as t:
            clocks.wall += 1.0
            raise ValueError("boom")
    assert t.wall == 1.0


def test_a_cuda_device_or_tensor_is_synchronised_before_and_after(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(str(device)))
    with timing.timed(torch.device("cuda", 0)):
        pass
    assert calls == ["cuda:0", "cuda:0"]
    calls.clear()
    with timing.timed("cuda:1"):
        pass
    assert calls == ["cuda:1", "cuda:1"]
    calls.clear()
    with timing.timed(torch.zeros(1)), timing.timed("cpu"), timing.timed(None):
        pass
    assert calls == []  # CPU work is done when the call returns


def test_timing_started_by_hand_spans_callbacks(clocks):
    t = timing.Timing.start()
    clocks.wall += 3.0
    assert t.wall == 3.0
    t.stop()
    clocks.wall += 3.0
    assert t.wall == 3.0 and t.stop().wall == 3.0  # a second stop keeps the first reading
