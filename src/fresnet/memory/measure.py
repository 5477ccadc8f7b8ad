"""What one training step keeps for backward, and which units to recompute instead.

The original shipped ``memonger.search_plan``/``get_cost``: it searched the MXNet graph for "mirror"
stages and reported the executor's "Total N MB allocated". Here the cost is *measured* in PyTorch and
the plan is applied with :func:`torch.utils.checkpoint` (non-reentrant):

* :func:`feature_map_cost` runs one real training step and counts the bytes autograd saved for
  backward (through ``saved_tensors_hooks``, each storage once), plus the step's peak heap growth.
* :func:`profile_units` measures, per residual unit, what it saves and what recomputing it costs.
  The stem counts as one more unit, named ``stem``: it is cheap to recompute (one 3-channel conv)
  but keeps two full-resolution maps, about a quarter of what a 4x-smaller r100 step may keep.
* :func:`plan` picks the units to recompute, grouped into segments of consecutive units: ``sqrt``
  (every unit, in about sqrt(n) segments) or ``budget`` (the least recomputation that fits a budget
  in MB of saved tensors, like memonger's threshold search).
* :func:`compare` measures a model with and without a plan, and the step-time overhead.

"MB" is 2**20 bytes, as in MXNet's ``debug_str``.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import time
from dataclasses import dataclass, field
from itertools import chain
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from fresnet.errors import FresnetError

MB = 2**20
STRATEGIES = ("sqrt", "budget")
PROFILE_BATCH = 2  # the head's BatchNorm1d needs more than one sample in training mode


# ---- measuring ---------------------------------------------------------------------------------
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


class _SavedTensorLedger:
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


def _input_size(model: nn.Module, input_size) -> tuple[int, int]:
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
    size = _input_size(model, input_size)
    device = _device_of(model)
    x = random_batch(batch, size, seed).to(device)
    param_ptrs = {t.untyped_storage().data_ptr() for t in chain(model.parameters(), model.buffers())}
    ledger = _SavedTensorLedger(param_ptrs)
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
    device = _device_of(model)
    x = random_batch(batch, _input_size(model, input_size), seed).to(device)
    with training_step_sandbox(model):
        _synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        probe_loss(model(x)).backward()
        _synchronize(device)
        return StepTime(time.perf_counter() - wall, time.process_time() - cpu)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- per-unit profile --------------------------------------------------------------------------
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
    size = _input_size(model, input_size)
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

    class Ledger(_SavedTensorLedger):
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
                model(random_batch(PROFILE_BATCH, size).to(_device_of(model)))
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


# ---- planning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryPlan:
    """Which units to recompute. Pass it to ``model.set_grad_checkpointing(plan)``.

    ``segments`` are runs of consecutive units, each checkpointed as one piece (only its input is
    kept); ``units`` lists them all. Byte figures are estimates at ``batch`` from the unit profile;
    :func:`feature_map_cost` measures the real thing.
    """

    segments: tuple[tuple[str, ...], ...]
    strategy: str
    batch: int
    input_size: tuple[int, int]
    baseline_bytes: int
    estimated_bytes: int
    recompute_peak_bytes: int
    recompute_fraction: float
    budget_bytes: Optional[int] = None
    profile: Optional[UnitProfile] = field(default=None, repr=False, compare=False)

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(name for segment in self.segments for name in segment)

    @property
    def meets_budget(self) -> bool:
        return self.budget_bytes is None or self.estimated_bytes <= self.budget_bytes

    @property
    def estimated_ratio(self) -> float:
        return self.baseline_bytes / max(self.estimated_bytes, 1)

    def describe(self) -> str:
        total = len(self.profile.units) if self.profile is not None else len(self.units)
        text = (
            f"plan '{self.strategy}': {len(self.units)} of {total} units in {len(self.segments)} segments, "
            f"recomputing {self.recompute_fraction:.0%} of the units' forward MACs; estimated "
            f"{self.baseline_bytes / MB:.0f} MB -> {self.estimated_bytes / MB:.0f} MB at batch {self.batch}"
        )
        if self.budget_bytes is not None:
            text += f" (budget {self.budget_bytes / MB:.0f} MB{'' if self.meets_budget else ', NOT met'})"
        return text


def _split(run: Sequence[UnitCost], pieces: int) -> list[tuple[str, ...]]:
    """Cut a run of consecutive units into ``pieces`` segments of about equal saved bytes: a segment
    ends once the running total reaches the next multiple of ``total / pieces``."""
    pieces = max(1, min(pieces, len(run)))
    total = sum(u.bytes for u in run)
    segments: list[tuple[str, ...]] = []
    current: list[str] = []
    acc = 0.0
    for i, unit in enumerate(run):
        current.append(unit.name)
        acc += unit.bytes
        cuts_left = pieces - 1 - len(segments)
        if cuts_left and i < len(run) - 1 and acc >= total * (len(segments) + 1) / pieces:
            segments.append(tuple(current))
            current = []
    segments.append(tuple(current))
    return segments


def _segments_for(profile: UnitProfile, chosen: set[str]) -> list[tuple[str, ...]]:
    """Group the chosen units into runs of consecutive units, each cut into about sqrt(len) segments,
    which balances the kept segment inputs against what one segment re-saves while recomputed."""
    segments: list[tuple[str, ...]] = []
    run: list[UnitCost] = []
    for unit in chain(profile.units, [None]):
        if unit is not None and unit.name in chosen:
            run.append(unit)
            continue
        if run:
            segments.extend(_split(run, math.ceil(math.sqrt(len(run)))))
            run = []
    return segments


def plan(
    model: nn.Module,
    budget: Optional[float] = None,
    *,
    strategy: Optional[str] = None,
    ratio: Optional[float] = None,
    batch: int = 64,
    input_size=None,
    profile: Optional[UnitProfile] = None,
) -> MemoryPlan:
    """Choose the units to recompute in backward.

    Args:
        model: a fresnet model.
        budget: MB of saved tensors allowed at ``batch``. Given, the ``budget`` strategy recomputes
            the units that free the most bytes per recomputed MAC (the early, wide-map units) until
            the estimate fits; if even recomputing every unit does not fit, the plan says so
            (``meets_budget`` False) and recomputes every unit.
        ratio: instead of ``budget``, ask for the unplanned cost divided by ``ratio`` (e.g. 4).
        strategy: ``sqrt`` (default without a budget): every unit, in about sqrt(n) segments of equal
            saved bytes. ``budget`` (default with one).
        batch: the batch size the byte figures refer to (the plan's choice only depends on it
            through the budget).
        input_size: (H, W); default the model's config.
        profile: a :func:`profile_units` result to reuse.
    """
    if ratio is not None:
        if budget is not None or ratio <= 1:
            raise FresnetError(f"give either a budget or a ratio above 1, got budget={budget}, ratio={ratio}")
        profile = profile or profile_units(model, input_size)
        budget = profile.saved_bytes((), batch) / ratio / MB
    strategy = strategy or ("budget" if budget is not None else "sqrt")
    if strategy not in STRATEGIES:
        raise FresnetError(f"unknown memory plan strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "budget" and budget is None:
        raise FresnetError("the 'budget' strategy needs a budget in MB of saved tensors, e.g. budget=2000")
    if budget is not None and budget <= 0:
        raise FresnetError(f"budget must be a positive number of MB, got {budget}")
    profile = profile or profile_units(model, input_size)
    names = profile.names

    if strategy == "sqrt":
        chosen = set(names)
        budget_bytes = None if budget is None else int(budget * MB)
    else:
        budget_bytes = int(budget * MB)
        chosen = set()
        # most bytes freed per recomputed MAC first
        ranking = sorted(profile.units, key=lambda u: -u.bytes / max(u.macs, 1))
        for unit in ranking:
            if profile.saved_bytes(_segments_for(profile, chosen), batch) <= budget_bytes:
                break
            chosen.add(unit.name)
    segments = _segments_for(profile, chosen)
    return MemoryPlan(
        segments=tuple(segments),
        strategy=strategy,
        batch=batch,
        input_size=profile.input_size,
        baseline_bytes=int(profile.saved_bytes((), batch)),
        estimated_bytes=int(profile.saved_bytes(segments, batch)),
        recompute_peak_bytes=int(profile.recompute_peak_bytes(segments, batch)),
        recompute_fraction=profile.recompute_fraction(segments),
        budget_bytes=budget_bytes,
        profile=profile,
    )


# ---- before / after ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanComparison:
    """A model measured without and with a plan. Step times are the best of the timed steps."""

    plan: MemoryPlan
    old: FeatureMapCost
    new: FeatureMapCost
    old_time: Optional[StepTime] = None
    new_time: Optional[StepTime] = None

    @property
    def ratio(self) -> float:
        return self.old.saved_bytes / max(self.new.saved_bytes, 1)

    @property
    def time_ratio(self) -> Optional[float]:
        """Wall-clock step time with the plan over without."""
        return None if self.old_time is None else self.new_time.wall / self.old_time.wall

    @property
    def cpu_time_ratio(self) -> Optional[float]:
        return None if self.old_time is None else self.new_time.cpu / self.old_time.cpu


def best_step_time(times: Sequence[StepTime]) -> Optional[StepTime]:
    """The least disturbed of several runs: the minimum wall and CPU time, each on its own."""
    if not times:
        return None
    return StepTime(min(t.wall for t in times), min(t.cpu for t in times))


def compare(
    model: nn.Module,
    memory_plan: Optional[MemoryPlan] = None,
    *,
    batch: int = 64,
    input_size=None,
    steps: int = 2,
    on_progress: Optional[Callable[[str], None]] = None,
) -> PlanComparison:
    """Measure ``model`` without and with ``memory_plan`` (default: :func:`plan`), then time
    ``steps`` training steps of each, alternating so that machine load hits both alike (the
    measuring steps double as warm-up). The model's own checkpointing is restored afterwards."""
    say = on_progress or (lambda message: None)
    memory_plan = memory_plan or plan(model, batch=batch, input_size=input_size)
    previous = _Segments(getattr(model, "grad_checkpoint_segments", ()))
    settings = {"old": _Segments(()), "new": memory_plan}
    costs: dict[str, FeatureMapCost] = {}
    times: dict[str, list[StepTime]] = {"old": [], "new": []}
    try:
        for key, setting in settings.items():
            say(f"measuring saved tensors ({'with' if key == 'new' else 'without'} the plan)")
            model.set_grad_checkpointing(setting)
            costs[key] = feature_map_cost(model, batch, input_size)
        for step in range(steps):
            for key, setting in settings.items():
                say(f"timing step {step + 1}/{steps} ({'with' if key == 'new' else 'without'} the plan)")
                model.set_grad_checkpointing(setting)
                times[key].append(time_step(model, batch, input_size, seed=step))
    finally:
        model.set_grad_checkpointing(previous)
    return PlanComparison(memory_plan, costs["old"], costs["new"], best_step_time(times["old"]),
                          best_step_time(times["new"]))


@dataclass(frozen=True)
class _Segments:
    segments: tuple[tuple[str, ...], ...]
