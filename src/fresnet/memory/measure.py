"""One training step, measured: the bytes autograd saves for backward, the step's peak heap growth,
and its time.

:func:`feature_map_cost` runs one real training step and counts the bytes autograd saved for
backward (through ``saved_tensors_hooks``, each storage once), plus the step's peak heap growth.
:func:`time_step` times one step. Both leave the model as they found it
(:func:`training_step_sandbox`).

"MB" is 2**20 bytes, as in MXNet's ``debug_str``.
"""
from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.timing import timed

MB = 2**20


@dataclass(frozen=True)
class FeatureMapCost:
    """One training step, measured.

    ``saved_bytes`` counts activations saved for backward, each storage once; parameters (and buffers)
    that autograd also saves, such as convolution weights, are excluded from it and reported in
    ``param_bytes``. ``peak_bytes`` is the peak growth of allocated heap memory during the step
    (saved tensors, recomputed segments, gradients, temporaries), sampled after every operator; None
    where the C library cannot report it (non-glibc).
    """

    batch: int
    input_size: tuple[int, int]
    saved_bytes: int
    param_bytes: int
    saved_tensors: int
    peak_bytes: Optional[int]

    @property
    def saved_mb(self) -> float:
        return self.saved_bytes / MB

    @property
    def peak_mb(self) -> Optional[float]:
        return None if self.peak_bytes is None else self.peak_bytes / MB


class SavedTensorLedger:
    """``saved_tensors_hooks`` that count each saved storage once, keyed by its data pointer.

    While the forward pass runs it also holds a reference to every saved tensor, so that a storage
    freed mid-forward (a discarded branch) cannot hand its address to a different one.
    """

    def __init__(self, param_ptrs: set[int], on_saved: Optional[Callable[[int, int], None]] = None):
        self.param_ptrs = param_ptrs
        self.activations: dict[int, int] = {}
        self.params: dict[int, int] = {}
        self.on_saved = on_saved
        self._alive: list[torch.Tensor] = []

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if size and ptr in self.param_ptrs:
            self.params[ptr] = size
        elif size and ptr not in self.activations:
            self.activations[ptr] = size
            self._alive.append(tensor)
            if self.on_saved is not None:
                self.on_saved(ptr, size)
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def release(self) -> None:
        self._alive.clear()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]


def _heap_reader() -> Optional[Callable[[], int]]:
    """Bytes currently allocated by malloc (arenas + mmapped blocks), or None off glibc >= 2.33."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def allocated() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return allocated


@contextlib.contextmanager
def _cuda_peak(device: torch.device) -> Iterator[list]:
    """Yields ``[peak_growth_bytes]`` from the CUDA caching allocator's statistics."""
    result: list = [None]
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield result
    torch.cuda.synchronize(device)
    result[0] = torch.cuda.max_memory_allocated(device) - start


@contextlib.contextmanager
def _heap_peak() -> Iterator[list]:
    """Yields ``[peak_growth_bytes]`` (or ``[None]``), sampled after every aten operator."""
    result: list = [None]
    read = _heap_reader()
    if read is None:
        yield result
        return
    from torch.utils._python_dispatch import TorchDispatchMode

    start = read()
    peak = [start]

    class Sampler(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            peak[0] = max(peak[0], read())
            return out

    with Sampler():
        yield result
    result[0] = max(peak[0], read()) - start


@contextlib.contextmanager
def training_step_sandbox(model: nn.Module) -> Iterator[None]:
    """Train mode for a measured step; afterwards the model is as it was: mode, BatchNorm moving
    statistics, ``.grad`` of every parameter, and the global RNG."""
    was_training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    for p, _ in grads:
        p.grad = None
    try:
        with torch.random.fork_rng(devices=[]):
            model.train()
            yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for p, grad in grads:
            p.grad = grad


def resolve_input_size(model: nn.Module, input_size) -> tuple[int, int]:
    if input_size is None:
        config = getattr(model, "config", None)
        if config is None:
            raise FresnetError("input_size is required for a model without a .config (e.g. input_size=(112, 112))")
        return tuple(config.input_size)
    if isinstance(input_size, int):
        return (input_size, input_size)
    return tuple(int(v) for v in input_size)


def random_batch(batch: int, input_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Float RGB NCHW pixels in 0..255, reproducible from ``seed``."""
    if batch < 1:
        raise FresnetError(f"batch must be at least 1, got {batch}")
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *input_size, generator=generator) * 255


def probe_loss(output: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A loss with non-trivial gradients everywhere: a fixed random projection of the output.
    (``output.sum()`` would not do: behind the final fix_gamma BatchNorm its gradient is zero.)"""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(output.shape, generator=generator, dtype=torch.float32).to(output.device)
    return (output.float() * weights).sum()


def feature_map_cost(
    model: nn.Module, batch: int, input_size=None, *, track_peak: bool = True, seed: int = 0
) -> FeatureMapCost:
    """Run one training step (forward + backward, no optimizer step) and measure what it keeps.

    On a GPU, ``peak_bytes`` comes from the CUDA allocator's statistics instead of malloc.
    The model's state is untouched afterwards (see :func:`training_step_sandbox`). The model's
    current activation checkpointing applies: call ``set_grad_checkpointing`` first to cost a plan.
    """
    size = resolve_input_size(model, input_size)
    device = device_of(model)
    x = random_batch(batch, size, seed).to(device)
    param_ptrs = {t.untyped_storage().data_ptr() for t in chain(model.parameters(), model.buffers())}
    ledger = SavedTensorLedger(param_ptrs)
    with training_step_sandbox(model):
        if not track_peak:
            peak = contextlib.nullcontext([None])
        else:
            peak = _cuda_peak(device) if device.type == "cuda" else _heap_peak()
        with peak as peak_bytes:
            with torch.autograd.graph.saved_tensors_hooks(ledger.pack, ledger.unpack):
                output = model(x)
            ledger.release()
            probe_loss(output).backward()
            del output
    return FeatureMapCost(
        batch=batch,
        input_size=size,
        saved_bytes=sum(ledger.activations.values()),
        param_bytes=sum(ledger.params.values()),
        saved_tensors=len(ledger.activations),
        peak_bytes=peak_bytes[0],
    )


@dataclass(frozen=True)
class StepTime:
    """One training step: ``wall`` seconds, and ``cpu`` seconds of this process (all threads).
    On a shared machine the CPU time is the steadier figure: other jobs stretch the wall time."""

    wall: float
    cpu: float


def time_step(model: nn.Module, batch: int, input_size=None, *, seed: int = 0) -> StepTime:
    """Time one training step (forward, loss, backward) at the model's current checkpointing."""
    device = device_of(model)
    x = random_batch(batch, resolve_input_size(model, input_size), seed).to(device)
    with training_step_sandbox(model):
        with timed(device) as step:
            probe_loss(model(x)).backward()
        return StepTime(step.wall, step.cpu)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def best_step_time(times: Sequence[StepTime]) -> Optional[StepTime]:
    """The least disturbed of several runs: the minimum wall and CPU time, each on its own."""
    if not times:
        return None
    return StepTime(min(t.wall for t in times), min(t.cpu for t in times))

