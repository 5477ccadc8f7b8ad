"""One optimisation step that never makes the host wait for the device.

``TrainStep(images, labels, lr)`` runs: the images (uint8 or float, 0..255) to float on the device,
channels_last if asked, the backbone under autocast (``amp``), the Partial-FC margin loss in float32,
backward (scaled by a GradScaler for fp16), gradient clipping, the optimiser update. It returns the
loss as a 0-d tensor on the device; the caller reads it (one sync) only when it logs.

Why no host syncs: a GPU step of r50 at batch 128 is a few tens of milliseconds of kernels, and every
``loss.item()``, ``nonzero`` or ``float(norm)`` in the step drains the queue and leaves the GPU idle
while Python launches the next kernels. The pieces that used to sync were rewritten: margin logits
(gather/scatter instead of ``nonzero``), gradient clipping (the scale stays on the device), class
sampling (static shapes when the global batch fits in the sampled set), the fused SGD on CUDA (it
takes GradScaler's ``found_inf`` on the device).

``compile`` puts the forward and the loss (one process) or the DDP backbone (several processes)
under ``torch.compile``; ``reduce-overhead`` adds CUDA graphs. If compiling fails at the first step,
the step warns, restores the BatchNorm statistics that first try touched, and runs eagerly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.train.optim import clip_grad_norm, set_lr

log = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepSettings:
    """How a step runs (the numbers it computes do not depend on these, up to rounding)."""

    amp: str = "none"  # none | bf16 | fp16 (checked by TrainConfig.validate)
    channels_last: bool = False
    compile: Optional[str] = None  # None, or a torch.compile mode (TrainConfig.compile_mode)
    clip_grad_norm: float = 0.0

    def describe(self) -> str:
        parts = ["float32" if self.amp == "none" else f"{self.amp} autocast",
                 "channels_last" if self.channels_last else "NCHW"]
        if self.compile:
            parts.append(f"torch.compile({self.compile})")
        if self.clip_grad_norm > 0:
            parts.append(f"clip {self.clip_grad_norm:g}")
        return ", ".join(parts)


class TrainStep:
    """Forward, loss, backward, clip and update for ``model`` + ``fc`` (see the module docstring).

    Args:
        model: the backbone (its parameters are clipped and its BN statistics restored on a failed
            compile).
        forward: what runs the backbone: ``model`` itself, or its DDP wrapper.
        fc: the classifier + loss, ``fc(embeddings float32, labels) -> loss``.
        optimizer, scaler: the optimiser and, for fp16, an enabled ``torch.amp.GradScaler``.
        distributed: several processes: only the backbone is compiled (the loss's collectives stay
            eager).
    """

    def __init__(self, model: nn.Module, forward: nn.Module, fc: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: Optional[torch.amp.GradScaler], settings: StepSettings, device: torch.device,
                 distributed: bool = False):
        self.model, self.forward, self.fc = model, forward, fc
        self.optimizer, self.scaler, self.settings, self.device = optimizer, scaler, settings, device
        self.distributed = distributed
        self._cudagraphs = settings.compile == "reduce-overhead" and device.type == "cuda"
        self._forward_loss = self._eager_forward_loss
        self._first_compiled_call = False
        if settings.compile:
            self._forward_loss = self._compiled_forward_loss(settings.compile)
            self._first_compiled_call = True

    # ---- the pieces -------------------------------------------------------------------------
    def _autocast(self):
        dtype = AMP_DTYPES[self.settings.amp]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _embed(self, forward: nn.Module, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return forward(x)

    def _eager_forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = self._embed(self.forward, images)
        with torch.autocast(self.device.type, enabled=False):
            return self.fc(embeddings.float(), labels)

    def _compiled_forward_loss(self, mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.distributed:
            backbone = torch.compile(self.forward, mode=mode)

            def forward_loss(images, labels):
                embeddings = self._embed(backbone, images)
                with torch.autocast(self.device.type, enabled=False):
                    return self.fc(embeddings.float(), labels)

            return forward_loss
        return torch.compile(self._eager_forward_loss, mode=mode)

    # ---- one step ---------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        set_lr(self.optimizer, lr)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self._first_compiled_call:
            return self._first_compiled_step(images, labels)
        return self._step(images, labels)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = self._forward_loss(images, labels)
        scaled = self.scaler is not None and self.scaler.is_enabled()
        (self.scaler.scale(loss) if scaled else loss).backward()
        if self.settings.clip_grad_norm > 0:
            if scaled:
                self.scaler.unscale_(self.optimizer)
            clip_grad_norm(self.model.parameters(), self.fc.parameters(), self.settings.clip_grad_norm)
        if scaled:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        # a CUDA-graph output is overwritten by the next replay: keep a copy
        return loss.detach().clone() if self._cudagraphs else loss.detach()

    def _first_compiled_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The first compiled call compiles; if that fails, undo what it touched and go eager."""
        self._first_compiled_call = False
        saved = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        try:
            return self._step(images, labels)
        except (FresnetError, KeyboardInterrupt, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, say why
            with torch.no_grad():
                for name, buffer in self.model.named_buffers():
                    buffer.copy_(saved[name])
            self.optimizer.zero_grad(set_to_none=True)
            log.warning("torch.compile(%s) failed at the first step (%s: %s); training continues without compile "
                        "(set compile=none to skip the attempt)", self.settings.compile, type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
            self._forward_loss = self._eager_forward_loss
            self._cudagraphs = False
            self.settings = StepSettings(self.settings.amp, self.settings.channels_last, None, self.settings.clip_grad_norm)
            return self._step(images, labels)
