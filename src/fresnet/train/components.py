"""Everything a training process runs, built in one function: :func:`build_components`.

The order of construction is part of reproducibility: the global RNG is seeded with ``seed``, the
dataset is built, then the backbone is initialised (the same weights on every rank and world size),
then the classifier (its own generator), the optimiser and the GradScaler; last, the RNG is reseeded
per rank for dropout. A resumed run restores its state into these parts afterwards
(:func:`fresnet.train.checkpoint.restore_training_state`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.network.config import NetConfig
from fresnet.train.config import TrainConfig
from fresnet.train.distributed import DistInfo
from fresnet.train.step import StepSettings, TrainStep


@dataclass
class Components:
    """The parts of one training process.

    Attributes:
        net_config: the backbone's :class:`NetConfig`.
        model: the backbone (what is checkpointed and exported).
        forward: what runs the backbone in the step: ``model``, or its DDP wrapper.
        classifier: the class centres + loss (:func:`fresnet.train.classifier.build_classifier`).
        optimizer, scaler: SGD over both, and the fp16 GradScaler (None off CUDA).
        data: the training dataset (``num_classes``, ``len``, ``[index]``).
        step: the sync-free optimisation step (:class:`TrainStep`).
    """

    net_config: NetConfig
    model: nn.Module
    forward: nn.Module
    classifier: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    data: Any
    step: TrainStep

    @property
    def settings(self) -> StepSettings:
        return self.step.settings

    @property
    def num_classes(self) -> int:
        return int(self.data.num_classes)

    def named_params(self) -> dict[str, nn.Parameter]:
        """Every trained parameter by checkpoint name (``backbone.*``, ``fc.*``)."""
        named = {f"backbone.{k}": p for k, p in self.model.named_parameters()}
        named.update({f"fc.{k}": p for k, p in self.classifier.named_parameters()})
        return named


def build_components(cfg: TrainConfig, info: DistInfo) -> Components:
    """The backbone, classifier, optimiser, scaler, data and step of ``cfg`` for this process."""
    from fresnet.inference.fast import compiler_available
    from fresnet.network.model import FResNet
    from fresnet.train.classifier import build_classifier
    from fresnet.train.data import build_dataset
    from fresnet.train.optim import build_optimizer
    from fresnet.train.sync_bn import convert_sync_batchnorm

    device = info.device
    if cfg.amp == "fp16" and device.type != "cuda":
        raise FresnetError("amp=fp16 needs CUDA (GradScaler); on CPU use amp=bf16 or amp=none")
    net_config = cfg.net_config()
    torch.manual_seed(cfg.seed)  # same initial backbone on every rank and world size
    data = build_dataset(cfg, net_config.input_size)
    model = FResNet(net_config)
    if net_config.net_output == "Z":
        raise FresnetError("head Z outputs a feature map, not an embedding; train with E, FC, GDC, ...")
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.sync_bn and info.distributed:
        convert_sync_batchnorm(model)
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: pick the fastest kernels once
    settings = StepSettings(cfg.amp, cfg.uses_channels_last(device.type),
                            cfg.compile_mode(device.type, compiler_available(device)), float(cfg.clip_grad_norm))
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    classifier = build_classifier(cfg, net_config.emb_size, int(data.num_classes), info)
    optimizer = build_optimizer(cfg, model, classifier, device)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16") if device.type == "cuda" else None
    # dropout differs per rank, like any data-parallel run; reseeded after the shared init
    torch.manual_seed(cfg.seed * 1000 + info.rank + 1)
    if device.type == "cuda":
        torch.cuda.manual_seed(cfg.seed * 1000 + info.rank + 1)
    forward = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                      broadcast_buffers=not cfg.sync_bn)
    step = TrainStep(model, forward, classifier, optimizer, scaler, settings, device, distributed=info.distributed)
    return Components(net_config, model, forward, classifier, optimizer, scaler, data, step)
