"""Which units to recompute in backward: :func:`plan` picks them, grouped into segments of
consecutive units: ``sqrt`` (every unit, in about sqrt(n) segments) or ``budget`` (the least
recomputation that fits a budget in MB of saved tensors, like memonger's threshold search).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional, Sequence

from torch import nn

from fresnet.errors import FresnetError
from fresnet.memory.measure import MB
from fresnet.memory.profile import UnitCost, UnitProfile, profile_units

STRATEGIES = ("sqrt", "budget")


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
        raise FresnetError("the 'budget' strategy needs a budget in MB of saved tensors, e.g. "
                           "plan(model, budget=2000) (fresnet memory: --budget 2000)")
    if strategy == "sqrt" and budget is not None:
        raise FresnetError("the 'sqrt' strategy recomputes every unit whatever the budget, which would be ignored; "
                           "give the budget (or ratio) without strategy='sqrt', or leave it out")
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

