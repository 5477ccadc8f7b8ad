"""What every face detector returns, and the one method it has.

Boxes are ``(N, 4)`` float32 ``x1, y1, x2, y2`` in the pixels of the image the detector was given;
scores ``(N,)`` float32; landmarks ``(N, 5, 2)`` float32 ``x, y`` in InsightFace's order: left eye,
right eye, nose tip, left mouth corner, right mouth corner, *as seen in the image* (the subject's
right eye is the image's left eye). Rows are sorted by score, best first, unless a detector's
reference orders them otherwise (then its module says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fresnet.errors import FresnetError


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray  # (N, 5, 2) float32

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.landmarks.shape != (n, 5, 2):
            raise ValueError(
                f"detections disagree in shape: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"landmarks {self.landmarks.shape}; expected (N, 4), (N,), (N, 5, 2)"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


class Detector(Protocol):
    """A face detector: an RGB ``uint8`` image ``(H, W, 3)`` in, :class:`Detections` out."""

    name: str

    def detect(self, image: np.ndarray) -> Detections: ...


def check_rgb_image(image: object) -> np.ndarray:
    """``image`` as a C-contiguous ``(H, W, 3)`` uint8 array, or :class:`FresnetError` saying what it is."""
    if not isinstance(image, np.ndarray):
        raise FresnetError(f"a detector takes a NumPy (H, W, 3) uint8 RGB array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise FresnetError(
            f"a detector takes an (H, W, 3) uint8 RGB array, got shape {image.shape} dtype {image.dtype}; "
            "convert grayscale, alpha, 16-bit or palette images to 8-bit RGB first (the face pipeline's "
            "image reader does this)"
        )
    return np.ascontiguousarray(image)


def largest_first(boxes: np.ndarray, shape: tuple, metric: str = "default") -> np.ndarray:
    """Box indices by decreasing area ('max'), or area minus twice the squared distance of the box
    centre from the photo centre ('default'), ranked as InsightFace's ``max_num`` ranks them
    (argsort, reversed)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if metric == "max":
        values = area
    else:
        centre_y, centre_x = shape[0] // 2, shape[1] // 2
        offsets = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 - centre_x, (boxes[:, 1] + boxes[:, 3]) / 2 - centre_y])
        values = area - np.sum(np.power(offsets, 2.0), 0) * 2.0
    return np.argsort(values)[::-1]
