"""AdaFace (mk-minchul/AdaFace ``head.py``): a margin that adapts to the embedding norm, through an
EMA of the batch's norm mean and standard deviation."""
from __future__ import annotations

import math
from typing import Any

import torch

from fresnet.train.losses.base import MarginLoss, batch_mean_std
from fresnet.train.losses.functional import ema, target_mask

EPS = 1e-3


class AdaFace(MarginLoss):
    """cos is clamped to +-(1 - 1e-3); n = clip(norms, 0.001, 100), detached. In training mode the
    buffers ``batch_mean`` (starts at 20) and ``batch_std`` (starts at 100; unbiased std) take an EMA
    step of weight ``t_alpha`` with this batch *before* r = clip(h (n - mean) / (std + 1e-3), -1, 1)
    is computed. The target angle gets -m r, every angle is clipped to [1e-3, pi - 1e-3], and the
    target cosine gets -(m + m r); logits s * (...), mean cross-entropy.

    ``process_group``: the batch statistics are all-reduced over it (the global batch of a
    data-parallel run without Partial FC); Partial FC already hands every rank the global batch."""

    name = "adaface"
    needs_norms = True

    def __init__(self, m: float = 0.4, h: float = 0.333, s: float = 64.0, t_alpha: float = 0.01,
                 process_group: Any = None, num_classes: int | None = None):
        super().__init__(num_classes)
        self.m, self.h, self.s, self.t_alpha = float(m), float(h), float(s), float(t_alpha)
        self.process_group = process_group
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def options(self) -> dict[str, Any]:
        return {"m": self.m, "h": self.h, "s": self.s, "t_alpha": self.t_alpha}

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        cos = cos.clamp(-1 + EPS, 1 - EPS)
        safe_norms = norms.detach().reshape(-1, 1).to(cos.dtype).clip(0.001, 100)
        if self.training:
            with torch.no_grad():
                mean, std = batch_mean_std(safe_norms, self.process_group)
                self.batch_mean.copy_(ema(mean, self.batch_mean.to(cos.dtype), self.t_alpha))
                self.batch_std.copy_(ema(std, self.batch_std.to(cos.dtype), self.t_alpha))
        scaler = (safe_norms - self.batch_mean.to(cos.dtype)) / (self.batch_std.to(cos.dtype) + EPS)
        scaler = torch.clip(scaler * self.h, -1, 1)
        one_hot = target_mask(cos, labels).to(cos.dtype)
        # the one-hot products (not a where) are the reference's: a NaN statistic reaches every entry
        theta = cos.acos()
        theta_m = torch.clip(theta + one_hot * (self.m * scaler * -1), min=EPS, max=math.pi - EPS)
        logits = theta_m.cos() - one_hot * (self.m + self.m * scaler)
        return self.cross_entropy(logits * self.s, labels)
