"""The formulas the margin losses share, as plain functions of tensors (no state).

Every function computes in its input's dtype and never writes into its inputs.
"""
from __future__ import annotations

import math

import torch


def acos(cos: torch.Tensor) -> torch.Tensor:
    """``arccos`` with the exact derivative inside (-1, 1) and a zero one at +-1 and beyond.

    ``d arccos(c) / dc = -1 / sqrt(1 - c^2)`` is infinite at +-1 (a target exactly on its centre, or
    a cosine that rounding pushed a hair past 1); there the value is that of the clamped cosine and
    no gradient flows, as if a clamp sat in front. Everywhere else the value and the gradient are
    ``torch.acos``'s, so the float64 fixtures compare bit-for-bit with the references' graphs."""
    inside = cos.abs() < 1.0
    safe = torch.where(inside, cos, cos.detach().clamp(-1.0, 1.0))
    return torch.acos(safe)


def sqrt_one_minus_square(cos: torch.Tensor) -> torch.Tensor:
    """``sqrt(1 - cos^2)`` (the sine of the angle) with the same guard as :func:`acos`: the exact
    value and derivative inside (-1, 1), zero with a zero derivative at +-1 and beyond."""
    inside = cos.abs() < 1.0
    safe = torch.where(inside, cos, cos.detach().clamp(-1.0, 1.0))
    value = torch.sqrt(1.0 - torch.pow(safe, 2))
    return torch.where(inside, value, value.detach())


def target_mask(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: the entry (i, labels[i]) of each row whose label is a column here (>= 0)."""
    cols = torch.arange(cos.shape[1], device=cos.device)
    return (cols[None, :] == labels[:, None]) & (labels >= 0)[:, None]


def gather_target(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) ``x[i, labels[i]]`` (column 0 for rows labelled -1; mask those with ``labels >= 0``)."""
    return x.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)


def replace_target(x: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``x`` with ``target[i]`` at (i, labels[i]) for the rows labelled >= 0 (out of place)."""
    cols = labels.clamp_min(0)[:, None]
    keep = x.gather(1, cols).squeeze(1)
    return x.scatter(1, cols, torch.where(labels >= 0, target, keep)[:, None])


def combined_target(cos_y: torch.Tensor, m1: float, m2: float, m3: float, continuation: bool = False) -> torch.Tensor:
    """InsightFace MXNet's combined margin at the target cosines: ``cos(m1*theta + m2) - m3`` with
    no clamp and no threshold past pi (``m1=1, m2=0`` is ``cos - m3``, no angle). ``continuation``
    continues past ``theta_t = (pi - m2) / m1`` with ``cos - (1 + cos(theta_t)) - m3`` instead."""
    if m1 == 1.0 and m2 == 0.0:
        return cos_y - m3
    theta = acos(cos_y)
    value = torch.cos(m1 * theta + m2) - m3
    theta_t = (math.pi - m2) / m1
    if not continuation or theta_t >= math.pi:
        return value
    return torch.where(theta > theta_t, cos_y - (1.0 + math.cos(theta_t)) - m3, value)


def straight_through(value: torch.Tensor, through: torch.Tensor) -> torch.Tensor:
    """``value``'s numbers with ``through``'s gradient (arcface_torch's no-grad, in-place margin)."""
    return through + (value - through).detach()


def ema(statistic: torch.Tensor, buffer: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * statistic + (1 - alpha) * buffer``, the order every reference writes it in."""
    return statistic * alpha + (1 - alpha) * buffer
