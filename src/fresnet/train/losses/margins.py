"""The stateless margin losses: combined (ArcFace, CosFace), sub-centre ArcFace, MagFace,
ElasticFace, SphereFace and SFace. Each follows the reference that ``../shared/reference/losses``
names (docs/training.md lists them); the stateful ones live in their own modules."""
from __future__ import annotations

import math
from typing import Any

import torch

from fresnet.errors import FresnetError
from fresnet.train.losses.base import MarginLoss
from fresnet.train.losses.functional import (
    acos,
    combined_target,
    gather_target,
    replace_target,
    sqrt_one_minus_square,
    straight_through,
    target_mask,
)

GRAD_MODES = ("exact", "straight_through")


class CombinedMargin(MarginLoss):
    """InsightFace's combined margin: the target logit ``s * (cos(m1*theta + m2) - m3)``, every other
    logit ``s * cos``; mean cross-entropy.

    ``grad="exact"`` differentiates the formula (InsightFace MXNet); ``"straight_through"`` keeps the
    values but takes every logit's gradient as that of ``s * cos`` (arcface_torch since 2022).
    ``interclass_filtering_threshold > 0`` multiplies each non-target cosine above it by 0 (value and
    gradient), as arcface_torch does. ``continuation`` replaces the formula past
    ``theta = (pi - m2) / m1`` with a continuous, decreasing one (not in any reference; off by default).
    """

    name = "combined"

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2, grad: str = "exact",
                 interclass_filtering_threshold: float = 0.0, continuation: bool = False,
                 num_classes: int | None = None):
        super().__init__(num_classes)
        if grad not in GRAD_MODES:
            raise FresnetError(f"{self.name}: unknown grad {grad!r}; choose one of {', '.join(GRAD_MODES)}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.grad = grad
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.continuation = bool(continuation)

    def options(self) -> dict[str, Any]:
        return {"s": self.s, "m1": self.m1, "m2": self.m2, "m3": self.m3, "grad": self.grad,
                "interclass_filtering_threshold": self.interclass_filtering_threshold,
                "continuation": self.continuation}

    def logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.interclass_filtering_threshold > 0:
            dirty = (cos > self.interclass_filtering_threshold) & ~target_mask(cos, labels)
            cos = cos * (~dirty).to(cos.dtype)
        picked = gather_target(cos, labels)
        target = combined_target(picked, self.m1, self.m2, self.m3, self.continuation)
        if self.grad == "straight_through":
            target = straight_through(target, picked)
        return replace_target(cos, labels, target) * self.s

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        return self.cross_entropy(self.logits(cos, labels), labels)


class SubcenterArcFace(CombinedMargin):
    """Sub-center ArcFace (InsightFace ``subcenter_arcface``): ``cos`` is (B, C*K), class-major
    (columns c*K .. c*K+K-1 are class c's sub-centres); the class cosine is the max over its K
    sub-centres (the gradient goes to the winner), then exact ArcFace. ``labels`` are classes."""

    name = "subcenter_arcface"

    def __init__(self, s: float = 64.0, m: float = 0.5, K: int = 3, num_classes: int | None = None):
        super().__init__(s=s, m1=1.0, m2=m, m3=0.0, num_classes=num_classes)
        if int(K) != K or K < 1:
            raise FresnetError(f"subcenter_arcface: K must be a positive integer, got {K!r}")
        self.K = int(K)

    def options(self) -> dict[str, Any]:
        return {"s": self.s, "m": self.m2, "K": self.K}

    def class_cosines(self, cos: torch.Tensor) -> torch.Tensor:
        if cos.dim() != 2 or cos.shape[1] % self.K:
            raise FresnetError(f"subcenter_arcface: cos must be (B, C*K) with K={self.K}, got {tuple(cos.shape)}")
        return cos.reshape(cos.shape[0], cos.shape[1] // self.K, self.K).max(dim=2).values

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        return super().compute(self.class_cosines(cos), labels, norms)


class MagFace(MarginLoss):
    """MagFace (IrvingMeng/MagFace ``MagLinear`` + ``MagLoss``): a = clamp(norms, l_a, u_a) keeps its
    gradient; the target margin m(a) rises linearly from l_m to u_m on [l_a, u_a]; easy margin
    (cos(theta + m) where cos > 0) or the hard one (``cos - m sin(pi - m)`` past ``cos(pi - m)``);
    loss = mean CE + lambda_g * mean(a / u_a^2 + 1 / a)."""

    name = "magface"
    needs_norms = True

    def __init__(self, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45,
                 u_m: float = 0.8, lambda_g: float = 35.0, easy_margin: bool = True,
                 num_classes: int | None = None):
        super().__init__(num_classes)
        if not 0 < l_a < u_a:
            raise FresnetError(f"magface: need 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        self.s, self.l_a, self.u_a, self.l_m, self.u_m = float(s), float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g, self.easy_margin = float(lambda_g), bool(easy_margin)

    def options(self) -> dict[str, Any]:
        return {"s": self.s, "l_a": self.l_a, "u_a": self.u_a, "l_m": self.l_m, "u_m": self.u_m,
                "lambda_g": self.lambda_g, "easy_margin": self.easy_margin}

    def margin(self, a: torch.Tensor) -> torch.Tensor:
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def regulariser(self, a: torch.Tensor) -> torch.Tensor:
        return (1 / (self.u_a ** 2) * a + 1 / a).mean()

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        a = norms.reshape(-1).to(cos.dtype).clamp(self.l_a, self.u_a)
        margin = self.margin(a)
        cos = cos.clamp(-1, 1)
        cos_y = gather_target(cos, labels)
        cos_m = cos_y * torch.cos(margin) - sqrt_one_minus_square(cos_y) * torch.sin(margin)
        if self.easy_margin:
            target = torch.where(cos_y > 0, cos_m, cos_y)
        else:
            target = torch.where(cos_y > torch.cos(math.pi - margin), cos_m,
                                 cos_y - torch.sin(math.pi - margin) * margin)
        loss_id = self.cross_entropy(replace_target(cos * self.s, labels, target * self.s), labels)
        if self.lambda_g == 0:
            return loss_id
        return loss_id + self.lambda_g * self.columns.once(self.regulariser(a))


class ElasticFace(MarginLoss):
    """ElasticFace (fdbtrs/ElasticFace): each row's margin is a draw from N(m, std); Arc adds it to
    the target angle (exact gradient, no threshold), Cos subtracts it from the target cosine.
    ``plus`` sorts the draws ascending and gives row i ``sorted[perm[i]]``, perm the rows ordered by
    target cosine, descending (the reference indexes with the permutation itself).

    ``forward(cos, labels, norms=None, margins=None)``: ``margins`` (B,) injects the draws (one per row,
    in row order); without it the module draws them with ``torch.normal``."""

    def __init__(self, kind: str, s: float = 64.0, m: float = 0.5, std: float = 0.05, plus: bool = False,
                 num_classes: int | None = None):
        super().__init__(num_classes)
        if kind not in ("arc", "cos"):
            raise FresnetError(f"elasticface: kind must be arc or cos, got {kind!r}")
        if std < 0:
            raise FresnetError(f"elasticface: std must be >= 0, got {std}")
        self.kind, self.plus = kind, bool(plus)
        self.s, self.m, self.std = float(s), float(m), float(std)
        self.name = f"elasticface_{kind}" + ("_plus" if plus else "")

    def options(self) -> dict[str, Any]:
        return {"s": self.s, "m": self.m, "std": self.std}

    def draw_margins(self, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(rows,) draws from N(m, std) (the trainer draws them on one rank and shares them)."""
        return torch.normal(self.m, self.std, (rows,), dtype=dtype, device=device)

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None,
                margins: torch.Tensor | None = None) -> torch.Tensor:
        cos = cos.clamp(-1, 1)
        rows = cos.shape[0]
        if margins is None:
            margins = self.draw_margins(rows, cos.dtype, cos.device)
        elif margins.numel() != rows:
            raise FresnetError(f"{self.name}: margins must hold one draw per row ({rows}), got {tuple(margins.shape)}")
        margins = margins.reshape(-1).to(cos.dtype)
        if self.plus:
            cos_y, valid = self.global_target(cos, labels)
            order = torch.sort(torch.where(valid, cos_y, torch.full_like(cos_y, -math.inf)), descending=True).indices
            margins = torch.sort(margins).values[order]
        picked = gather_target(cos, labels)
        target = torch.cos(acos(picked) + margins) if self.kind == "arc" else picked - margins
        return self.cross_entropy(replace_target(cos, labels, target) * self.s, labels)


class SphereFace(MarginLoss):
    """SphereFace as opensphere writes it: without gradient, theta = arccos(clamp(cos, +-(1-1e-5))),
    times m at the target, phi = (-1)^k cos(theta) - 2k with k = floor(theta / pi); the logits have
    the values s*phi and the gradient of s*cos. (The trainer renormalises the centres in place
    before each step and does not normalise them in the graph.)"""

    name = "sphereface"
    centres_in_place = True

    def __init__(self, s: float = 30.0, m: float = 1.7, num_classes: int | None = None):
        super().__init__(num_classes)
        self.s, self.m = float(s), float(m)

    def options(self) -> dict[str, Any]:
        return {"s": self.s, "m": self.m}

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            theta = torch.acos(cos.clamp(-1.0 + 1e-5, 1.0 - 1e-5))
            theta = torch.where(target_mask(cos, labels), theta * self.m, theta)
            k = (theta / math.pi).floor()
            sign = -2 * torch.remainder(k, 2) + 1
            phi = sign * torch.cos(theta) - 2.0 * k
            delta = phi - cos
        return self.cross_entropy(self.s * (cos + delta), labels)


class SFace(MarginLoss):
    """SFace (zhongyy/SFace ``SFaceLoss``): no cross-entropy. With weights computed without gradient
    from theta = arccos(cos), sigma_y = 1/(1 + e^(-k(theta_y - a))) and sigma_j = 1/(1 + e^(k(theta_j - b))):
    loss = mean(-sigma_y * s cos_y) + mean(sum_{j != y} sigma_j * s cos_j)."""

    name = "sface"

    def __init__(self, s: float = 64.0, k: float = 80.0, a: float = 0.8, b: float = 1.23,
                 num_classes: int | None = None):
        super().__init__(num_classes)
        self.s, self.k, self.a, self.b = float(s), float(k), float(a), float(b)

    def options(self) -> dict[str, Any]:
        return {"s": self.s, "k": self.k, "a": self.a, "b": self.b}

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        output = cos * self.s
        one_hot = target_mask(cos, labels).to(cos.dtype)
        wyi = self.columns.sum(torch.sum(one_hot * output, 1))
        with torch.no_grad():
            # the clamp only guards rounding past +-1 (the reference takes acos as is)
            theta_yi = torch.acos((wyi / self.s).clamp(-1, 1))
            weight_yi = 1.0 / (1.0 + torch.exp(-self.k * (theta_yi - self.a)))
        intra = -weight_yi * wyi
        wj = (1 - one_hot) * output
        with torch.no_grad():
            theta_j = torch.acos((wj / self.s).clamp(-1, 1))
            weight_j = 1.0 / (1.0 + torch.exp(self.k * (theta_j - self.b)))
        inter = self.columns.sum(torch.sum(weight_j * wj, 1))
        return intra.mean() + inter.mean()
