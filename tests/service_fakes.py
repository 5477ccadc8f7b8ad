"""A fake face pipeline for the service's tests: a photo's "faces" are its coloured squares.

Each square of one flat colour on a white background is a face (its box, five landmarks inside
it); its embedding is a fixed function of the colour, so two photos of the same colour are the same
person. A plain white photo has no face. ``embed`` counts its calls (the batching test reads them).
"""
from __future__ import annotations

import io
import threading
import time

import numpy as np
from PIL import Image

from fresnet.gallery.contract import EmbeddingContract
from fresnet.gallery.photos import LocatedFace

DIM = 16
_PROJECTION = np.random.default_rng(0).standard_normal((3, DIM)).astype(np.float32)


class FakePipeline:
    contract = EmbeddingContract("sha256:fake", DIM, detector="fake-squares")

    def __init__(self, embed_seconds: float = 0.0):
        self.embed_seconds = embed_seconds
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def locate(self, image: np.ndarray) -> list[LocatedFace]:
        mask = (image < 250).any(axis=2)
        faces = []
        seen = np.zeros_like(mask)
        for y, x in zip(*np.nonzero(mask)):
            if seen[y, x]:
                continue
            colour = image[y, x]
            same = (np.abs(image.astype(int) - colour).sum(axis=2) < 6) & mask
            ys, xs = np.nonzero(same)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            seen[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
            w, h = box[2] - box[0], box[3] - box[1]
            landmarks = np.array([[.3, .4], [.7, .4], [.5, .6], [.35, .8], [.65, .8]], np.float32) * [w, h] + box[:2]
            crop = np.broadcast_to(image[int(box[1] + h / 2), int(box[0] + w / 2)], (8, 8, 3)).copy()
            faces.append(LocatedFace(box, landmarks, 0.99, crop))
        return faces

    def embed(self, crops: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls.append(len(crops))
        if self.embed_seconds:
            time.sleep(self.embed_seconds)
        colours = crops.reshape(len(crops), -1, 3).mean(axis=1).astype(np.float32) / 255.0 - 0.5
        rows = colours @ _PROJECTION + 0.05
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def photo(*squares: tuple[tuple[int, int, int], tuple[int, int, int, int]], size=(160, 120), fmt="PNG") -> bytes:
    """A white photo with coloured squares ``(colour, (x1, y1, x2, y2))``, encoded."""
    pixels = np.full((size[1], size[0], 3), 255, np.uint8)
    for colour, (x1, y1, x2, y2) in squares:
        pixels[y1:y2, x1:x2] = colour
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


RED, BLUE, GREEN = (200, 30, 30), (30, 40, 210), (20, 170, 60)
