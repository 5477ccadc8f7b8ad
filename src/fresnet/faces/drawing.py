"""Detections drawn on a photo (OpenCV's primitives): boxes, the five landmarks, the score."""
from __future__ import annotations

import numpy as np

# one colour per landmark, RGB: eyes green, nose blue, mouth corners red, as InsightFace's draw_on
LANDMARK_COLOURS = ((0, 200, 0), (0, 200, 0), (40, 90, 255), (230, 30, 30), (230, 30, 30))
BOX_COLOUR = (255, 200, 0)


def draw_detections(rgb: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, scores=None) -> np.ndarray:
    """A copy of ``rgb`` with each box, its landmarks and (when given) its score drawn on it; line
    widths scale with the photo, so a 4000-pixel photo's marks stay visible when it is shrunk."""
    import cv2

    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for i, box in enumerate(np.asarray(boxes).reshape(-1, 4)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thick, cv2.LINE_AA)
        for (x, y), colour in zip(np.asarray(landmarks)[i], LANDMARK_COLOURS):
            cv2.circle(out, (int(round(float(x))), int(round(float(y)))), thick + 1, colour, -1, cv2.LINE_AA)
        if scores is not None:
            cv2.putText(out, f"{float(scores[i]):.2f}", (x1, max(0, y1 - 2 * thick)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4 * thick, BOX_COLOUR, max(1, thick // 2), cv2.LINE_AA)
    return out
