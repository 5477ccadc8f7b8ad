"""The training loop: one process of a (possibly ``torchrun``-launched) run.

Per step: set the lr from the schedule and run the sync-free :class:`~fresnet.train.step.TrainStep`
(forward under autocast if ``amp``, the Partial-FC loss over the global batch in float32, backward,
clip, SGD). Losses are read in batches (:meth:`Trainer.sync_interval`) and checked for NaN; then the
callbacks that are due run: the run log, verification, the checkpoint.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from fresnet.errors import FresnetError
from fresnet.progress import Progress
from fresnet.train import distributed as D
from fresnet.train.callbacks import Every, RunLog, Throughput, Verification
from fresnet.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from fresnet.train.components import Components, build_components
from fresnet.train.config import TrainConfig
from fresnet.train.optim import lr_at

MODEL_NAME = "model.safetensors"
LOG_NAME = "log.csv"

log = logging.getLogger(__name__)

# measured in docs/training.md ("UniFace and gradient clipping")
UNIFACE_WITHOUT_CLIP = (
    "loss uniface without clip_grad_norm: UniFace's authors always clip the gradient norm at 10; without it the "
    "learned bias can overshoot past s*(1 + cos - m), where both of UniFace's clamps saturate, the loss sits at s "
    "and no gradient flows (the run stops learning). Set clip_grad_norm=10 as the authors do")


class TrainingDiverged(FresnetError):
    """The loss became NaN or Inf; the last good checkpoint is left in place."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. ``checkpoint_step`` is the step ``checkpoint.pt`` holds (None: none)."""

    def __init__(self, message: str, step: int, checkpoint_step: Optional[int]):
        super().__init__(message)
        self.step, self.checkpoint_step = step, checkpoint_step


@dataclass
class TrainResult:
    """What :func:`fresnet.train.run` returns (on rank 0; other ranks get the same paths)."""

    output: Path
    model_path: Path
    checkpoint_path: Path
    log_path: Path
    steps: int
    final_loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    samples_per_s: float = 0.0  # steady training throughput, after the warm-up (compile) steps
    settings: str = ""


# a callback gets (event, trainer): events "step" (after each loss read) and "checkpoint"
Callback = Callable[[str, "Trainer"], None]


