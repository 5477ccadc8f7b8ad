"""``fresnet demo``: the whole package in one run, offline, in minutes on a laptop CPU."""
from __future__ import annotations

from fresnet.lazy_exports import lazy_exports

_EXPORTS = {
    "DemoFailed": "fresnet.demo.run",
    "DemoOptions": "fresnet.demo.run",
    "DemoResult": "fresnet.demo.run",
    "run_demo": "fresnet.demo.run",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
