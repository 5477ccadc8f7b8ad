"""The real :class:`~fresnet.gallery.photos.FacePipeline`: :class:`fresnet.faces.analysis.FaceAnalysis`
(a fresnet detector, InsightFace's ``norm_crop``, a recogniser) split into its two steps, and the
embedding contract that names what it computes."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from fresnet.gallery.contract import EmbeddingContract, model_digest
from fresnet.gallery.photos import LocatedFace


def _spec_digest(spec: Any) -> str:
    if isinstance(spec, (str, os.PathLike)):
        return model_digest(os.fspath(spec))
    return f"object:{type(spec).__name__}"


class RealPipeline:
    """``locate``: detect and align one photo; ``embed``: L2-normalised embeddings of aligned crops."""

    def __init__(self, analysis: Any, contract: EmbeddingContract):
        self.analysis = analysis
        self.contract = contract

    def locate(self, image: np.ndarray) -> list[LocatedFace]:
        from fresnet.faces.align import norm_crop

        found = self.analysis.detect(image)
        size = self.analysis.crop_size
        return [LocatedFace(np.asarray(found.boxes[i], np.float32), np.asarray(found.landmarks[i], np.float32),
                            float(found.scores[i]), norm_crop(image, found.landmarks[i], size))
                for i in range(len(found))]

    def embed(self, crops: np.ndarray) -> np.ndarray:
        raw = np.asarray(self.analysis.embed_crops(np.ascontiguousarray(crops)), np.float32)
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)

    @classmethod
    def build(cls, model: Any, detector: Any = "mtcnn", det_thresh: float | None = None, flip: bool = False,
              device: str = "cpu", fast: bool = False) -> RealPipeline:
        from fresnet.faces.analysis import FaceAnalysis

        analysis = FaceAnalysis(detector=detector, recognizer=model, flip=flip, det_thresh=det_thresh, device=device,
                                fast=fast)
        size = analysis.crop_size
        probe = analysis.embed_crops(np.zeros((1, size, size, 3), np.uint8))
        recognizer = analysis.recognizer
        settings = {"detector": getattr(analysis.detector, "name", type(analysis.detector).__name__),
                    "spec": os.path.basename(os.fspath(detector)) if isinstance(detector, (str, os.PathLike))
                    else type(detector).__name__,
                    "det_thresh": det_thresh}
        if isinstance(detector, (str, os.PathLike)) and os.path.isfile(os.fspath(detector)):
            settings["digest"] = model_digest(os.fspath(detector))
        contract = EmbeddingContract(
            model_digest=_spec_digest(model), embedding_size=int(probe.shape[1]),
            input_size=(int(recognizer.input_size[0]), int(recognizer.input_size[1])),
            normalisation=f"{type(recognizer).__name__} input, flip={bool(flip)}, L2-normalised",
            detector=json.dumps(settings, sort_keys=True), alignment=f"insightface norm_crop {size}x{size}")
        return cls(analysis, contract)


def build_pipeline(model: Any, detector: Any = "mtcnn", **options: Any) -> RealPipeline:
    """The real pipeline: one of fresnet's detectors, ArcFace 5-point alignment, ``model``'s embeddings."""
    return RealPipeline.build(model, detector, **options)