class Trainer:
    """One training process: its parts (:func:`build_components`), its position (``step``,
    ``elapsed``), a resumed run's state, and the callbacks that run between steps."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Callback] = (), info: Optional[D.DistInfo] = None):
        from fresnet.eval.targets import target_names
        from fresnet.train.data import verification_sets

        self.cfg, self.callbacks = cfg, list(callbacks)
        self.info = info or D.init_from_env(cfg.device)
        self.out = Path(cfg.output)
        self.ckpt_path = self.out / CHECKPOINT_NAME
        if not cfg.resume and self.ckpt_path.exists() and not cfg.overwrite:
            raise FresnetError(f"{self.ckpt_path} exists; pass --resume to continue that run, overwrite=true to start "
                               "over, or choose another output=")
        self.parts: Components = build_components(cfg, self.info)
        self.step, self.elapsed, self.last_loss, self._last_lr = 0, 0.0, float("nan"), 0.0
        self.saved_step: Optional[int] = None  # the step checkpoint.pt holds
        self.metrics: dict[str, float] = {}
        resume_step = self._resume() if cfg.resume else None
        is_main, input_size = self.info.is_main, self.parts.net_config.input_size
        names = target_names([str(t) for t in cfg.val_targets])
        self.verification = Verification(verification_sets(cfg, input_size, names) if is_main else {}, cfg.verbose,
                                         bool(cfg.val_targets), cfg.val_batch_size, is_main)
        progress = Progress("train", cfg.max_steps, unit="steps", start=self.step, rate_unit="samples",
                            enabled=cfg.progress and is_main)
        self.run_log = RunLog(self.out if is_main else None, [f"val_{name}" for name in names], resume_step,
                              cfg.log_every, progress, cfg.tensorboard)
        self.checkpoints = Every(cfg.checkpoint_every)

    # the parts callbacks and tests reach for
    model = property(lambda self: self.parts.model)
    fc = property(lambda self: self.parts.classifier)
    device = property(lambda self: self.info.device)
    global_batch = property(lambda self: self.cfg.batch_size * self.info.world_size)

    # ---- checkpoints ------------------------------------------------------------------------
    def _resume(self) -> int:
        if self.info.is_main:  # a run killed mid-write leaves .NAME.XXXX.tmp files behind
            from fresnet.ioutil import remove_stale_temps

            remove_stale_temps(self.out)
        state = load_checkpoint(self.ckpt_path)
        notes = restore_training_state(self.parts, state, seed=self.cfg.seed, global_batch=self.global_batch,
                                       info=self.info, source=str(self.ckpt_path))
        self.step, self.elapsed = int(state["step"]), float(state["elapsed_s"])
        self.saved_step = self.step
        if self.info.is_main:
            log.info("resuming from step %d (%s)", self.step, self.ckpt_path)
            for note in notes:
                log.warning("%s", note)
        return self.step

    def save(self) -> None:
        """Every rank must call this (the classifier and RNG states are gathered)."""
        state = training_state(self.parts, self.step, self.elapsed, self.cfg.to_dict(), self.info)
        if state is not None:
            save_checkpoint(self.ckpt_path, state)
            self.save_model()
        D.barrier()
        self.saved_step = self.step
        self._emit("checkpoint")

    def save_model(self) -> Path:
        from fresnet.interop.native import save

        path = self.out / MODEL_NAME
        save(self.model, path, metadata={"source": f"fresnet train, step {self.step}, loss {self.cfg.loss}"})
        return path

    # ---- steps ------------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One step, then wait for its loss (tests and callers that want the value at once); the
        loop itself reads losses only when it logs (:meth:`_check_losses`)."""
        loss = self._launch_step(images, labels)
        return self._check_losses([(self.step, self._last_lr, loss)])

    def _launch_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._last_lr = lr_at(self.cfg, self.step)
        loss = self.parts.step(images, labels, self._last_lr)
        self.step += 1
        return loss

    def sync_interval(self) -> int:
        """Steps between reads of the loss. On CPU a read costs nothing; on CUDA it drains the
        queue, so losses are read (and checked for NaN) every few steps, and always before a log
        row, a verification or a checkpoint: a checkpoint never holds weights after a NaN loss."""
        if self.device.type == "cpu":
            return 1
        return max(1, min(int(self.cfg.log_every) or 10, 25))

    def _check_losses(self, pending: list[tuple[int, float, torch.Tensor]]) -> float:
        """Read the losses of ``pending`` (step, lr, loss) steps in one transfer; stop at the first
        that is not finite. Returns the last one."""
        values = torch.stack([loss.float() for _, _, loss in pending]).tolist()
        for (step, lr, _), value in zip(pending, values):
            if not math.isfinite(value):
                kept = (f"the last good checkpoint is {self.ckpt_path}" if self.ckpt_path.exists()
                        else "no checkpoint was written yet")
                raise TrainingDiverged(
                    f"loss is {value} at step {step} (lr {lr:.3g}); training stopped and {kept}. "
                    "Lower lr, add warmup_steps, set clip_grad_norm (e.g. 5), or use amp=none"
                )
        self.last_loss = values[-1]
        return values[-1]

    def verify(self) -> dict[str, float]:
        """Accuracy on every val target (rank 0; every rank must call this)."""
        results = self.verification(self.model, self.device)
        self.metrics.update(results)
        return results

    def _emit(self, event: str) -> None:
        for callback in self.callbacks:
            callback(event, self)

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        from fresnet.train.data import GlobalBatchSampler, build_loader

        cfg, info = self.cfg, self.info
        sampler = GlobalBatchSampler(len(self.parts.data), cfg.batch_size, info.rank, info.world_size, cfg.seed,
                                     self.step, cfg.max_steps, mirror=cfg.rand_mirror)
        loader = build_loader(self.parts.data, sampler, cfg, self.parts.net_config.input_size, self.device)
        meter, sync_every, pending = Throughput(self.global_batch, self.step, self.elapsed), self.sync_interval(), []
        self.model.train()
        self._announce(loader)
        try:
            for images, labels in loader:
                loss = self._launch_step(images, labels)
                pending.append((self.step, self._last_lr, loss))
                last = self.step == cfg.max_steps
                verify, save = self.verification.due(self.step, last), self.checkpoints.due(self.step, last)
                log_row = self.run_log.due(self.step, last) or verify
                if not (log_row or save or len(pending) >= sync_every):
                    continue
                loss, pending = self._check_losses(pending), []
                speed, lr = meter.tick(self.step), lr_at(cfg, self.step - 1)
                self.elapsed = meter.elapsed
                self.run_log.show(self.step, speed, loss, lr)
                self._emit("step")
                metrics = self.verify() if verify else {}
                if metrics and info.is_main:
                    log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if log_row:
                    self.run_log.add(self._row(sampler.epoch_of(self.step - 1), loss, lr, speed, metrics))
                if save:
                    self.save()
                if metrics or save:  # verification and checkpoints are not training time
                    meter.pause(self.step)
                meter.resume(self.step)
        except KeyboardInterrupt:
            raise self._interrupted(pending) from None
        finally:
            self.run_log.close()
        return TrainResult(self.out, self.out / MODEL_NAME, self.ckpt_path, self.out / LOG_NAME, self.step,
                           self.last_loss, dict(self.metrics), self.elapsed, self.run_log.rows, meter.steady,
                           self.parts.settings.describe())

    def _announce(self, loader: Any) -> None:
        if self.info.is_main:
            workers = getattr(loader, "num_workers", getattr(getattr(loader, "loader", None), "num_workers", 0))
            decode = "JPEG decode on the GPU" if self.cfg.decode == "gpu" else f"{workers} data workers"
            log.info("training on %s: %s; %s; global batch %d", self.device, self.parts.settings.describe(), decode,
                     self.global_batch)
            if self.cfg.loss == "uniface" and not self.cfg.clip_grad_norm:
                log.warning(UNIFACE_WITHOUT_CLIP)

    def _row(self, epoch: int, loss: float, lr: float, speed: float, metrics: dict[str, float]) -> dict[str, Any]:
        row = {"step": self.step, "epoch": epoch, "samples": self.step * self.global_batch, "loss": loss, "lr": lr,
               "samples_per_s": round(speed, 2), "elapsed_s": round(self.elapsed, 3)}
        row.update({f"val_{name}": value for name, value in metrics.items()})
        return row

    def _interrupted(self, pending: list[tuple[int, float, torch.Tensor]]) -> TrainingInterrupted:
        """Ctrl-C: one process keeps a checkpoint of the last finished step (unless its loss is not
        finite); several processes keep the last scheduled one (the others may be mid-collective)."""
        if not self.info.distributed and self.step > (self.saved_step or 0):
            if pending:
                self._check_losses(pending)  # never checkpoint weights after a NaN loss
            self.save()
        held = (f"{self.ckpt_path} holds step {self.saved_step}" if self.saved_step is not None
                else "no checkpoint was written (set checkpoint_every=N to keep one every N steps)")
        return TrainingInterrupted(f"interrupted at step {self.step}; {held}", self.step, self.saved_step)


def train(cfg: TrainConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Run ``cfg`` in this process (one rank of a torchrun job, or alone)."""
    cfg.validate()
    owns_group = not torch.distributed.is_initialized()
    try:
        trainer = Trainer(cfg, callbacks)
        if trainer.step >= cfg.max_steps:
            trainer.run_log.close()
            raise FresnetError(f"{trainer.ckpt_path} is already at step {trainer.step} >= max_steps {cfg.max_steps}; "
                               "raise max_steps to train further")
        return trainer.fit()
    finally:
        if owns_group:
            D.shutdown()
