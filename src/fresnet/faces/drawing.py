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
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thick, cv2.LINE_AA)
        for (x, y), colour in zip(np.asarray(landmarks)[i], LANDMARK_COLOURS):
            cv2.circle(out, (round(float(x)), round(float(y))), thick + 1, colour, -1, cv2.LINE_AA)
        if scores is not None:
            cv2.putText(out, f"{float(scores[i]):.2f}", (x1, max(0, y1 - 2 * thick)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4 * thick, BOX_COLOUR, max(1, thick // 2), cv2.LINE_AA)
    return out


def faces_figure(rgb: np.ndarray, faces, gap: int = 8) -> np.ndarray:
    """The photo with its detections drawn, and beside it each face's aligned crop (``Face.crop``)
    enlarged to a third of the photo's height, stacked top to bottom, on white."""
    import cv2

    boxes = np.array([f.bbox for f in faces], np.float32).reshape(-1, 4)
    points = np.array([f.kps for f in faces], np.float32).reshape(-1, 5, 2)
    scores = [f.det_score for f in faces]
    marked = draw_detections(rgb, boxes, points, scores)
    height = marked.shape[0]
    side = max(1, height // 3 - gap)
    crops = [cv2.resize(f.crop, (side, side), interpolation=cv2.INTER_NEAREST) for f in faces if f.crop is not None][:3]
    width = marked.shape[1] + (gap + side if crops else 0)
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[:, :marked.shape[1]] = marked
    for i, crop in enumerate(crops):
        top = i * (side + gap)
        canvas[top:top + side, marked.shape[1] + gap:] = crop
    return canvas
