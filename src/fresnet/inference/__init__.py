"""The inference fast path: exact BatchNorm folding (``fuse``), the mixed-precision network
(``mixed_precision``) and ``optimize_for_inference`` that puts them together (``fast``)."""
from __future__ import annotations

from fresnet.lazy_exports import lazy_exports

_EXPORTS = {
    "optimize_for_inference": "fresnet.inference.fast",
    "FastModel": "fresnet.inference.fast",
    "fold_batchnorm": "fresnet.inference.fuse",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
