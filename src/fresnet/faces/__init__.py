"""Photos to faces: detectors (MTCNN, SCRFD, YuNet) behind one interface, alignment, the pipeline.

Names are exported lazily so ``import fresnet.faces`` does not pull in torch or onnxruntime.
"""
from __future__ import annotations

from fresnet.lazy_exports import lazy_exports

_EXPORTS = {
    "Detections": "fresnet.faces.detection",
    "Detector": "fresnet.faces.detection",
    "SCRFD": "fresnet.faces.scrfd",
    "ONNXRecognizer": "fresnet.faces.recognizer",
    "MTCNN": "fresnet.faces.mtcnn",
    "FACENET_THRESHOLDS": "fresnet.faces.mtcnn",
    "INSIGHTFACE_THRESHOLDS": "fresnet.faces.mtcnn",
    "YuNet": "fresnet.faces.yunet",
    "mtcnn_weights": "fresnet.faces.weights",
    "yunet_model": "fresnet.faces.weights",
    "sface_model": "fresnet.faces.weights",
    "FaceAnalysis": "fresnet.faces.analysis",
    "Face": "fresnet.faces.face",
    "load_photo": "fresnet.faces.photo",
    "norm_crop": "fresnet.faces.align",
    "estimate_norm": "fresnet.faces.align",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
