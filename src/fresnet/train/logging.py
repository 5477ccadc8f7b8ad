"""Run logging: progress (a bar on a terminal, plain lines in a log), ``log.csv``, optional TensorBoard."""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any, Optional

from fresnet.ioutil import atomic_write_text

BASE_COLUMNS = ["step", "epoch", "samples", "loss", "lr", "samples_per_s", "elapsed_s"]


class CsvLog:
    """``log.csv``, rewritten atomically at each flush (a crash never leaves a torn row). On resume
    the rows after the checkpoint's step are dropped, so the log matches the weights."""

    def __init__(self, path: Path, val_names: list[str], resume_step: Optional[int] = None):
        self.path = Path(path)
        self.columns = BASE_COLUMNS + [f"val_{name}" for name in val_names]
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as handle:
                self.rows = [r for r in csv.DictReader(handle) if _step(r, self.path) <= resume_step]

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())


def _step(row: dict[str, Any], path: Path) -> int:
    try:
        return int(float(row.get("step") or 0))
    except (TypeError, ValueError, OverflowError):
        from fresnet.errors import FresnetError

        raise FresnetError(f"{path}: a row has step {str(row.get('step'))[:40]!r}, not a number; the log is damaged: "
                           "fix or delete it (the checkpoint is unaffected)") from None


class TensorBoard:
    def __init__(self, folder: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:
                warnings.warn("tensorboard=true but the tensorboard package is not installed; logging to CSV only")

    def add(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """The run's progress (steps, samples/s, loss, lr, ETA): a rich bar on a terminal, a plain line
    every tenth of the run or 30 s in a log (:class:`fresnet.progress.Progress`); nothing when
    disabled (other ranks, tests, ``progress=false``), though messages still print."""

    def __init__(self, total: int, start: int, enabled: bool, stream=None, clock=None):
        from fresnet.progress import Progress as _Progress

        options = {"clock": clock} if clock is not None else {}
        self.inner = _Progress("train", total, unit="steps", start=start, rate_unit="samples", enabled=enabled,
                               stream=stream, **options)

    def update(self, step: int, speed: float, loss: float, lr: float) -> None:
        self.inner.update(step, note=f"loss {loss:.4f}  lr {lr:.2e}", rate=speed)

    def print(self, message: str) -> None:
        self.inner.print(message)

    def close(self) -> None:
        self.inner.close()
