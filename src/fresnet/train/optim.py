"""SGD with the classifier's own multipliers, the learning-rate schedules, and gradient clipping.

The schedule is a pure function of the step, so a resumed run needs nothing but the step count.
PyTorch's SGD keeps ``buf = m * buf + (g + wd * w); w -= lr * buf`` where MXNet keeps
``mom = m * mom - lr * (g + wd * w); w += mom``: identical at constant lr, and only the moment of
an lr drop is scaled differently.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from fresnet.train import distributed as D
from fresnet.train.config import TrainConfig


def build_optimizer(cfg: TrainConfig, backbone: nn.Module, classifier: nn.Module) -> torch.optim.SGD:
    """Two parameter groups: the backbone, and ``fc7`` with ``fc7_lr_mult`` / ``fc7_wd_mult``.
    Every parameter is decayed, BatchNorm's included, as MXNet's ``wd`` does."""
    groups = [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr_mult": 1.0, "weight_decay": cfg.wd, "name": "backbone"},
        {"params": [p for p in classifier.parameters() if p.requires_grad], "lr_mult": float(cfg.fc7_lr_mult),
         "weight_decay": cfg.wd * float(cfg.fc7_wd_mult), "name": "fc7"},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for the update that follows ``step`` completed steps."""
    base = float(cfg.lr)
    warm = warmup_steps(cfg)
    if step < warm:
        return base * (step + 1) / warm
    if cfg.lr_schedule == "poly":
        progress = (step - warm) / max(1, cfg.max_steps - warm)
        return base * max(0.0, 1.0 - progress) ** 2
    drops = sum(1 for s in cfg.lr_steps if step >= s)
    return base * float(cfg.lr_factor) ** drops


def warmup_steps(cfg: TrainConfig) -> int:
    """``warmup_steps`` below 1 is a fraction of ``max_steps``; the warm-up never reaches max_steps."""
    w = float(cfg.warmup_steps)
    steps = int(round(w * cfg.max_steps)) if 0 < w < 1 else int(w)
    return min(steps, cfg.max_steps - 1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def clip_grad_norm(backbone_params: Iterable[nn.Parameter], sharded_params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the global L2 norm of all gradients; the classifier's shards are summed over ranks
    (the backbone's gradients are already identical on every rank after DDP). Returns the norm."""
    backbone = [p.grad for p in backbone_params if p.grad is not None]
    sharded = [p.grad for p in sharded_params if p.grad is not None]
    device = (backbone or sharded)[0].device
    sq_shard = sum((g.detach().float().pow(2).sum() for g in sharded), torch.zeros((), device=device))
    sq_shard = D.all_reduce_sum_(sq_shard.clone())
    sq = sum((g.detach().float().pow(2).sum() for g in backbone), torch.zeros((), device=device)) + sq_shard
    norm = float(sq.sqrt())
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in backbone + sharded:
            g.mul_(scale)
    return norm
