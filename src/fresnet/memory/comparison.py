"""A model measured without and with a memory plan: :func:`compare` reports saved bytes, peak and
step time of both."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from fresnet.memory.measure import FeatureMapCost, StepTime, best_step_time, feature_map_cost, time_step
from fresnet.memory.planning import MemoryPlan, plan


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
    previous = getattr(model, "grad_checkpoint_segments", ())  # segments: what set_grad_checkpointing takes
    settings = {"old": False, "new": memory_plan}
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
