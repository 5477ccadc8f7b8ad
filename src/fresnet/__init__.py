"""fresnet: InsightFace's MXNet ``fresnet`` face-recognition ResNets, exact, in PyTorch.

The public API is re-exported here lazily, so ``import fresnet`` stays fast and optional parts
(ONNX, plotting) only load when used.
"""
from __future__ import annotations

from fresnet import limits  # noqa: F401 - the safety limits, a small module: fresnet.limits.override(...)
from fresnet.lazy_exports import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "NetConfig": "fresnet.network.config",
    "create_model": "fresnet.network.model",
    "list_models": "fresnet.network.presets",
    "FResNet": "fresnet.network.model",
    "summarize": "fresnet.inspection.summary",
    "FresnetError": "fresnet.errors",
    # interop
    "load_mxnet": "fresnet.interop.mxnet",
    "save_mxnet": "fresnet.interop.mxnet",
    "load_arcface_torch": "fresnet.interop.arcface_torch",
    "export_arcface_torch": "fresnet.interop.arcface_torch",
    "load": "fresnet.interop.formats",
    "save": "fresnet.interop.native",
    "export_onnx": "fresnet.interop.onnx_export",
    # photos in, faces out
    "FaceAnalysis": "fresnet.faces.analysis",
    "Face": "fresnet.faces.face",
    # speed
    "optimize_for_inference": "fresnet.inference.fast",
    # 1:N search
    "Gallery": "fresnet.gallery.gallery",
    "EmbeddingContract": "fresnet.gallery.contract",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, extra=["__version__"])
