"""From photographs to gallery embeddings: the small interface the command line and the service
need from a face pipeline, and the checks on uploaded image bytes.

A :class:`FacePipeline` finds faces (box, five landmarks, score, the aligned crop) and embeds
aligned crops in batches -- two steps, so the service can batch the crops of many requests into
one recogniser call. :func:`fresnet.gallery.real_pipeline.build_pipeline` makes the real one from
fresnet's detectors and a recognition model; tests inject a fake.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fresnet.errors import FresnetError
from fresnet.gallery.contract import EmbeddingContract


@dataclass(frozen=True, eq=False)
class LocatedFace:
    """A face found in a photo: box ``x1, y1, x2, y2``, landmarks ``(5, 2)``, detector score, and
    the aligned crop ``(H, W, 3)`` uint8 RGB the recogniser takes."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    crop: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FacePipeline(Protocol):
    """Detection + alignment, and batched recognition."""

    contract: EmbeddingContract

    def locate(self, image: np.ndarray) -> list[LocatedFace]:
        """Faces of an RGB uint8 photo, best first."""

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``(n, d)`` unit float32 embeddings of aligned crops ``(n, H, W, 3)`` uint8."""


class ImageRefused(FresnetError):
    """Uploaded bytes that are not an image (``kind='not_image'``) or too large (``'too_large'``)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def decode_photo(data: bytes, where: str) -> np.ndarray:
    """RGB uint8 pixels of an uploaded photo. Its size is read from the header and checked against
    the ``max_image_pixels`` limit before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    from fresnet.limits import current

    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageRefused(f"{where}: not an image ({type(exc).__name__}); send a JPEG, PNG or WebP photo",
                           "not_image") from None
    except Image.DecompressionBombError:
        raise ImageRefused(f"{where}: the image is too large to decode", "too_large") from None
    cap = current().max_image_pixels
    if width * height > cap:
        raise ImageRefused(f"{where}: a {width}x{height} image is above the limit of {cap:,} pixels "
                           "(max_image_pixels)", "too_large")
    from PIL import Image

    from fresnet.faces.photo import load_photo

    try:
        with Image.open(io.BytesIO(data)) as opened:
            return load_photo(opened, where=where)  # upright by EXIF, every mode to RGB
    except FresnetError as exc:
        raise ImageRefused(str(exc), "not_image") from None
    except Exception as exc:
        raise ImageRefused(f"{where}: cannot decode the image ({type(exc).__name__}); the upload is damaged or not "
                           "an image", "not_image") from None


def largest(faces: Sequence[LocatedFace]) -> LocatedFace | None:
    return max(faces, key=lambda face: face.area) if faces else None


def embed_faces(pipeline: FacePipeline, faces: Sequence[LocatedFace]) -> np.ndarray:
    if not faces:
        return np.zeros((0, pipeline.contract.embedding_size), np.float32)
    return pipeline.embed(np.stack([face.crop for face in faces]))

