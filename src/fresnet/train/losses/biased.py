"""The binary-style losses with a learned scalar ``bias``: SphereFace2-C (opensphere) and UniFace's
unified cross-entropy (CVI-SZU/UniFace). Both need ``num_classes``: their bias starts from it."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fresnet.errors import FresnetError
from fresnet.train.losses.base import MarginLoss
from fresnet.train.losses.functional import target_mask


def _need_classes(name: str, num_classes: Any) -> int:
    if num_classes is None or int(num_classes) != num_classes or num_classes < 2:
        raise FresnetError(f"{name} needs num_classes (the total class count, at least 2), got {num_classes!r}")
    return int(num_classes)


def sphereface2_bias(num_classes: int, alpha: float, r: float, m: float, t: float) -> float:
    """opensphere's initial bias for SphereFace2-C."""
    z = alpha / ((1.0 - alpha) * (num_classes - 1.0))
    ay = r * (2.0 * 0.5 ** t - 1.0 - m)
    ai = r * (2.0 * 0.5 ** t - 1.0 + m)
    temp = (1.0 - z) ** 2 + 4.0 * z * math.exp(ay - ai)
    return math.log(2.0 * z) - ai - math.log(1.0 - z + math.sqrt(temp))


class SphereFace2(MarginLoss):
    """SphereFace2-C: without gradient, g = 2((cos + 1)/2)^t - 1, then -m at the target and +m
    elsewhere; logits r*g + bias with the gradient of r*cos + bias; binary cross-entropy with logits
    weighted alpha at the target and 1 - alpha elsewhere, times lw * num_classes / r, mean over the
    B x C entries. (Trainer: centres renormalised in place, not in the graph.)"""

    name = "sphereface2"
    centres_in_place = True

    def __init__(self, alpha: float = 0.7, r: float = 40.0, m: float = 0.4, t: float = 3.0, lw: float = 50.0,
                 num_classes: Any = None):
        num_classes = _need_classes(self.name, num_classes)
        super().__init__(num_classes)
        if not 0 < alpha < 1:
            raise FresnetError(f"sphereface2: alpha must be in (0, 1), got {alpha}")
        self.alpha, self.r, self.m, self.t, self.lw = float(alpha), float(r), float(m), float(t), float(lw)
        self.bias = nn.Parameter(torch.full((1,), sphereface2_bias(num_classes, self.alpha, self.r, self.m, self.t)))

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "r": self.r, "m": self.m, "t": self.t, "lw": self.lw,
                "num_classes": self.num_classes}

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: Any = None) -> torch.Tensor:
        one_hot = target_mask(cos, labels).to(cos.dtype)
        with torch.no_grad():
            g = 2.0 * ((cos + 1.0) / 2.0).pow(self.t) - 1.0
            g = g - self.m * (2.0 * one_hot - 1.0)
            delta = g - cos
        logits = self.r * (cos + delta) + self.columns.shared(self.bias).to(cos.dtype)
        weight = self.alpha * one_hot + (1.0 - self.alpha) * (1.0 - one_hot)
        weight = self.lw * self.num_classes / self.r * weight
        per_entry = F.binary_cross_entropy_with_logits(logits, one_hot, weight=weight, reduction="none")
        entries = cos.shape[0] * self.columns.total_columns(cos)
        return self.columns.sum(per_entry.sum()) / entries


class UniFace(MarginLoss):
    """UniFace UCE: with the learned ``bias`` (starts at log(10 num_classes r)),
    target term log(1 + exp(-clamp(s(cos - m) - bias, -s, s))), non-target term
    l log(1 + exp(clamp(s cos - bias, -s, s))), both literal; sum over classes, mean over rows."""

    name = "uniface"
    normalize_eps = 1e-5

    # `l` is UniFace's own name for the option (part of build_margin's contract), hence the noqa
    def __init__(self, m: float = 0.4, s: float = 64.0, l: float = 1.0, r: float = 1.0,  # noqa: E741
                 num_classes: Any = None):
        num_classes = _need_classes(self.name, num_classes)
        super().__init__(num_classes)
        self.m, self.s, self.l, self.r = float(m), float(s), float(l), float(r)
        self.bias = nn.Parameter(torch.full((1,), math.log(num_classes * self.r * 10)))

    def options(self) -> dict[str, Any]:
        return {"m": self.m, "s": self.s, "l": self.l, "r": self.r, "num_classes": self.num_classes}

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: Any = None) -> torch.Tensor:
        bias = self.columns.shared(self.bias).to(cos.dtype)
        positive = self.s * (cos - self.m) - bias
        negative = self.s * cos - bias
        p_loss = torch.log(1 + torch.exp(-positive.clamp(min=-self.s, max=self.s)))
        n_loss = torch.log(1 + torch.exp(negative.clamp(min=-self.s, max=self.s))) * self.l
        per_entry = torch.where(target_mask(cos, labels), p_loss, n_loss)
        return self.columns.sum(per_entry.sum(dim=1)).mean()
