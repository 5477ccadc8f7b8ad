"""The real :class:`~fresnet.gallery.photos.FacePipeline`: a fresnet detector, ArcFace five-point
alignment (InsightFace's ``norm_crop``), and a recogniser's embeddings, L2-normalised."""
from __future__ import annotations

from typing import Any

import numpy as np

from fresnet.errors import FresnetError
from fresnet.gallery.contract import EmbeddingContract
from fresnet.gallery.photos import LocatedFace


class RealPipeline:
    """``detector.detect(rgb) -> Detections``; ``recognizer.embed(crops (N, H, W, 3) uint8) -> (N, D)``."""

    def __init__(self, detector: Any, recognizer: Any, contract: EmbeddingContract, align: Any):
        self.detector = detector
        self.recognizer = recognizer
        self.contract = contract
        self._align = align
        self.crop_size = int(recognizer.input_size[0])

    def locate(self, image: np.ndarray) -> list[LocatedFace]:
        found = self.detector.detect(image)
        return [LocatedFace(np.asarray(found.boxes[i], np.float32), np.asarray(found.landmarks[i], np.float32),
                            float(found.scores[i]), self._align(image, found.landmarks[i], self.crop_size))
                for i in range(len(found))]

    def embed(self, crops: np.ndarray) -> np.ndarray:
        raw = np.asarray(self.recognizer.embed(np.ascontiguousarray(crops)), np.float32)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return raw / np.maximum(norms, 1e-12)

    @classmethod
    def build(cls, model: str, detector: str = "mtcnn", **options: Any) -> "RealPipeline":
        raise FresnetError("the photo pipeline (fresnet.faces detectors) is not part of this build yet")


def build_pipeline(model: str, detector: str = "mtcnn", **options: Any) -> RealPipeline:
    """The real pipeline: one of fresnet's detectors, ArcFace 5-point alignment, ``model``'s embeddings."""
    return RealPipeline.build(model, detector, **options)
