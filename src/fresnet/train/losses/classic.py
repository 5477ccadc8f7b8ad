"""Margin-softmax losses of the original ``train.py``, written once through ``s, m1, m2, m3``.

The original expresses every classification loss as a logit rewrite before plain cross-entropy:
the target class gets ``s * (cos(m1 * theta + m2) - m3)``, the others ``s * cos(theta_j)``. The
presets (:data:`LOSS_PRESETS`) are its command-line defaults:

============  ======================================================================
softmax       a plain FC *with bias* (``fc7``; no bias with ``fc7_no_bias``) on the raw
              embedding: no normalisation, no scale, no margin.
nsoftmax      normalised embedding and weights, ``s=64``, no margin.
arcface       additive angular margin, ``m2=0.5``.
cosface       additive cosine margin, ``m3=0.35``.
combined      ``m1=1, m2=0.3, m3=0.2``: both margins at once, ``cos(theta + 0.3) - 0.2``.
============  ======================================================================

**When the angle passes pi.** ``cos(m1 * theta + m2)`` stops decreasing once ``m1 * theta + m2 > pi``:
a target that is pushed further away then gets a *larger* logit. The original MXNet ``train.py``
applies the formula as is, and so does this module by default (the fixtures of
``../shared/reference/losses`` check it). ``continuation=True`` is the explicit alternative: past
``theta_t = (pi - m2) / m1`` the target logit continues as ``cos(theta) - (1 + cos(theta_t)) - m3``,
continuous at ``theta_t`` and strictly decreasing in theta.

``arccos`` has an infinite derivative at +-1: :func:`fresnet.train.losses.functional.acos` takes
the angle with a zero derivative exactly at (and beyond) +-1 and the exact one everywhere else.
Pure CosFace (``m1=1, m2=0``) needs no angle. The margin modules of ``build_margin``
(:mod:`fresnet.train.losses.registry`) are the trainer's interface; this module keeps the original's
presets and ``softmax`` / ``nsoftmax``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fresnet.errors import FresnetError
from fresnet.train.losses.functional import acos

ACOS_EPS = 1e-7  # kept for callers of the old module; the angle is now taken by functional.acos


@dataclass(frozen=True)
class MarginSpec:
    """One loss: whether it normalises (all but softmax), and its ``s, m1, m2, m3``."""

    name: str
    normalize: bool = True
    s: float = 64.0
    m1: float = 1.0
    m2: float = 0.0
    m3: float = 0.0

    @property
    def has_margin(self) -> bool:
        return self.m1 != 1.0 or self.m2 != 0.0 or self.m3 != 0.0


# the original train.py presets (loss_s defaults to 64 for every normalised loss)
LOSS_PRESETS: dict[str, MarginSpec] = {
    "softmax": MarginSpec("softmax", normalize=False, s=1.0),
    "nsoftmax": MarginSpec("nsoftmax", s=64.0),
    "arcface": MarginSpec("arcface", s=64.0, m2=0.5),
    "cosface": MarginSpec("cosface", s=64.0, m3=0.35),
    "combined": MarginSpec("combined", s=64.0, m1=1.0, m2=0.3, m3=0.2),
}


def margin_spec(loss: str, **overrides: Any) -> MarginSpec:
    """A preset by name, with optional ``s, m1, m2, m3`` overrides (None keeps the preset value)."""
    try:
        base = LOSS_PRESETS[loss]
    except KeyError:
        raise FresnetError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_PRESETS)}") from None
    values = {k: float(v) for k, v in overrides.items() if v is not None}
    unknown = set(values) - {"s", "m1", "m2", "m3"}
    if unknown:
        raise FresnetError(f"unknown loss parameters {sorted(unknown)}; the margin is set with s, m1, m2, m3")
    if not base.normalize and any(values.get(k, d) != d for k, d in (("m1", 1.0), ("m2", 0.0), ("m3", 0.0))):
        raise FresnetError("loss 'softmax' takes no margin (it is a plain FC); use arcface, cosface or combined")
    spec = MarginSpec(base.name, base.normalize, **{**_spec_values(base), **values})
    if spec.s <= 0 or spec.m1 <= 0:
        raise FresnetError(f"loss {loss}: s and m1 must be positive, got s={spec.s}, m1={spec.m1}")
    return spec


def _spec_values(spec: MarginSpec) -> dict[str, float]:
    return {"s": spec.s, "m1": spec.m1, "m2": spec.m2, "m3": spec.m3}


def target_logit(cos: torch.Tensor, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
                 continuation: bool = False) -> torch.Tensor:
    """``cos(m1 * theta + m2) - m3`` for target cosines (unscaled): the MXNet formula as is, or with
    the continuous, monotone continuation past ``m1 * theta + m2 = pi`` (``continuation=True``)."""
    if m1 == 1.0 and m2 == 0.0:
        return cos - m3
    theta = acos(cos)
    value = torch.cos(m1 * theta + m2) - m3
    theta_t = (math.pi - m2) / m1
    if not continuation or theta_t >= math.pi:  # literal, or the margin never passes pi in [0, pi]
        return value
    fallback = cos - (1.0 + math.cos(theta_t)) - m3
    return torch.where(theta > theta_t, fallback, value)


def margin_logits(
    cos: torch.Tensor, labels: torch.Tensor, s: float, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
    continuation: bool = False,
) -> torch.Tensor:
    """The logits to feed to cross-entropy: ``s * (cos(m1*theta + m2) - m3)`` at each row's target
    class, ``s * cos`` elsewhere. Rows whose label is ``-1`` (their class lives on another Partial-FC
    shard) get no margin.

    Args:
        cos: (N, C) cosines between normalised embeddings and normalised class centres.
        labels: (N,) class index per row, or -1.
    """
    if cos.dim() != 2 or labels.shape != cos.shape[:1]:
        raise FresnetError(
            f"margin_logits wants cos (N, C) and labels (N,), got {tuple(cos.shape)} and {tuple(labels.shape)}"
        )
    if not (m1 != 1.0 or m2 != 0.0 or m3 != 0.0):
        return cos * s
    # gather/where/scatter on every row keeps the shapes static: no host sync (a `nonzero` would
    # make the GPU wait for the CPU every step), and the step stays one graph for torch.compile
    cols = labels.clamp_min(0)[:, None]
    picked = cos.gather(1, cols)
    target = torch.where((labels >= 0)[:, None], target_logit(picked, m1, m2, m3, continuation), picked)
    return cos.scatter(1, cols, target) * s


class MarginSoftmaxLoss(nn.Module):
    """Cross-entropy over margin logits, from cosines: ``loss(cos, labels)``."""

    def __init__(self, spec: MarginSpec):
        super().__init__()
        self.spec = spec

    def extra_repr(self) -> str:
        sp = self.spec
        return f"{sp.name}, s={sp.s}, m1={sp.m1}, m2={sp.m2}, m3={sp.m3}"

    def logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sp = self.spec
        return margin_logits(cos, labels, sp.s, sp.m1, sp.m2, sp.m3)

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(cos, labels), labels)


class FullFCLoss(nn.Module):
    """The original ``fc7`` + loss on one device: holds the class centres.

    ``softmax``: ``x @ W.T + b`` on the raw embedding (bias unless ``no_bias``). Every other loss:
    cosines between the normalised embedding and normalised centres, then margin logits.
    This is the single-process reference that :class:`fresnet.train.partial_fc.PartialFC` must equal.
    """

    def __init__(self, emb_size: int, num_classes: int, spec: MarginSpec, no_bias: bool = False,
                 weight: torch.Tensor | None = None):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(weight.clone() if weight is not None else torch.randn(num_classes, emb_size) * 0.01)
        use_bias = not spec.normalize and not no_bias
        self.bias = nn.Parameter(torch.zeros(num_classes)) if use_bias else None
        self.margin = MarginSoftmaxLoss(spec)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.spec.normalize:
            return F.linear(embeddings, self.weight, self.bias)
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        return self.margin.logits(cos, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss on L2-normalised embeddings (squared distances, like the original's
    ``triplet_alpha=0.3``): for each anchor, its farthest positive against its nearest negative.
    Anchors without a positive or a negative in the batch are ignored."""
    x = F.normalize(embeddings)
    dist = (2.0 - 2.0 * x @ x.T).clamp_min(0.0)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not valid.any():
        return embeddings.sum() * 0.0
    hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(~neg_mask, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
