"""Looking at a network without training it: ``summary`` (layers, shapes, true parameter counts,
MACs/FLOPs) and ``viz`` (the graph: drawn by graphviz's ``dot`` where it is installed, else by
matplotlib through ``layout`` and ``drawing``)."""
from __future__ import annotations

from fresnet.lazy_exports import lazy_exports

_EXPORTS = {
    "summarize": "fresnet.inspection.summary",
    "plot_network": "fresnet.inspection.viz",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
