"""The network definition: the typed config and its presets, MXNet-exact layers, residual units,
heads, the assembled :class:`FResNet` and its initialisation.

Everything else in fresnet builds on this package; it depends only on :mod:`fresnet.memory` (the
default activation-checkpointing plan) and :mod:`fresnet.errors`.
"""
from __future__ import annotations

from fresnet.lazy_exports import lazy_exports

_EXPORTS = {
    "NetConfig": "fresnet.network.config",
    "create_model": "fresnet.network.model",
    "FResNet": "fresnet.network.model",
    "list_models": "fresnet.network.presets",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
