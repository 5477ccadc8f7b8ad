"""Progress of long work that reaches a log: a rich bar on a terminal, plain lines everywhere else.

rich draws its live bar only on a terminal; under CI or ``fresnet train ... > log`` it stays silent
for minutes. :class:`Progress` therefore checks the stream: on a terminal it shows the bar, and
otherwise it prints one line at every tenth of the work or every 30 seconds, whichever comes first,
plus a last line when the work ends::

    train: 450/1500 steps (30%), 512.3 samples/s, loss 2.1034  lr 7.1e-02, elapsed 1:28, ETA 3:25

Every long command uses it (``train``, ``eval`` and its IJB extraction, ``embed``, ``pack``, ``synth``,
``demo``); a new one
needs only ``with Progress("what", total, unit="images") as p: ... p.advance(n)``, or
``p.advance`` as the ``progress(n)`` callback of :func:`fresnet.eval.embed.embed_images`. The clock
is injectable, so the plain lines are tested without sleeping.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")

EVERY_FRACTION = 0.1  # a plain line at each tenth of the work...
EVERY_SECONDS = 30.0  # ...or after this long without one


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``; unknown -> ``?``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Progress of ``total`` units of work (None: unknown), counted from ``start``.

    ``rate_unit`` / ``rate_per_unit`` show the speed in another unit than the count (a training
    run counts steps and shows samples/s: ``rate_per_unit`` is the global batch); ``update(rate=...)``
    overrides the computed speed. ``note`` is free text shown after the speed (loss and lr).
    ``enabled=False`` shows nothing but still prints :meth:`print` messages. ``terminal`` None asks
    the stream; ``clock`` is the time source (monotonic seconds).
    """

    def __init__(self, description: str, total: Optional[int] = None, *, unit: str = "items", start: int = 0,
                 rate_unit: Optional[str] = None, rate_per_unit: float = 1.0, enabled: bool = True,
                 stream: Optional[TextIO] = None, terminal: Optional[bool] = None, transient: bool = False,
                 every_fraction: float = EVERY_FRACTION, every_seconds: float = EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.description, self.total, self.unit = description, total, unit
        self.rate_unit, self.rate_per_unit = rate_unit or unit, float(rate_per_unit)
        self.start = self.completed = int(start)
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.every_fraction, self.every_seconds, self.clock = every_fraction, every_seconds, clock
        self.note, self.rate_override = "", None
        self.started_at = self.last_line_at = clock()
        self.last_line_completed = self.start
        self.closed = False
        self.bar = self.task = None
        terminal = is_terminal(self.stream) if terminal is None else terminal
        if enabled and terminal:
            self._start_bar(transient)

    # ---- the two displays -----------------------------------------------------------------------
    def _start_bar(self, transient: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        count = MofNCompleteColumn() if self.total is not None else TextColumn("{task.completed}")
        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), count, TextColumn("{task.fields[speed]}"),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=self.stream), transient=transient,
        )
        self.task = self.bar.add_task(self.description, total=self.total, completed=self.start, speed="", note="")
        self.bar.start()

    @property
    def plain(self) -> bool:
        """Whether progress goes out as plain lines (enabled, not on a terminal)."""
        return self.enabled and self.bar is None

    def rate(self) -> Optional[float]:
        """Speed in ``rate_unit`` per second: the caller's, or the average since the start."""
        if self.rate_override is not None:
            return self.rate_override
        elapsed = self.clock() - self.started_at
        done = self.completed - self.start
        return done * self.rate_per_unit / elapsed if elapsed > 0 and done > 0 else None

    def eta(self) -> Optional[float]:
        if self.total is None:
            return None
        elapsed = self.clock() - self.started_at
        done = self.completed - self.start
        if done <= 0 or elapsed <= 0:
            return None
        return max(0, self.total - self.completed) * elapsed / done

    def line(self) -> str:
        """The plain progress line for the current state."""
        parts = [
            f"{self.completed:,}/{self.total:,} {self.unit}"
            + (f" ({100 * self.completed / self.total:.0f}%)" if self.total else "")
            if self.total is not None
            else f"{self.completed:,} {self.unit}"
        ]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:,.1f} {self.rate_unit}/s")
        if self.note:
            parts.append(self.note)
        parts.append(f"elapsed {format_duration(self.clock() - self.started_at)}")
        if self.total is not None and self.completed < self.total:
            parts.append(f"ETA {format_duration(self.eta())}")
        return f"{self.description}: " + ", ".join(parts)

    # ---- reporting progress ---------------------------------------------------------------------
    def update(self, completed: int, note: Optional[str] = None, rate: Optional[float] = None) -> None:
        """Set the count done so far (and the note, and the caller's own speed)."""
        self.completed = int(completed)
        if note is not None:
            self.note = note
        if rate is not None:
            self.rate_override = float(rate)
        if not self.enabled:
            return
        if self.bar is not None:
            speed = self.rate()
            self.bar.update(self.task, completed=self.completed, note=self.note,
                            speed=f"{speed:,.1f} {self.rate_unit}/s" if speed is not None else "")
        elif self._line_due():
            self._emit()

    def begin(self, completed: int) -> None:
        """Start counting now from ``completed`` already done (a resumed job): they are shown, but
        the speed and ETA count only the work from here on."""
        self.start = self.completed = self.last_line_completed = int(completed)
        self.started_at = self.last_line_at = self.clock()
        if self.bar is not None:
            self.bar.reset(self.task, total=self.total, completed=self.completed)

    def advance(self, n: int = 1, note: Optional[str] = None) -> None:
        self.update(self.completed + int(n), note)

    def track(self, iterable: Iterable[T], per_item: int = 1) -> Iterator[T]:
        """Yield from ``iterable``, counting ``per_item`` units after each item (never past the
        total: a last chunk may be short)."""
        for item in iterable:
            yield item
            done = self.completed + per_item
            self.update(min(done, self.total) if self.total is not None else done)

    def _line_due(self) -> bool:
        if self.completed == self.last_line_completed:
            return False
        if self.clock() - self.last_line_at >= self.every_seconds:
            return True
        if not self.total:
            return False
        if self.completed >= self.total:
            return True
        tenth = max(1.0, self.total * self.every_fraction)  # crossed into the next tenth of the work
        return math.floor(self.completed / tenth) > math.floor(self.last_line_completed / tenth)

    def _emit(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line_at, self.last_line_completed = self.clock(), self.completed

    def print(self, message: str) -> None:
        """A message between progress updates (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the bar; in plain mode, a last line if the last one is out of date."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.stop()
        elif self.plain and self.completed != self.last_line_completed:
            self._emit()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
