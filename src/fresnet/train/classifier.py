"""The classifier + loss a run trains against its backbone: one place that turns the config into it.

Today that is a :class:`~fresnet.train.partial_fc.PartialFC` (the class centres sharded over the
ranks, optional class sampling) with the loss of ``cfg.margin(num_classes)`` (any ``build_margin``
name, or the plain softmax). ``init_centres`` starts the centres from a file (the sub-center drop
step's ``centres.safetensors``) instead of the seeded random draw.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from fresnet.errors import FresnetError
from fresnet.train.config import TrainConfig
from fresnet.train.distributed import DistInfo
from fresnet.train.partial_fc import PartialFC


def build_classifier(cfg: TrainConfig, emb_size: int, num_classes: int, info: DistInfo) -> torch.nn.Module:
    """``classifier(embeddings float32 (B, emb_size), labels (B,)) -> loss``, on ``info.device``; its
    ``weight`` (and ``bias``) hold this rank's classes, ``full_weight()`` / ``local_slice()`` convert
    for checkpoints. The centres are drawn from ``seed + 1``, the same for every world size, or read
    from ``init_centres``."""
    margin = cfg.margin(num_classes)
    rows = num_classes * int(getattr(margin, "K", 1))
    resuming = cfg.resume  # the checkpoint holds the centres: the file may be gone by then
    init = None if not cfg.init_centres or resuming else initial_centres(cfg.init_centres, rows, emb_size)
    return PartialFC(emb_size, num_classes, margin, cfg.sample_rate, no_bias=cfg.fc7_no_bias,
                     rank=info.rank, world_size=info.world_size, init_weight=init, seed=cfg.seed + 1).to(info.device)


def initial_centres(path: str, rows: int, emb_size: int) -> torch.Tensor:
    """The (rows, emb_size) tensor ``weight`` of the safetensors file ``path`` (float32), checked."""
    from safetensors import safe_open

    where = f"init_centres {path}"
    if not os.path.isfile(path):
        raise FresnetError(f"{where}: no such file; give the centres.safetensors of `fresnet drop-subcenters` "
                           "(a tensor 'weight' of shape (classes, embedding size))")
    try:
        with safe_open(path, framework="pt") as handle:
            weight: Optional[torch.Tensor] = handle.get_tensor("weight") if "weight" in handle.keys() else None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise FresnetError(f"{where}: not a readable safetensors file ({first})") from None
    if weight is None:
        raise FresnetError(f"{where}: the file has no tensor 'weight' (the class centres)")
    if tuple(weight.shape) != (rows, emb_size):
        raise FresnetError(f"{where}: 'weight' has shape {list(weight.shape)}, this run needs [{rows}, {emb_size}] "
                           "(its classes x sub-centres, its embedding size); use the centres written for this "
                           "dataset and network")
    if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
        raise FresnetError(f"{where}: 'weight' must be finite floating-point values")
    return weight.float()
