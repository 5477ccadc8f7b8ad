"""CurricularFace (HuangYG123/CurricularFace ``head/metrics.py``; Tencent TFace with alpha=0.1):
hard negatives are re-weighted by an EMA ``t`` of the batch's target cosine."""
from __future__ import annotations

import math
from typing import Any

import torch

from fresnet.train.losses.base import MarginLoss, batch_mean
from fresnet.train.losses.functional import (
    ema,
    gather_target,
    replace_target,
    sqrt_one_minus_square,
)


class CurricularFace(MarginLoss):
    """cos clamped to [-1, 1]; c_y the target cosine, cos_m = cos(theta_y + m), the target becomes
    cos_m where c_y > cos(pi - m), else c_y - m sin(pi - m). In training mode the buffer ``t``
    (starts at 0) takes an EMA step of weight ``alpha`` with mean(c_y) *before* it is used; every
    entry above its row's cos_m (target included, overwritten after) becomes cos (t + cos), with the
    gradient through both factors and t held. Logits s * (...), mean cross-entropy.

    ``process_group``: mean(c_y) is all-reduced over it (data-parallel without Partial FC)."""

    name = "curricularface"

    def __init__(self, m: float = 0.5, s: float = 64.0, alpha: float = 0.01, process_group: Any = None,
                 num_classes: int | None = None):
        super().__init__(num_classes)
        self.m, self.s, self.alpha = float(m), float(s), float(alpha)
        self.process_group = process_group
        self.register_buffer("t", torch.zeros(1))

    def options(self) -> dict[str, Any]:
        return {"m": self.m, "s": self.s, "alpha": self.alpha}

    def _cos_m(self, cos_y: torch.Tensor) -> torch.Tensor:
        return cos_y * math.cos(self.m) - sqrt_one_minus_square(cos_y) * math.sin(self.m)

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        cos = cos.clamp(-1, 1)
        cos_y = gather_target(cos, labels)
        cos_m = self._cos_m(cos_y)
        final = torch.where(cos_y > math.cos(math.pi - self.m), cos_m, cos_y - math.sin(math.pi - self.m) * self.m)
        every_y, valid = self.global_target(cos, labels)  # each row's c_y, wherever its column is
        with torch.no_grad():
            hard = (cos > self._cos_m(every_y)[:, None]) & valid[:, None]
            if self.training:
                self.t.copy_(ema(batch_mean(every_y, valid, self.process_group), self.t.to(cos.dtype), self.alpha))
        t = self.t.to(cos.dtype)
        logits = replace_target(torch.where(hard, cos * (t + cos), cos), labels, final)
        return self.cross_entropy(logits * self.s, labels)
