"""The run's records: ``log.csv`` (every row, every column ever logged) and optional TensorBoard."""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from fresnet.ioutil import atomic_write_text, read_bytes

BASE_COLUMNS = ["step", "epoch", "samples", "loss", "lr", "samples_per_s", "elapsed_s"]

log = logging.getLogger(__name__)


class DamagedLog(ValueError):
    """``log.csv`` cannot be read back as this run's log."""


class CsvLog:
    """``log.csv``, rewritten atomically at each flush (a crash never leaves a torn row).

    On resume the rows after the checkpoint's step are dropped, so the log matches the weights, and
    the columns of the earlier log are kept (a resume with other ``val_targets`` adds columns, it
    never drops the results already logged). A log that cannot be read (binary bytes, a step that is
    not a number) is moved aside to ``log.csv.damaged`` and a new log starts, with a warning: the
    log is a record of the run, the checkpoint alone decides where training continues."""

    def __init__(self, path: Path, val_columns: Sequence[str], resume_step: Optional[int] = None):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        earlier: list[str] = []
        if resume_step is not None and self.path.is_file():
            try:
                earlier, self.rows = _read_log(self.path, resume_step)
            except DamagedLog as exc:
                aside = _set_aside(self.path)
                log.warning("%s: %s; moved aside to %s, and a new log starts at step %d (the checkpoint is "
                            "unaffected)", self.path, exc, aside.name, resume_step)
        wanted = BASE_COLUMNS + list(earlier) + list(val_columns)
        self.columns = list(dict.fromkeys(wanted))  # in order, each once

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())


def _read_log(path: Path, resume_step: int) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows up to ``resume_step``) of an earlier log."""
    data = read_bytes(path, "training log")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedLog(f"not UTF-8 text (byte {exc.start})") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    except csv.Error as exc:
        raise DamagedLog(f"not CSV ({exc})") from None
    if columns and columns[0] != "step":
        raise DamagedLog(f"its header starts with {columns[0][:40]!r}, not 'step'")
    return columns, [row for row in rows if _step(row) <= resume_step]


def _step(row: dict[str, Any]) -> int:
    try:
        return int(float(row.get("step") or 0))
    except (TypeError, ValueError, OverflowError):
        raise DamagedLog(f"a row has step {str(row.get('step'))[:40]!r}, not a number") from None


def _set_aside(path: Path) -> Path:
    aside = path.with_name(path.name + ".damaged")
    number = 1
    while os.path.lexists(aside):
        aside = path.with_name(f"{path.name}.damaged.{number}")
        number += 1
    os.replace(path, aside)
    return aside


class TensorBoard:
    def __init__(self, folder: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:
                log.warning("tensorboard=true but the tensorboard package is not installed; logging to CSV only")

    def add(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
