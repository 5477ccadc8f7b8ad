"""Evaluation and inference: InsightFace's verification protocol, ROC numbers and plots, embeddings,
face alignment, and one loader for every model format (``load_any``).

Names are exported lazily so ``import fresnet.eval`` does not pull in torch, matplotlib or onnxruntime.
"""
from __future__ import annotations

from fresnet.lazy_exports import lazy_exports

_EXPORTS = {
    "verify": "fresnet.eval.verification",
    "verify_distances": "fresnet.eval.verification",
    "VerificationResult": "fresnet.eval.verification",
    "kfold_split": "fresnet.eval.verification",
    "pair_distances": "fresnet.eval.verification",
    "RocCurve": "fresnet.eval.roc",
    "roc_from_distances": "fresnet.eval.roc",
    "FAR_TARGETS": "fresnet.eval.roc",
    "plot_roc": "fresnet.eval.plots",
    "load_any": "fresnet.interop.model_loader",
    "Embedder": "fresnet.interop.model_loader",
    "embed_images": "fresnet.eval.embed",
    "evaluate_bin": "fresnet.eval.embed",
    "ARCFACE_DST": "fresnet.faces.align",
    "estimate_norm": "fresnet.faces.align",
    "norm_crop": "fresnet.faces.align",
    "umeyama": "fresnet.faces.align",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
