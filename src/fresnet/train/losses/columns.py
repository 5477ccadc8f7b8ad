"""Where a loss's class columns live: all here (:data:`LOCAL`), or split over ranks (Partial FC).

A margin module sees the cosines of the columns on its rank. Whatever it sums over columns (the
softmax denominator, UniFace's and SphereFace2's per-class terms, SFace's inter-class term, a
target cosine that another rank owns) goes through its ``columns``; with :data:`LOCAL` every
operation is the identity. Partial FC gives each module a :class:`ShardedColumns` where every rank
holds the whole global batch and a slice of the classes; then every rank computes the same scalar
loss, as the convention of :mod:`fresnet.train.distributed` requires.
"""
from __future__ import annotations

import torch

from fresnet.train import distributed as D


class LocalColumns:
    """Every class column is on this process."""

    sharded = False

    def row_max(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """A per-row (or scalar) partial sum over this rank's columns -> the sum over all columns."""
        return x

    def total_columns(self, cos: torch.Tensor) -> int | torch.Tensor:
        """The number of class columns over all ranks (a device tensor when sharded: no host wait)."""
        return cos.shape[1]

    def once(self, x: torch.Tensor) -> torch.Tensor:
        """A term that every rank computes identically from the global batch (MagFace's regulariser):
        the same value, with its gradient counted once over the ranks."""
        return x

    def shared(self, parameter: torch.Tensor) -> torch.Tensor:
        """A parameter replicated on every rank (a learned bias): gradients summed over the ranks."""
        return parameter


class ShardedColumns(LocalColumns):
    """The classes are split over the ranks of the active process group."""

    sharded = True

    def row_max(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return D.all_reduce_max_(x.detach().clone())

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return D.sum_replicated(x)

    def total_columns(self, cos: torch.Tensor) -> int | torch.Tensor:
        return D.sum_replicated(torch.full((), float(cos.shape[1]), dtype=cos.dtype, device=cos.device))

    def once(self, x: torch.Tensor) -> torch.Tensor:
        _, world = D.world()
        return x if world == 1 else x.detach() + (x - x.detach()) / world

    def shared(self, parameter: torch.Tensor) -> torch.Tensor:
        return D.shared_parameter(parameter)


LOCAL = LocalColumns()
