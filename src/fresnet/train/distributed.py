"""``torch.distributed`` set-up for ``torchrun`` and the two autograd collectives training needs.

``torchrun`` exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` joins that group (gloo on CPU, nccl on CUDA). Without those variables the
run is a single process and every collective below is the identity.

Gradient scaling convention. Every rank computes the *same* global loss ``L`` (Partial FC gathers
the whole global batch), and DDP *averages* backbone gradients over ranks. So the gradient that
enters the backbone on each rank is multiplied by the world size (in :class:`_GatherWithGrad`),
which DDP's averaging then cancels: the backbone update equals the single-process one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fresnet.errors import FresnetError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FresnetError("device=cuda but CUDA is not available; use device=cpu")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise FresnetError(f"unknown device {device!r}; use auto, cpu or cuda")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world_size) of the active group, (0, 1) without one."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if active():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 (equal sizes). Backward: sum the gradient of the gathered tensor over
    ranks, keep this rank's rows, and multiply by the world size to undo DDP's gradient average."""

    @staticmethod
    def forward(ctx, x):
        rank, size = world()
        ctx.rank, ctx.size, ctx.rows = rank, size, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows] * ctx.size


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x) if active() else x


def gather_labels(labels: torch.Tensor) -> torch.Tensor:
    if not active():
        return labels
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts, 0)


class _SumOfReplicated(torch.autograd.Function):
    """all_reduce(SUM) whose result feeds a computation that *every rank repeats identically* (the
    softmax denominator of Partial FC): d L / d x_r = d L / d sum, so the backward is the identity."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


def sum_replicated(x: torch.Tensor) -> torch.Tensor:
    return _SumOfReplicated.apply(x) if active() else x


class _SumOfPartials(torch.autograd.Function):
    """all_reduce(SUM) whose result feeds *different* downstream work on each rank (synchronised
    BatchNorm statistics): each rank's copy contributes its own gradient, so the backward sums them."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def sum_partials(x: torch.Tensor) -> torch.Tensor:
    return _SumOfPartials.apply(x) if active() else x


class _SharedParameter(_SumOfPartials):
    """A parameter every rank holds a copy of (a loss's learned bias) used by each rank for its own
    slice of the work: the forward is the identity, the backward (inherited) sums the gradient over
    ranks."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)


def shared_parameter(x: torch.Tensor) -> torch.Tensor:
    return _SharedParameter.apply(x) if active() else x


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``x`` as rank ``src`` has it, on every rank (in place; a device collective, no host wait)."""
    if active():
        dist.broadcast(x, src)
    return x


def all_reduce_max_(x: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Gather uneven row shards (``counts[r]`` rows on rank r) into the full tensor, on every rank."""
    if not active():
        return x
    rows = max(counts)
    padded = torch.zeros((rows,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)], 0)


def gather_equal(x: torch.Tensor) -> list[torch.Tensor]:
    """All ranks' copies of an equally shaped tensor (RNG states), rank order."""
    if not active():
        return [x]
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts
