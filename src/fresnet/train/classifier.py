"""The classifier + loss a run trains against its backbone: one place that turns the config into it.

Today that is a :class:`~fresnet.train.partial_fc.PartialFC` (the class centres sharded over the
ranks, optional class sampling) with the loss of ``cfg.margin(num_classes)`` (any ``build_margin``
name, or the plain softmax).
"""
from __future__ import annotations

import torch

from fresnet.train.config import TrainConfig
from fresnet.train.distributed import DistInfo
from fresnet.train.partial_fc import PartialFC


def build_classifier(cfg: TrainConfig, emb_size: int, num_classes: int, info: DistInfo) -> torch.nn.Module:
    """``classifier(embeddings float32 (B, emb_size), labels (B,)) -> loss``, on ``info.device``; its
    ``weight`` (and ``bias``) hold this rank's classes, ``full_weight()`` / ``local_slice()`` convert
    for checkpoints. The centres are drawn from ``seed + 1``, the same for every world size."""
    return PartialFC(emb_size, num_classes, cfg.margin(num_classes), cfg.sample_rate, no_bias=cfg.fc7_no_bias,
                     rank=info.rank, world_size=info.world_size, seed=cfg.seed + 1).to(info.device)
