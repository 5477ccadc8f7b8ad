"""How long the demo trains on this machine: a few timed training steps, then as many steps as fit
the time budget, between a quality floor and the config's ``max_steps``.

The same demo ran 202 s on an AVX512-BF16 machine and 336-964 s on a 2-core AVX2 one, quiet or
busy; a fixed step count cannot fit both. So the demo measures the real step (backbone forward and
backward, the margin loss, SGD) on this machine, in this process, with whatever else is running, and
trains for ``budget x speed`` steps. The floor keeps the held-out accuracy above the bar however slow
the machine is (a slow machine takes longer rather than learning less); the config's ``max_steps``
is the most it trains on a fast one. The report says what was measured and chosen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TRAIN_BUDGET_S = 100.0  # for the training steps; the other demo steps take ~30-40 s on 2 AVX2 cores
MIN_STEPS = 1000  # the quality floor of synthetic-r18 (docs/training.md: accuracy >= 0.95 from here on)
CALIBRATION_STEPS = 6
# the loop does more than the timed step: reading and decoding batches, logging, verification
LOOP_OVERHEAD = 1.15


@dataclass(frozen=True)
class StepPlan:
    steps: int
    steps_per_s: float  # measured in the calibration
    budget_s: float
    least: int
    most: int
    fit: int  # steps that fit the budget at the measured speed, before the floor and the config's cap

    @property
    def reason(self) -> str:
        if self.steps == self.most and self.fit >= self.most:
            return f"the config's {self.most} steps fit the budget"
        if self.steps == self.least and self.fit < self.least:
            return f"{self.fit} steps fit the budget; raised to the quality floor of {self.least}"
        return f"{self.fit} steps fit the budget"


def plan_steps(steps_per_s: float, budget_s: float, least: int, most: int) -> StepPlan:
    """``budget_s`` of training at ``steps_per_s`` (less the loop's overhead), within [least, most]."""
    least = min(least, most)
    fit = int(budget_s * steps_per_s / LOOP_OVERHEAD) if math.isfinite(steps_per_s) else most
    return StepPlan(max(least, min(most, fit)), steps_per_s, budget_s, least, most, fit)


def measure_steps_per_s(cfg, net_config, num_classes: int, steps: int = CALIBRATION_STEPS) -> float:
    """Training steps per second of ``cfg`` on random images, after two warm-up steps: the step
    training runs (:class:`fresnet.train.step.TrainStep` with the config's precision, memory format
    and optimiser, on the device training would pick; no compile). The weights are thrown away and
    the global RNG is left as it was."""
    import torch

    from fresnet.network.model import FResNet
    from fresnet.timing import timed
    from fresnet.train.optim import build_optimizer
    from fresnet.train.partial_fc import PartialFC
    from fresnet.train.step import StepSettings, TrainStep

    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    settings = StepSettings(cfg.amp, cfg.uses_channels_last(device.type), None, float(cfg.clip_grad_norm))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = FResNet(net_config).to(device).train()
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
        fc = PartialFC(net_config.emb_size, num_classes, cfg.margin(num_classes), 1.0).to(device)
        optimizer = build_optimizer(cfg, model, fc, device)
        step = TrainStep(model, model, fc, optimizer, None, settings, device)
        images = torch.randint(0, 256, (cfg.batch_size, 3, *net_config.input_size), dtype=torch.uint8)
        labels = torch.randint(0, num_classes, (cfg.batch_size,))

        def run(n: int) -> None:
            for _ in range(n):
                loss = step(images, labels, 1e-3)
            float(loss)  # waits for the device

        run(2)
        with timed(device) as clock:
            run(steps)
        return steps / max(clock.wall, 1e-9)
