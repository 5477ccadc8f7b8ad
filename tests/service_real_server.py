"""Run the service with a real pipeline when this build has no ONNX recogniser yet: MTCNN (or the
given detector) and SFace through OpenCV's ``cv2.FaceRecognizerSF`` on fresnet's aligned crops.

    python service_real_server.py GALLERY.db PORT SFACE.onnx DETECTOR
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
import uvicorn

from fresnet.gallery.real_pipeline import RealPipeline
from fresnet.service.app import create_app
from fresnet.service.server import open_galleries


class OpenCVSFace:
    """SFace as OpenCV runs it: aligned 112x112 crops in (RGB here, BGR for OpenCV), 128-d out."""

    name = "sface (cv2.FaceRecognizerSF)"
    input_size = (112, 112)

    def __init__(self, path: str):
        self.model = cv2.FaceRecognizerSF.create(path, "")

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return np.stack([self.model.feature(np.ascontiguousarray(crop[:, :, ::-1])).reshape(-1) for crop in crops])


def main() -> None:
    gallery, port, model, detector = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    pipeline = RealPipeline.build(OpenCVSFace(model), detector)
    app = create_app(pipeline, open_galleries([gallery], pipeline.contract))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
