"""What runs around the optimisation steps, each a small object driven by the step count (like
arcface_torch's ``CallBackLogging``, ``CallBackVerification`` and ``AverageMeter``):

* :class:`Throughput`: samples/s over a recent window, the steady rate after warm-up, the training time;
* :class:`RunLog`: the progress display, ``log.csv`` and TensorBoard (rank 0);
* :class:`Verification`: accuracy on the ``val_targets`` (rank 0; every rank waits for it);
* :class:`Every`: the schedule of checkpoints (and of the others): every N steps, and at the last.

The loop (:meth:`fresnet.train.loop.Trainer.fit`) asks each whether it is ``due(step, last)``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from fresnet.progress import Progress
from fresnet.timing import Timing

log = logging.getLogger(__name__)

WINDOW_STEPS = 20  # the speed shown is measured over about this many steps


class Every:
    """Due every ``steps`` steps (0: never) and at the last step."""

    def __init__(self, steps: int, enabled: bool = True):
        self.steps, self.enabled = int(steps), enabled

    def due(self, step: int, last: bool) -> bool:
        return self.enabled and (last or bool(self.steps and step % self.steps == 0))


class Throughput:
    """Training speed and time, read at each loss read (:meth:`tick`).

    ``speed`` is samples/s over the current window (restarted every :data:`WINDOW_STEPS` steps and
    after each pause); ``steady`` averages every interval after the first (which holds the compile
    and warm-up); ``elapsed`` adds the training time to what a resumed run had already spent.
    Verification and checkpoints are not training time: :meth:`pause` leaves them out."""

    def __init__(self, global_batch: int, step: int, elapsed: float = 0.0):
        self.global_batch, self.elapsed = global_batch, float(elapsed)
        self.speed, self.warm = 0.0, False
        self.steady_steps, self.steady_time = 0, 0.0
        self._window, self._window_step = Timing.start(), step
        self._interval, self._interval_step = Timing.start(), step

    def tick(self, step: int) -> float:
        seconds = self._interval.wall
        self.elapsed += seconds
        if self.warm:
            self.steady_steps += step - self._interval_step
            self.steady_time += seconds
        self.warm = True
        window = self._window.wall
        if window > 0:
            self.speed = self.global_batch * (step - self._window_step) / window
        if step - self._window_step >= WINDOW_STEPS:
            self._window, self._window_step = Timing.start(), step
        return self.speed

    def pause(self, step: int) -> None:
        """After work that is not training: the speed window starts again."""
        self._window, self._window_step = Timing.start(), step

    def resume(self, step: int) -> None:
        """The next interval starts now (at the end of each log/checkpoint/verification round)."""
        self._interval, self._interval_step = Timing.start(), step

    @property
    def steady(self) -> float:
        return self.global_batch * self.steady_steps / self.steady_time if self.steady_time > 0 else self.speed


class RunLog:
    """The progress display (a bar on a terminal, plain lines in a log), ``OUT/log.csv`` and
    TensorBoard (``out`` None: no files, as on ranks other than 0). A row is due every ``every`` steps."""

    def __init__(self, out: Optional[Path], val_columns: Sequence[str], resume_step: Optional[int], every: int,
                 progress: Progress, tensorboard: bool = False):
        from fresnet.train.logging import CsvLog, TensorBoard

        self.schedule = Every(max(1, int(every)))
        self.csv = CsvLog(out / "log.csv", val_columns, resume_step) if out is not None else None
        self.tb = TensorBoard(out, tensorboard and out is not None)
        self.progress = progress

    def due(self, step: int, last: bool) -> bool:
        return self.schedule.due(step, last)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.csv.rows) if self.csv is not None else []

    def show(self, step: int, speed: float, loss: float, lr: float) -> None:
        self.progress.update(step, note=f"loss {loss:.4f}  lr {lr:.2e}", rate=speed)

    def add(self, row: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.add(row)
            self.csv.flush()
            self.tb.add(row)

    def close(self) -> None:
        self.progress.close()
        self.tb.close()


class Verification:
    """Accuracy of the backbone on every ``val_targets`` pack (``name -> (images, issame)``), the
    embeddings of image + mirror summed like the original, 10-fold as InsightFace's ``verification.py``.
    Runs on rank 0; the other ranks wait at a barrier."""

    def __init__(self, sets: dict[str, tuple[np.ndarray, Any]], every: int, enabled: bool, batch_size: int,
                 is_main: bool):
        self.sets, self.batch_size, self.is_main = sets, int(batch_size), is_main
        self.schedule = Every(every, enabled)

    def due(self, step: int, last: bool) -> bool:
        return self.schedule.due(step, last)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        from fresnet.eval.embed import embed_images
        from fresnet.eval.model_loader import TorchEmbedder
        from fresnet.eval.verification import verify
        from fresnet.train import distributed as D

        results = {}
        if self.is_main and self.sets:
            embedder = TorchEmbedder(model, "training", "fresnet", device=device)  # puts the model in eval mode
            for name, (images, issame) in self.sets.items():
                embeddings = embed_images(embedder, images, batch_size=self.batch_size, flip=True)
                results[name] = float(verify(embeddings, issame, nfolds=10).accuracy)
            model.train()
        D.barrier()
        return results
