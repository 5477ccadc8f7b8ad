"""The training loop: one process of a (possibly ``torchrun``-launched) run.

Per step: set the lr from the schedule, forward the local batch (under autocast if ``amp``), the
Partial-FC loss over the global batch in float32, stop on a non-finite loss, backward (GradScaler for
fp16), clip, SGD step; then log, checkpoint and verify on their schedules.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.train import distributed as D
from fresnet.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    momentum_by_name,
    restore_momentum,
    rng_state,
    save_checkpoint,
)
from fresnet.train.config import TrainConfig
from fresnet.train.optim import build_optimizer, lr_at
from fresnet.train.step import StepSettings, TrainStep

MODEL_NAME = "model.safetensors"
LOG_NAME = "log.csv"


class TrainingDiverged(FresnetError):
    """The loss became NaN or Inf; the last good checkpoint is left in place."""


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


# a callback gets (event, trainer): events "step" (after each optimiser step) and "checkpoint"
Callback = Callable[[str, "Trainer"], None]


class Trainer:
    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Callback] = ()):
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.info = D.init_from_env(cfg.device)
        self.out = Path(cfg.output)
        self.ckpt_path = self.out / CHECKPOINT_NAME
        self.device = self.info.device
        self.step = 0
        self.elapsed = 0.0
        self.last_loss = float("nan")
        self._last_lr = 0.0
        self.metrics: dict[str, float] = {}

    # ---- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        from fresnet.network.model import FResNet
        from fresnet.train.partial_fc import PartialFC
        from fresnet.train.data import build_dataset, verification_sets
        from fresnet.train.logging import CsvLog, Progress, TensorBoard
        from fresnet.train.sync_bn import convert_sync_batchnorm

        cfg, info = self.cfg, self.info
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise FresnetError("amp=fp16 needs CUDA (GradScaler); on CPU use amp=bf16 or amp=none")
        if not cfg.resume and self.ckpt_path.exists() and not cfg.overwrite:
            raise FresnetError(f"{self.ckpt_path} exists; pass --resume to continue that run, overwrite=true to start over, "
                               "or choose another output=")
        self.net_config = cfg.net_config()
        self.spec = cfg.margin()
        torch.manual_seed(cfg.seed)  # same initial backbone on every rank and world size
        self.dataset = build_dataset(cfg, self.net_config.input_size)
        self.num_classes = int(self.dataset.num_classes)
        self.model = FResNet(self.net_config)
        if self.net_config.net_output == "Z":
            raise FresnetError("head Z outputs a feature map, not an embedding; train with E, FC, GDC, ...")
        if cfg.grad_checkpointing:
            self._enable_grad_checkpointing()
        if cfg.sync_bn and info.distributed:
            convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        device_type = self.device.type
        if device_type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: pick the fastest kernels once
        compile_mode = cfg.compile_mode(device_type, _compiler_available(self.device))
        self.settings = StepSettings(cfg.amp, cfg.uses_channels_last(device_type), compile_mode, float(cfg.clip_grad_norm))
        if self.settings.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.fc = PartialFC(self.net_config.emb_size, self.num_classes, self.spec, cfg.sample_rate,
                            no_bias=cfg.fc7_no_bias, rank=info.rank, world_size=info.world_size,
                            seed=cfg.seed + 1).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.fc, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16") if self.device.type == "cuda" else None
        # dropout differs per rank, like any data-parallel run; reseeded after the shared init
        torch.manual_seed(cfg.seed * 1000 + info.rank + 1)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed * 1000 + info.rank + 1)
        resume_step = None
        if cfg.resume:
            if info.is_main:  # a run killed mid-write leaves .NAME.XXXX.tmp files behind
                from fresnet.ioutil import remove_stale_temps

                remove_stale_temps(self.out)
            resume_step = self._load(load_checkpoint(self.ckpt_path))
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           broadcast_buffers=not cfg.sync_bn)
        else:
            self.ddp = self.model
        self.stepper = TrainStep(self.model, self.ddp, self.fc, self.optimizer, self.scaler, self.settings, self.device,
                                 distributed=info.distributed, warn=self._warn)
        self.val_sets = verification_sets(cfg, self.net_config.input_size) if info.is_main else {}
        val_names = [str(Path(t).stem) if str(t) != "synthetic" else "synthetic" for t in cfg.val_targets]
        self.csv = CsvLog(self.out / LOG_NAME, val_names, resume_step) if info.is_main else None
        self.tb = TensorBoard(self.out, cfg.tensorboard and info.is_main)
        self.progress = Progress(cfg.max_steps, self.step, cfg.progress and info.is_main)

    def _enable_grad_checkpointing(self) -> None:
        self.model.set_grad_checkpointing(True)

    def _warn(self, message: str) -> None:
        if self.info.is_main:
            print(f"warning: {message}", flush=True)

    def named_params(self) -> dict[str, nn.Parameter]:
        named = {f"backbone.{k}": p for k, p in self.model.named_parameters()}
        named.update({f"fc.{k}": p for k, p in self.fc.named_parameters()})
        return named

    # ---- checkpoints ------------------------------------------------------------------------
    def _load(self, state: dict[str, Any]) -> int:
        cfg, info = self.cfg, self.info
        if state["fc"]["weight"].shape[0] != self.num_classes:
            raise FresnetError(f"{self.ckpt_path}: the checkpoint has {state['fc']['weight'].shape[0]} classes, "
                               f"the dataset {self.num_classes}; resume with the same dataset")
        from fresnet.interop.native import load_checked

        load_checked(self.model, state["model"], str(self.ckpt_path))
        if tuple(state["fc"]["weight"].shape[1:]) != (self.net_config.emb_size,):
            raise FresnetError(f"{self.ckpt_path}: the checkpoint's classifier takes {state['fc']['weight'].shape[1]}-d "
                               f"embeddings, the network {self.net_config.emb_size}; resume with the same config")
        with torch.no_grad():
            self.fc.weight.copy_(self.fc.local_slice(state["fc"]["weight"]))
            if self.fc.bias is not None and state["fc"].get("bias") is not None:
                self.fc.bias.copy_(self.fc.local_slice(state["fc"]["bias"]))
        buffers = dict(state["momentum"])
        for key in ("fc.weight", "fc.bias"):
            if key in buffers:
                buffers[key] = self.fc.local_slice(buffers[key])
        restore_momentum(self.optimizer, self.named_params(), buffers)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed_s"])
        rng = state["rng"]
        if int(state["world_size"]) == info.world_size:
            torch.set_rng_state(rng["cpu"][info.rank])
            if self.device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"][info.rank], self.device)
        else:  # other world size: no per-rank state to take over; reseed from (seed, step, rank)
            torch.manual_seed(cfg.seed * 1000 + self.step * 7 + info.rank + 1)
            if info.is_main:
                print(f"resuming a {state['world_size']}-process run on {info.world_size} processes: dropout/sampling "
                      "random streams are reseeded (weights, optimiser and data position are exact)", flush=True)
        if int(state["global_batch"]) != cfg.batch_size * info.world_size and info.is_main:
            print(f"warning: the global batch changes from {state['global_batch']} to {cfg.batch_size * info.world_size}; "
                  "the data position is kept as a step count", flush=True)
        return self.step

    def save(self) -> None:
        """Every rank must call this (the classifier and RNG states are gathered)."""
        info = self.info
        full_w, full_b = self.fc.full_weight(), self.fc.full_bias()
        momentum = momentum_by_name(self.optimizer, self.named_params())
        for key in ("fc.weight", "fc.bias"):
            param = dict(self.fc.named_parameters()).get(key[3:])
            if param is None:
                continue
            buf = self.optimizer.state.get(param, {}).get("momentum_buffer")
            if buf is not None:
                momentum[key] = self.fc_gather(buf).cpu()
        rng = rng_state(self.device)
        cpu_states = [s.cpu() for s in D.gather_equal(rng["cpu"].to(self._collective_device()))]
        cuda_states = None
        if rng["cuda"] is not None:
            cuda_states = [s.cpu() for s in D.gather_equal(rng["cuda"].to(self._collective_device()))]
        if info.is_main:
            state = {
                "step": self.step,
                "elapsed_s": self.elapsed,
                "world_size": info.world_size,
                "global_batch": self.cfg.batch_size * info.world_size,
                "config": _plain(self.cfg.to_dict()),
                "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "fc": {"weight": full_w.cpu(), "bias": None if full_b is None else full_b.cpu()},
                "momentum": momentum,
                "scaler": self.scaler.state_dict() if self.scaler is not None and self.scaler.is_enabled() else None,
                "rng": {"cpu": cpu_states, "cuda": cuda_states},
            }
            save_checkpoint(self.ckpt_path, state)
            self.save_model()
        D.barrier()
        self._emit("checkpoint")

    def fc_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return D.gather_rows(tensor.detach(), self.fc.counts)

    def _collective_device(self) -> torch.device:
        return self.device  # nccl needs CUDA tensors, gloo takes CPU ones

    def save_model(self) -> Path:
        from fresnet.interop.native import save

        path = self.out / MODEL_NAME
        save(self.model, path, metadata={"source": f"fresnet train, step {self.step}, loss {self.cfg.loss}"})
        return path

    # ---- one step ---------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One step, then wait for its loss (tests and callers that want the value at once); the
        loop itself reads losses only when it logs (:meth:`_check_losses`)."""
        loss = self._launch_step(images, labels)
        return self._check_losses([(self.step, self._last_lr, loss)])

    def _launch_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._last_lr = lr_at(self.cfg, self.step)
        loss = self.stepper(images, labels, self._last_lr)
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
                kept = f"the last good checkpoint is {self.ckpt_path}" if self.ckpt_path.exists() else "no checkpoint was written yet"
                raise TrainingDiverged(
                    f"loss is {value} at step {step} (lr {lr:.3g}); training stopped and {kept}. "
                    "Lower lr, add warmup_steps, set clip_grad_norm (e.g. 5), or use amp=none"
                )
        self.last_loss = values[-1]
        return values[-1]

    # ---- verification -----------------------------------------------------------------------
    @torch.no_grad()
    def verify(self) -> dict[str, float]:
        """Accuracy on every val target (rank 0), embeddings of image + mirror summed like the original."""
        results = {}
        if self.info.is_main and self.val_sets:
            self.model.eval()
            for name, (images, issame) in self.val_sets.items():
                emb = embed_images(self.model, images, self.cfg.val_batch_size, self.device)
                results[name] = float(_verify(emb, issame)["accuracy"])
            self.model.train()
            self.metrics.update(results)
        D.barrier()
        return results

    def _emit(self, event: str) -> None:
        for callback in self.callbacks:
            callback(event, self)

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        from fresnet.train.data import GlobalBatchSampler, build_loader

        cfg, info = self.cfg, self.info
        sampler = GlobalBatchSampler(len(self.dataset), cfg.batch_size, info.rank, info.world_size, cfg.seed,
                                     self.step, cfg.max_steps, mirror=cfg.rand_mirror)
        loader = build_loader(self.dataset, sampler, cfg, self.net_config.input_size, self.device)
        global_batch = cfg.batch_size * info.world_size
        sync_every = self.sync_interval()
        self.model.train()
        if info.is_main:
            workers = getattr(loader, "num_workers", getattr(getattr(loader, "loader", None), "num_workers", 0))
            decode = "JPEG decode on the GPU" if cfg.decode == "gpu" else f"{workers} data workers"
            print(f"training on {self.device}: {self.settings.describe()}; {decode}; global batch {global_batch}",
                  flush=True)
        pending: list[tuple[int, float, torch.Tensor]] = []
        window_start, window_steps, speed = time.perf_counter(), 0, 0.0
        last_mark = window_start
        steady_steps, steady_time, warm = 0, 0.0, False  # throughput after the first loss read
        steps_at_mark = self.step
        try:
            for images, labels in loader:
                loss = self._launch_step(images, labels)
                pending.append((self.step, self._last_lr, loss))
                window_steps += 1
                last = self.step == cfg.max_steps
                verify_now = bool(cfg.val_targets) and ((cfg.verbose and self.step % cfg.verbose == 0) or last)
                log_now = self.step % max(1, cfg.log_every) == 0 or last or verify_now
                save_now = bool(cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last
                if not (log_now or save_now or len(pending) >= sync_every):
                    continue
                value = self._check_losses(pending)
                pending = []
                now = time.perf_counter()
                self.elapsed += now - last_mark
                if warm:
                    steady_steps, steady_time = steady_steps + self.step - steps_at_mark, steady_time + now - last_mark
                warm = True
                if now > window_start:
                    speed = global_batch * window_steps / (now - window_start)
                if window_steps >= 20:
                    window_start, window_steps = now, 0
                lr = lr_at(cfg, self.step - 1)
                self.progress.update(self.step, speed, value, lr)
                self._emit("step")
                val = {}
                if verify_now:
                    val = self.verify()
                    if info.is_main:
                        self.progress.print("step %d: " % self.step + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
                if self.csv is not None and log_now:
                    row = {"step": self.step, "epoch": sampler.epoch_of(self.step - 1), "samples": self.step * global_batch,
                           "loss": value, "lr": lr, "samples_per_s": round(speed, 2),
                           "elapsed_s": round(self.elapsed, 3)}
                    row.update({f"val_{k}": v for k, v in val.items()})
                    self.csv.add(row)
                    self.csv.flush()
                    self.tb.add(row)
                if save_now:
                    self.save()
                if val or save_now:  # verification and checkpoints are not training time
                    window_start, window_steps = time.perf_counter(), 0
                last_mark, steps_at_mark = time.perf_counter(), self.step
        finally:
            self.progress.close()
            self.tb.close()
        steady = global_batch * steady_steps / steady_time if steady_time > 0 else speed
        return TrainResult(self.out, self.out / MODEL_NAME, self.ckpt_path, self.out / LOG_NAME, self.step,
                           self.last_loss, dict(self.metrics), self.elapsed,
                           list(self.csv.rows) if self.csv is not None else [], steady, self.settings.describe())


def embed_images(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Embeddings of uint8 (N, H, W, 3) images, each the sum over the image and its mirror."""
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2).float().to(device)
        out.append((model(x) + model(x.flip(-1))).float().cpu().numpy())
    return np.concatenate(out)


def _verify(embeddings: np.ndarray, issame) -> Any:
    try:
        from fresnet.eval.verification import verify
    except ImportError:  # the evaluation module not installed: a minimal 10-fold accuracy
        return {"accuracy": _minimal_verify(embeddings, issame)}
    return verify(embeddings, issame, nfolds=10)


def _minimal_verify(embeddings: np.ndarray, issame, nfolds: int = 10) -> float:
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    dist = ((x[0::2] - x[1::2]) ** 2).sum(1)
    same = np.asarray(issame, bool)
    thresholds = np.arange(0, 4, 0.01)
    folds = np.array_split(np.arange(len(same)), nfolds)
    accs = []
    for fold in folds:
        train = np.setdiff1d(np.arange(len(same)), fold)
        acc = [((dist[train] < t) == same[train]).mean() for t in thresholds]
        best = thresholds[int(np.argmax(acc))]
        accs.append(((dist[fold] < best) == same[fold]).mean())
    return float(np.mean(accs))


def _plain(value: Any) -> Any:
    """Config values as plain types (weights_only=True loads only those)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _compiler_available(device: torch.device) -> bool:
    """Whether ``torch.compile`` can generate code on ``device`` (Triton on CUDA)."""
    if device.type != "cuda":
        return True
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except ImportError:
        return False


def train(cfg: TrainConfig, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Run ``cfg`` in this process (one rank of a torchrun job, or alone)."""
    cfg.validate()
    owns_group = not torch.distributed.is_initialized()
    trainer = Trainer(cfg, callbacks)
    try:
        trainer.setup()
        if trainer.step >= cfg.max_steps:
            raise FresnetError(f"{trainer.ckpt_path} is already at step {trainer.step} >= max_steps {cfg.max_steps}; "
                               "raise max_steps to train further")
        return trainer.fit()
    finally:
        if owns_group:
            D.shutdown()
