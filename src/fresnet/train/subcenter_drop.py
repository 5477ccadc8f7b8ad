"""Sub-center ArcFace's drop step (InsightFace ``subcenter_arcface``): after training with K
sub-centres per class, keep each class's dominant sub-centre and drop the samples far from it.

The dominant sub-centre of a class is the one most of its samples are closest to; a sample is kept
when its angle to its class's dominant sub-centre is at most ``max_angle_deg`` (75 degrees in the
paper). The kept samples and the dominant centres (as the (C, D) initial weight) start the
second, K = 1 training run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fresnet.errors import FresnetError


@dataclass(frozen=True)
class SubcenterDrop:
    """dominant (C,) the kept sub-centre per class; centres (C, D) their rows; keep (N,) bool per
    sample; angle_deg (N,) each sample's angle to its class's dominant sub-centre."""

    dominant: torch.Tensor
    centres: torch.Tensor
    keep: torch.Tensor
    angle_deg: torch.Tensor


@torch.no_grad()
def subcenter_drop(weight: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, K: int,
                   max_angle_deg: float = 75.0) -> SubcenterDrop:
    """The drop step for ``weight`` (C*K, D), class-major (rows c*K .. c*K+K-1 are class c), and the
    training set's ``embeddings`` (N, D) with their ``labels`` (N,). Classes without samples keep
    sub-centre 0."""
    if weight.dim() != 2 or weight.shape[0] % K:
        raise FresnetError(f"subcenter drop: weight must be (C*K, D) with K={K}, got {tuple(weight.shape)}")
    classes = weight.shape[0] // K
    if embeddings.dim() != 2 or embeddings.shape[1] != weight.shape[1] or labels.shape != embeddings.shape[:1]:
        raise FresnetError(f"subcenter drop: embeddings (N, {weight.shape[1]}) and labels (N,) expected, got "
                           f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise FresnetError(f"subcenter drop: labels must lie in 0..{classes - 1}")
    centres = F.normalize(weight.float()).reshape(classes, K, -1)
    x = F.normalize(embeddings.float())
    cos = torch.einsum("nd,nkd->nk", x, centres[labels])  # each sample against its class's K sub-centres
    nearest = cos.argmax(dim=1)
    counts = torch.zeros(classes, K, dtype=torch.long, device=weight.device)
    counts.index_put_((labels, nearest), torch.ones_like(nearest), accumulate=True)
    dominant = counts.argmax(dim=1)
    to_dominant = cos.gather(1, dominant[labels][:, None]).squeeze(1).clamp(-1, 1)
    angle = torch.rad2deg(torch.acos(to_dominant))
    keep = angle <= max_angle_deg
    rows = weight.reshape(classes, K, -1)[torch.arange(classes, device=weight.device), dominant]
    return SubcenterDrop(dominant, rows.clone(), keep, angle)


def describe(drop: SubcenterDrop) -> str:
    kept = int(drop.keep.sum())
    total = drop.keep.numel()
    share = 100.0 * kept / total if total else math.nan
    return (f"kept {kept} of {total} samples ({share:.1f}%), "
            f"one dominant sub-centre for each of {drop.dominant.numel()} classes")
