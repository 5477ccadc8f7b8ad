"""SGD with the classifier's own multipliers, the learning-rate schedules, and gradient clipping.

The schedule is a pure function of the step, so a resumed run needs nothing but the step count.
PyTorch's SGD keeps ``buf = m * buf + (g + wd * w); w -= lr * buf`` where MXNet keeps
``mom = m * mom - lr * (g + wd * w); w += mom``: identical at constant lr, and only the moment of
an lr drop is scaled differently.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from fresnet.train import distributed as D
from fresnet.train.config import TrainConfig


def build_optimizer(cfg: TrainConfig, backbone: nn.Module, classifier: nn.Module,
                    device: Optional[torch.device] = None) -> torch.optim.SGD:
    """Two parameter groups: the backbone, and ``fc7`` with ``fc7_lr_mult`` / ``fc7_wd_mult``.
    Every parameter is decayed, BatchNorm's included, as MXNet's ``wd`` does.

    On CUDA the fused SGD kernel updates every parameter in a couple of launches and takes the
    GradScaler's scale and inf flag on the device (no host sync); elsewhere PyTorch's for-each
    implementation, which computes the same update."""
    groups = [
        {
            "params": [p for p in backbone.parameters() if p.requires_grad],
            "lr_mult": 1.0,
            "weight_decay": cfg.wd,
            "name": "backbone",
        },
        {
            "params": [p for p in classifier.parameters() if p.requires_grad],
            "lr_mult": float(cfg.fc7_lr_mult),
            "weight_decay": cfg.wd * float(cfg.fc7_wd_mult),
            "name": "fc7",
        },
    ]
    fused = device is not None and device.type == "cuda"
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)


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


def clip_grad_norm(backbone_params: Iterable[nn.Parameter], sharded_params: Iterable[nn.Parameter],
                   max_norm: float) -> torch.Tensor:
    """Clip the global L2 norm of all gradients; the classifier's shards are summed over ranks
    (the backbone's gradients are already identical on every rank after DDP). Returns the norm
    before clipping, as a 0-d tensor on the gradients' device.

    Nothing here waits for the device: the scale ``min(1, max_norm / (norm + 1e-6))`` is computed
    and applied on the device (a non-finite norm leaves the gradients as they are, and the loss
    check stops the run)."""
    backbone = [p.grad for p in backbone_params if p.grad is not None]
    sharded = [p.grad for p in sharded_params if p.grad is not None]
    device = (backbone or sharded)[0].device
    zero = torch.zeros((), device=device)
    sq_shard = torch.stack([g.detach().float().pow(2).sum() for g in sharded]).sum() if sharded else zero
    sq_shard = D.all_reduce_sum_(sq_shard.clone())
    sq_backbone = torch.stack([g.detach().float().pow(2).sum() for g in backbone]).sum() if backbone else zero
    norm = (sq_backbone + sq_shard).sqrt()
    if max_norm > 0:
        scale = torch.where(torch.isfinite(norm) & (norm > max_norm), max_norm / (norm + 1e-6), torch.ones_like(norm))
        grads = backbone + sharded
        for dtype_grads in _by_dtype(grads).values():
            torch._foreach_mul_(dtype_grads, scale.to(dtype_grads[0].dtype))
    return norm


def _by_dtype(tensors: list[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return groups
