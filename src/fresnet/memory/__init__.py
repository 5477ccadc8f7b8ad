"""What one training step keeps for backward, and which units to recompute instead.

The original shipped ``memonger.search_plan``/``get_cost``: it searched the MXNet graph for "mirror"
stages and reported the executor's "Total N MB allocated". Here the cost is *measured* in PyTorch and
the plan is applied with :func:`torch.utils.checkpoint` (non-reentrant):

* ``measure`` -- :func:`feature_map_cost` runs one real training step and counts the bytes autograd
  saved for backward, plus the step's peak heap growth; :func:`time_step` times one.
* ``profile`` -- :func:`profile_units` measures, per residual unit (and the stem), what it saves and
  what recomputing it costs.
* ``planning`` -- :func:`plan` picks the units to recompute, grouped into segments of consecutive
  units: ``sqrt`` or ``budget``.
* ``comparison`` -- :func:`compare` measures a model with and without a plan, and the step-time
  overhead.

The package knows fresnet models only through ``iter_checkpointable()`` and
``set_grad_checkpointing()``, so it sits below :mod:`fresnet.network`, whose
``set_grad_checkpointing(True)`` applies the default :func:`plan`.
"""
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
    "UnitProfile": "fresnet.memory.profile",
    "profile_units": "fresnet.memory.profile",
    "MemoryPlan": "fresnet.memory.planning",
    "STRATEGIES": "fresnet.memory.planning",
    "plan": "fresnet.memory.planning",
    "PlanComparison": "fresnet.memory.comparison",
    "compare": "fresnet.memory.comparison",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
