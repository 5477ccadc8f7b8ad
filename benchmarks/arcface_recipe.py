"""arcface_torch's training step as its ``train_v2.py`` runs it, the baseline of ``bench_train.py``.

Re-written from insightface ``recognition/arcface_torch`` (``train_v2.py``, ``partial_fc_v2.py``,
``losses.py``, ``backbones/iresnet.py``) for one process, so that fresnet is measured against the
recipe users run today, on the same GPU, in the same run:

* the IR-ResNet (``tests/arcface_iresnet_ref.py``) with its ``fp16`` switch: the trunk runs under
  ``torch.autocast(float16)`` *inside* ``forward``, the FC and the BN1d features in float32; NCHW;
* ``PartialFC_V2``: class centres N(0, 0.01); normalised embeddings and centres multiplied under
  fp16 autocast, logits cast to float and clamped to [-1, 1]; ``CombinedMarginLoss(64, 1, 0.5, 0)``
  (ArcFace: ``arccos`` / ``+m`` / ``cos`` done in place under ``no_grad``, its gradient trick);
  ``DistCrossEntropy`` (max-shift, exp, normalise, pick, -log, mean);
* ``GradScaler(growth_interval=100)``, ``clip_grad_norm_(backbone, 5)`` after ``unscale_``,
  SGD momentum 0.9, weight decay 5e-4 (for-each), ``zero_grad`` after the step;
* ``DistributedDataParallel`` over a one-process group (nccl on CUDA, gloo on CPU) with
  ``broadcast_buffers=False, bucket_cap_mb=16, find_unused_parameters=True`` and a static graph,
  exactly as ``train_v2.py`` wraps the backbone even on one GPU.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from arcface_iresnet_ref import ARCFACE_LAYERS, IResNet


class AutocastIResNet(IResNet):
    """``iresnet.IResNet.forward`` with its ``fp16`` flag: autocast around the trunk only."""

    def __init__(self, *args, fp16: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fp16 = fp16

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=self.fp16 and x.is_cuda):
            x = self.trunk(x)
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)


class CombinedMarginLoss(nn.Module):
    """arcface_torch ``losses.CombinedMarginLoss`` for ArcFace (m1=1, m2=0.5, m3=0), no filtering."""

    def __init__(self, s: float = 64.0, m2: float = 0.5):
        super().__init__()
        self.s, self.m2 = s, m2

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        index_positive = torch.where(labels != -1)[0]
        target_logit = logits[index_positive, labels[index_positive].view(-1)]
        with torch.no_grad():
            target_logit.arccos_()
            logits.arccos_()
            final_target_logit = target_logit + self.m2
            logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
            logits.cos_()
        return logits * self.s


class PartialFCV2(nn.Module):
    """arcface_torch ``PartialFC_V2`` with one rank and ``sample_rate=1``, and ``DistCrossEntropy``."""

    def __init__(self, embedding_size: int, num_classes: int, fp16: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.normal(0, 0.01, (num_classes, embedding_size)))
        self.margin_softmax = CombinedMarginLoss()
        self.fp16 = fp16

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long().view(-1, 1)
        with torch.autocast(embeddings.device.type, dtype=torch.float16, enabled=self.fp16 and embeddings.is_cuda):
            logits = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        if self.fp16:
            logits = logits.float()
        logits = logits.clamp(-1, 1)
        logits = self.margin_softmax(logits, labels)
        return DistCrossEntropyFunc.apply(logits, labels)


def _all_reduce(x: torch.Tensor, op: str) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(x, getattr(dist.ReduceOp, op))


class DistCrossEntropyFunc(torch.autograd.Function):
    """arcface_torch ``partial_fc_v2.DistCrossEntropyFunc``: in-place softmax, hand-written backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, label: torch.Tensor):
        batch_size = logits.size(0)
        max_logits, _ = torch.max(logits, dim=1, keepdim=True)
        _all_reduce(max_logits, "MAX")
        logits.sub_(max_logits)
        logits.exp_()
        sum_logits_exp = torch.sum(logits, dim=1, keepdim=True)
        _all_reduce(sum_logits_exp, "SUM")
        logits.div_(sum_logits_exp)
        index = torch.where(label != -1)[0]
        loss = torch.zeros(batch_size, 1, device=logits.device)
        loss[index] = logits[index].gather(1, label[index])
        _all_reduce(loss, "SUM")
        ctx.save_for_backward(index, logits, label)
        return loss.clamp_min_(1e-30).log_().mean() * (-1)

    @staticmethod
    def backward(ctx, loss_gradient):
        index, logits, label = ctx.saved_tensors
        batch_size = logits.size(0)
        one_hot = torch.zeros(size=[index.size(0), logits.size(1)], device=logits.device)
        one_hot.scatter_(1, label[index], 1)
        logits[index] -= one_hot
        logits.div_(batch_size)
        return logits * loss_gradient.item(), None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_process_group(device: torch.device) -> None:
    """A world of one, like ``torchrun --nproc_per_node 1`` gives ``train_v2.py``."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


class ArcfaceTorchRecipe:
    """One training step of arcface_torch's ``train_v2.py``: ``step(images_0_255, labels)``."""

    name = "arcface_torch"

    def __init__(self, depth: int, num_classes: int, device: torch.device, lr: float = 0.1,
                 input_size: tuple[int, int] = (112, 112), emb_size: int = 512, ddp: bool = True,
                 layers=None, widths=(64, 64, 128, 256, 512)):
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.device = device
        fp16 = device.type == "cuda"
        self.backbone = AutocastIResNet(layers or ARCFACE_LAYERS[depth], num_features=emb_size, dropout=0.0,
                                        input_size=input_size, widths=widths, fp16=fp16).to(device).train()
        self.model = self.backbone
        if ddp:
            one_process_group(device)
            self.model = DDP(self.backbone, broadcast_buffers=False, bucket_cap_mb=16, find_unused_parameters=True,
                             device_ids=[device.index or 0] if device.type == "cuda" else None)
            self.model._set_static_graph()
        self.fc = PartialFCV2(emb_size, num_classes, fp16=fp16).to(device).train()
        self.optimizer = torch.optim.SGD([{"params": self.backbone.parameters()}, {"params": self.fc.parameters()}],
                                         lr=lr, momentum=0.9, weight_decay=5e-4)
        self.scaler = torch.amp.GradScaler(device.type, growth_interval=100, enabled=fp16)

    def describe(self) -> str:
        return ("arcface_torch train_v2 recipe: IResNet fp16 autocast in forward, NCHW, PartialFC_V2 "
                "(fp16 matmul, float logits), GradScaler, clip_grad_norm_(backbone, 5), SGD for-each, DDP(1)")

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        # arcface_torch's loader yields (x / 255 - 0.5) / 0.5 normalised float images
        images = (images.to(self.device, non_blocking=True).float() / 255.0 - 0.5) / 0.5
        labels = labels.to(self.device, non_blocking=True)
        embeddings = self.model(images)
        loss = self.fc(embeddings, labels)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), 5)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        return loss.item()  # train_v2.py: loss_am.update(loss.item(), 1) -- a host sync every step
