"""Partial FC: the class centres sharded over ranks, with optional class sampling.

Like arcface_torch's ``PartialFC_V2`` + ``DistCrossEntropy``: each rank owns a contiguous slice of
the classes (``num_classes // W`` each, the first ``num_classes % W`` ranks one more). Each step:

1. the embeddings and labels of the *global* batch are gathered on every rank;
2. with ``sample_rate < 1`` each rank keeps ``int(rate * local classes)`` (floor, as arcface_torch;
   at least 1) of its centres, always
   including every class that is a label in the global batch (positives), the rest at random;
3. the logits against the kept local centres are computed (margin logits for normalised losses,
   ``x @ W.T + b`` for plain softmax);
4. the softmax over *all* kept classes of all ranks is exact: the row maximum is all-reduced (MAX),
   then the sum of exponentials and the target logit (SUM).

The loss is the mean over the global batch and identical on every rank. With one rank and
``sample_rate=1`` it equals :class:`fresnet.train.losses.FullFCLoss` (tested).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fresnet.errors import FresnetError
from fresnet.train import distributed as D
from fresnet.train.losses import MarginSpec, margin_logits


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, count) of rank's classes."""
    base, extra = divmod(num_classes, world_size)
    count = base + (1 if rank < extra else 0)
    start = base * rank + min(rank, extra)
    return start, count


class PartialFC(nn.Module):
    """Sharded class centres + margin softmax cross-entropy.

    Args:
        emb_size: embedding size.
        num_classes: total classes over all ranks.
        spec: the loss (:func:`fresnet.train.losses.margin_spec`).
        sample_rate: fraction of each rank's classes used per step (1 = all).
        no_bias: drop the ``fc7`` bias of plain softmax (``fc7_no_bias``).
        rank, world_size: this rank's place (default: the active process group).
        init_weight: the full (num_classes, emb_size) initial centres; this rank keeps its slice.
            Default: N(0, 0.01) drawn from ``seed``, identical for every world size.
    """

    def __init__(self, emb_size: int, num_classes: int, spec: MarginSpec, sample_rate: float = 1.0,
                 no_bias: bool = False, rank: Optional[int] = None, world_size: Optional[int] = None,
                 init_weight: Optional[torch.Tensor] = None, seed: int = 0):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise FresnetError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if rank is None or world_size is None:
            rank, world_size = D.world()
        if num_classes < world_size:
            raise FresnetError(f"num_classes={num_classes} is smaller than the world size {world_size}")
        self.spec = spec
        self.num_classes = num_classes
        self.emb_size = emb_size
        self.sample_rate = float(sample_rate)
        self.rank, self.world_size = rank, world_size
        self.class_start, self.num_local = shard_range(num_classes, rank, world_size)
        self.counts = [shard_range(num_classes, r, world_size)[1] for r in range(world_size)]
        if init_weight is None:
            gen = torch.Generator().manual_seed(int(seed))
            init_weight = torch.normal(0.0, 0.01, (num_classes, emb_size), generator=gen)
        if tuple(init_weight.shape) != (num_classes, emb_size):
            raise FresnetError(f"init_weight must be ({num_classes}, {emb_size}), got {tuple(init_weight.shape)}")
        local = init_weight[self.class_start:self.class_start + self.num_local]
        self.weight = nn.Parameter(local.clone().float())
        use_bias = not spec.normalize and not no_bias
        self.bias = nn.Parameter(torch.zeros(self.num_local)) if use_bias else None

    def extra_repr(self) -> str:
        return (f"classes {self.class_start}..{self.class_start + self.num_local - 1} of {self.num_classes}, "
                f"emb {self.emb_size}, sample_rate={self.sample_rate}, loss={self.spec.name}")

    # ---- full tensors for checkpoints (every rank must call these together) -------------------
    def full_weight(self) -> torch.Tensor:
        return D.gather_rows(self.weight.detach(), self.counts)

    def full_bias(self) -> Optional[torch.Tensor]:
        return None if self.bias is None else D.gather_rows(self.bias.detach(), self.counts)

    def local_slice(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.class_start:self.class_start + self.num_local]

    @property
    def num_sample(self) -> int:
        """Classes kept per step on this rank: ``int(rate * num_local)`` like arcface_torch's
        ``PartialFC_V2`` (floor, so a sampled run keeps the same count), at least 1."""
        return max(1, int(self.sample_rate * self.num_local))

    # ---- forward ----------------------------------------------------------------------------
    def _sample(self, local_labels: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """Indices of the kept local classes (None = all) and the labels remapped into them."""
        if self.sample_rate >= 1.0:
            return None, local_labels
        num_sample = self.num_sample
        device = local_labels.device
        if num_sample >= local_labels.numel():
            # the global batch cannot hold more positives than num_sample: the kept set always has
            # exactly num_sample classes, so shapes are static and nothing waits for the host
            # positives score 2 (above any rand): a max-scatter, exact with repeated labels and the
            # -1 rows (clamped onto class 0, contributing 0)
            positive = torch.where(local_labels >= 0, 2.0, 0.0)
            score = torch.rand(self.num_local, device=device).scatter_reduce(
                0, local_labels.clamp_min(0), positive, reduce="amax")
            index = torch.topk(score, k=num_sample).indices.sort().values
        else:
            positive = torch.unique(local_labels[local_labels >= 0])
            if len(positive) >= num_sample:
                index = positive
            else:
                score = torch.rand(self.num_local, device=device)
                score[positive] = 2.0
                index = torch.topk(score, k=num_sample).indices.sort().values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=local_labels.device)
        remap[index] = torch.arange(index.numel(), device=local_labels.device)
        labels = torch.where(local_labels >= 0, remap[local_labels.clamp_min(0)], local_labels)
        return index, labels

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the global batch. ``embeddings`` (B, D) and ``labels`` (B,) are
        this rank's part; the result is the same scalar on every rank."""
        embeddings = D.gather_with_grad(embeddings.float())
        labels = D.gather_labels(labels.long())
        in_shard = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        local_labels = torch.where(in_shard, labels - self.class_start, torch.full_like(labels, -1))
        index, local_labels = self._sample(local_labels)
        weight = self.weight if index is None else self.weight[index]
        if self.spec.normalize:
            cos = F.linear(F.normalize(embeddings), F.normalize(weight)).clamp(-1.0, 1.0)
            sp = self.spec
            logits = margin_logits(cos, local_labels, sp.s, sp.m1, sp.m2, sp.m3)
        else:
            bias = None if self.bias is None else (self.bias if index is None else self.bias[index])
            logits = F.linear(embeddings, weight, bias)
        return distributed_cross_entropy(logits, local_labels)


def distributed_cross_entropy(logits: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
    """Exact cross-entropy when the classes (columns) are split over ranks; ``local_labels`` is the
    target column on the owning rank and -1 elsewhere. Every label must be owned by one rank."""
    with torch.no_grad():
        row_max = D.all_reduce_max_(logits.max(dim=1).values.clone())
    shifted = logits - row_max[:, None]  # a constant shift: softmax and its gradient are unchanged
    sum_exp = D.sum_replicated(shifted.exp().sum(dim=1))
    owned = local_labels >= 0
    picked = shifted.gather(1, local_labels.clamp_min(0)[:, None]).squeeze(1)
    target = D.sum_replicated(torch.where(owned, picked, torch.zeros_like(picked)))
    return (sum_exp.log() - target).mean()
