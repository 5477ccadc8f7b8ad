"""One face found in a photograph: where it is, how sure the detector is, and who it looks like."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    """InsightFace's ``Face`` fields, typed.

    ``bbox``: ``(4,)`` float32 x1, y1, x2, y2 in the photo's pixels; ``kps``: ``(5, 2)`` float32
    landmarks (left eye, right eye, nose, left and right mouth corners, as seen in the image);
    ``det_score``: the detector's score; ``embedding``: the recogniser's raw output (with flip, the sum
    of the face's and its mirror's); ``crop``: the aligned face, kept when asked for.
    """

    bbox: np.ndarray
    kps: np.ndarray
    det_score: float
    embedding: np.ndarray | None = None
    crop: np.ndarray | None = field(default=None, repr=False)

    @property
    def embedding_norm(self) -> float | None:
        return None if self.embedding is None else float(np.linalg.norm(self.embedding))

    @property
    def normed_embedding(self) -> np.ndarray | None:
        """The embedding divided by its L2 norm (a zero embedding stays zero)."""
        if self.embedding is None:
            return None
        norm = np.linalg.norm(self.embedding)
        return (self.embedding / norm if norm > 0 else self.embedding).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready box, score and landmarks (the embedding is left to binary formats)."""
        return {
            "box": [round(float(v), 2) for v in self.bbox],
            "score": round(float(self.det_score), 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.kps],
        }
