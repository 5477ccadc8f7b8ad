"""What every margin module shares: the contract's call, the softmax cross-entropy over columns that
may be split over ranks, the batch's target cosines, and batch statistics over a process group."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fresnet.errors import FresnetError
from fresnet.train.losses.columns import LOCAL, LocalColumns
from fresnet.train.losses.functional import gather_target


class MarginLoss(nn.Module):
    """``loss = module(cos, labels, norms=None)``: a 0-d loss from the cosines of the class columns.

    ``cos`` (B, C) is never changed in place; ``labels`` (B,) are column indices, -1 where the row's
    class is not among the columns (no margin there); ``norms`` (B,) are the embeddings' raw norms,
    for the losses that use them. The module computes in ``cos.dtype``; its parameters and buffers
    are in the default dtype at construction. ``columns`` says where the class columns live
    (:mod:`fresnet.train.losses.columns`); Partial FC replaces the default :data:`LOCAL`.
    """

    name = ""
    needs_norms = False  # the trainer passes the embeddings' raw norms
    centres_in_place = False  # opensphere: the trainer renormalises the centres in place, none in the graph
    normalize_eps = 1e-12  # the eps of F.normalize for embeddings and centres (UniFace: 1e-5)

    def __init__(self, num_classes: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.columns: LocalColumns = LOCAL

    def forward(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None,
                **extra: Any) -> torch.Tensor:
        """The loss (0-d, in ``cos.dtype``). float16 / bfloat16 cosines are computed in float32: the
        references' formulas overflow there (UniFace's exp(s), SphereFace2's weighted sum) or round
        away their own clamps (AdaFace's 1 - 1e-3 is 1 in bfloat16)."""
        self._check(cos, labels, norms)
        if cos.dtype in (torch.float16, torch.bfloat16):
            extra = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                     for k, v in extra.items()}
            norms = None if norms is None else norms.float()
            return self.compute(cos.float(), labels, norms, **extra).to(cos.dtype)
        return self.compute(cos, labels, norms, **extra)

    def compute(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None,
                **extra: Any) -> torch.Tensor:
        """The loss in ``cos.dtype`` (each loss defines it; :meth:`forward` checks the inputs first)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The options this module was built with (for ``extra_repr`` and the run's log)."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())

    def _check(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None) -> None:
        if cos.dim() != 2 or labels.shape != cos.shape[:1]:
            raise FresnetError(f"{self.name}: wants cos (B, C) and labels (B,), got {tuple(cos.shape)} and "
                               f"{tuple(labels.shape)}")
        if self.needs_norms:
            if norms is None:
                raise FresnetError(f"{self.name} needs the embeddings' norms: call it as module(cos, labels, norms)")
            if norms.numel() != cos.shape[0]:
                raise FresnetError(f"{self.name}: norms must hold one value per row ({cos.shape[0]}), "
                                   f"got shape {tuple(norms.shape)}")

    # ---- shared pieces ------------------------------------------------------------------------
    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean softmax cross-entropy over the rows, exact when the columns are split over ranks:
        the row maximum and the sums over columns go through ``columns``. Rows labelled -1 on every
        rank have no target term."""
        with torch.no_grad():
            row_max = self.columns.row_max(logits.max(dim=1).values)
        shifted = logits - row_max[:, None]  # a constant shift: the softmax and its gradient are unchanged
        sum_exp = self.columns.sum(shifted.exp().sum(dim=1))
        picked = gather_target(shifted, labels)
        target = self.columns.sum(torch.where(labels >= 0, picked, torch.zeros_like(picked)))
        return (sum_exp.log() - target).mean()

    def global_target(self, cos: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) each row's target cosine wherever its column lives, without gradient, and (B,) bool:
        whether the row has a target column at all."""
        with torch.no_grad():
            owned = labels >= 0
            picked = gather_target(cos, labels)
            value = self.columns.sum(torch.where(owned, picked, torch.zeros_like(picked)))
            count = self.columns.sum(owned.to(cos.dtype))
            return value, count > 0


def _group_sum(x: torch.Tensor, group: Any) -> torch.Tensor:
    if group is not None and dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def batch_mean(values: torch.Tensor, valid: torch.Tensor | None = None, group: Any = None) -> torch.Tensor:
    """Mean of ``values`` over the rows (where ``valid``), over every rank of ``group`` when given:
    one all-reduce, no host synchronisation."""
    weights = torch.ones_like(values) if valid is None else valid.to(values.dtype)
    if group is None:
        return (values * weights).sum() / weights.sum() if valid is not None else values.mean()
    sums = _group_sum(torch.stack([(values * weights).sum(), weights.sum()]), group)
    return sums[0] / sums[1]


def batch_mean_std(values: torch.Tensor, group: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased standard deviation (divide by N - 1: NaN for one value, as ``torch.std``)
    of ``values`` over the rows, over every rank of ``group`` when given (two all-reduces)."""
    count = torch.full((), float(values.numel()), dtype=values.dtype, device=values.device)  # a fill, not a copy
    sums = _group_sum(torch.stack([values.sum(), count]), group)
    mean = sums[0] / sums[1]
    squares = _group_sum((values - mean).pow(2).sum(), group)
    return mean, torch.sqrt(squares / (sums[1] - 1))
