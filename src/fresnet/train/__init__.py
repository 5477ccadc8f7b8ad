"""Training: margin-softmax losses over a Partial FC, DDP under ``torchrun``, exact resume.

``fresnet.train.run(config, **overrides)`` trains in this process (or as one rank of a torchrun
job) and returns a :class:`~fresnet.train.loop.TrainResult`. ``config`` is a YAML path, a built-in
name (``synthetic-r18``), a dict or a :class:`~fresnet.train.config.TrainConfig`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:
    from fresnet.train.loop import TrainResult


def run(config: Any = "synthetic-r18", callbacks: Sequence[Callable] = (), **overrides: Any) -> TrainResult:
    """Train. ``overrides`` are config keys, e.g. ``run('synthetic-r18', output='out', max_steps=50)``."""
    from fresnet.train.config import load_config
    from fresnet.train.loop import train

    return train(load_config(config, overrides), callbacks=callbacks)


def load_config(config: Any = None, overrides: Optional[Any] = None):
    from fresnet.train.config import load_config as _load

    return _load(config, overrides)


__all__ = ["run", "load_config"]
