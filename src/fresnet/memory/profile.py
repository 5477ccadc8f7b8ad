"""Who saves what for backward, per residual unit, and what recomputing each unit costs.

:func:`profile_units` measures, per residual unit, what it saves and what recomputing it costs.
The stem counts as one more unit, named ``stem``: it is cheap to recompute (one 3-channel conv)
but keeps two full-resolution maps, about a quarter of what a 4x-smaller r100 step may keep.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.memory.measure import (
    SavedTensorLedger,
    device_of,
    random_batch,
    resolve_input_size,
    training_step_sandbox,
)

PROFILE_BATCH = 2  # the head's BatchNorm1d needs more than one sample in training mode


@dataclass(frozen=True)
class SavedStorage:
    """One storage kept for backward (per sample): the units whose operators save it ('' for the
    reduce block and head) and the units that take it as their input."""

    bytes: float
    savers: frozenset
    input_of: frozenset


@dataclass(frozen=True)
class UnitCost:
    """Per sample: ``bytes`` the unit's operators save for backward (its input included), and
    ``macs`` the conv/FC multiply-accumulates that recomputing it costs."""

    name: str
    bytes: float
    macs: int


@dataclass(frozen=True)
class UnitProfile:
    """Measured per-sample costs: every storage a step saves, and who saves it."""

    units: tuple[UnitCost, ...]
    storages: tuple[SavedStorage, ...]
    input_size: tuple[int, int]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.units)

    def saved_bytes(self, segments: Sequence[Sequence[str]], batch: int) -> float:
        """Estimated bytes saved for backward with ``segments`` checkpointed: a storage stays if an
        operator outside every segment saves it, or if it is the input of a segment."""
        inside = {name for segment in segments for name in segment}
        firsts = {segment[0] for segment in segments}
        kept = sum(s.bytes for s in self.storages if (s.savers - inside) or (s.input_of & firsts))
        return kept * batch

    def recompute_peak_bytes(self, segments: Sequence[Sequence[str]], batch: int) -> float:
        """What the largest segment saves again while it is recomputed in backward."""
        peaks = [sum(s.bytes for s in self.storages if s.savers & set(segment)) for segment in segments]
        return max(peaks, default=0.0) * batch

    def recompute_fraction(self, segments: Sequence[Sequence[str]]) -> float:
        """Recomputed MACs as a fraction of the stem's and units' forward MACs."""
        inside = {name for segment in segments for name in segment}
        total = sum(u.macs for u in self.units) or 1
        return sum(u.macs for u in self.units if u.name in inside) / total


def _units_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The checkpointable pieces: the stem, then every residual unit."""
    if not hasattr(model, "iter_checkpointable"):
        raise FresnetError(f"memory planning needs a fresnet model (FResNet), got {type(model).__name__}")
    return list(model.iter_checkpointable())


def profile_units(model: nn.Module, input_size=None) -> UnitProfile:
    """Measure who saves what for backward, and each unit's MACs, on a real batch of two (scaled
    per sample). Runs without checkpointing, whatever the model's setting, and leaves the model as
    it was."""
    size = resolve_input_size(model, input_size)
    units = _units_of(model)
    current = [""]
    savers: dict[int, set] = {}
    sizes: dict[int, int] = {}
    input_of: dict[int, set] = {}
    macs: dict[str, int] = {name: 0 for name, _ in units}

    def enter(name):
        def hook(module, args):
            current[0] = name
            storage = args[0].untyped_storage()
            sizes.setdefault(storage.data_ptr(), storage.nbytes())
            input_of.setdefault(storage.data_ptr(), set()).add(name)
            ledger._alive.append(args[0])  # keep its address from being reused by another storage
        return hook

    def leave(module, args, output):
        current[0] = ""

    def count_macs(name):
        def hook(module, args, output):
            if isinstance(module, nn.Conv2d):
                per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
                macs[name] += output.numel() * per_output
            else:
                macs[name] += output.numel() * module.in_features
        return hook

    class Ledger(SavedTensorLedger):
        def pack(self, tensor):
            storage = tensor.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in self.param_ptrs:
                sizes.setdefault(storage.data_ptr(), storage.nbytes())
                savers.setdefault(storage.data_ptr(), set()).add(current[0])
                self._alive.append(tensor)
            return tensor

    ledger = Ledger({t.untyped_storage().data_ptr() for t in chain(model.parameters(), model.buffers())})
    handles = []
    for name, unit in units:
        handles.append(unit.register_forward_pre_hook(enter(name)))
        handles.append(unit.register_forward_hook(leave))
        for module in unit.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(count_macs(name)))
    segments = getattr(model, "grad_checkpoint_segments", ())
    try:
        with training_step_sandbox(model):
            model.grad_checkpoint_segments = ()
            with torch.autograd.graph.saved_tensors_hooks(ledger.pack, ledger.unpack):
                model(random_batch(PROFILE_BATCH, size).to(device_of(model)))
    finally:
        model.grad_checkpoint_segments = segments
        for handle in handles:
            handle.remove()
        ledger.release()

    storages = tuple(
        SavedStorage(sizes[ptr] / PROFILE_BATCH, frozenset(savers.get(ptr, ())), frozenset(input_of.get(ptr, ())))
        for ptr in sizes
    )
    costs = tuple(
        UnitCost(name, sum(s.bytes for s in storages if name in s.savers), macs[name] // PROFILE_BATCH)
        for name, _ in units
    )
    return UnitProfile(costs, storages, size)

