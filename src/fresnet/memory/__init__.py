"""Activation memory of a training step: measured, and planned (which units to recompute).

A package below :mod:`fresnet.network`, whose ``set_grad_checkpointing(True)`` applies :func:`plan`."""
from __future__ import annotations

from fresnet.lazy_exports import lazy_exports

_EXPORTS = {
    "MB": "fresnet.memory.measure",
    "FeatureMapCost": "fresnet.memory.measure",
    "StepTime": "fresnet.memory.measure",
    "feature_map_cost": "fresnet.memory.measure",
    "time_step": "fresnet.memory.measure",
    "best_step_time": "fresnet.memory.measure",
    "random_batch": "fresnet.memory.measure",
    "probe_loss": "fresnet.memory.measure",
    "training_step_sandbox": "fresnet.memory.measure",
    "UnitProfile": "fresnet.memory.measure",
    "profile_units": "fresnet.memory.measure",
    "MemoryPlan": "fresnet.memory.measure",
    "STRATEGIES": "fresnet.memory.measure",
    "plan": "fresnet.memory.measure",
    "PlanComparison": "fresnet.memory.measure",
    "compare": "fresnet.memory.measure",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
