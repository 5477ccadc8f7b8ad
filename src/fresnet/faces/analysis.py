"""Photos in, identities out: detect -> align -> embed, as InsightFace's ``FaceAnalysis`` and its
MXNet deploy code do it, with every face of every photo of a call embedded in batches.

    >>> app = fresnet.FaceAnalysis(recognizer="model.safetensors")
    >>> faces = app.get("group.jpg")            # list[Face], best detector score first
    >>> faces[0].normed_embedding @ faces[1].normed_embedding

The detector finds boxes and five landmarks; :func:`fresnet.faces.align.norm_crop` warps each face
onto InsightFace's template at the recogniser's input size (bit for bit InsightFace's crop); the
recogniser embeds all crops a batch at a time. ``flip=True`` is the MXNet deploy semantics: the
embedding is ``emb(crop) + emb(mirror)`` and ``normed_embedding`` its L2-normalised form.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from fresnet.errors import FresnetError
from fresnet.faces.face import Face
from fresnet.faces.photo import Photo, load_photo

#: default faces per recogniser call (benchmarks/bench_faces.py, docs/faces.md)
CPU_BATCH = 8
GPU_BATCH = 64


def default_batch_size(device: Any) -> int:
    """Faces per recogniser call when none is given: :data:`CPU_BATCH` on the CPU, :data:`GPU_BATCH`
    elsewhere."""
    return CPU_BATCH if str(device).startswith("cpu") else GPU_BATCH


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class FaceAnalysis:
    """Detect, align and embed the faces of photographs.

    Args:
        detector: 'mtcnn' (the default: embedded, PyTorch, no ONNX needed), 'yunet', a path to an
            SCRFD/RetinaFace/YuNet ``.onnx``, or any object with ``detect(rgb) -> Detections``.
        recognizer: anything ``fresnet eval`` loads (a preset name -- random weights --, a fresnet
            model, ``.safetensors``, an MXNet checkpoint, an arcface_torch ``.pth``), an ``.onnx``
            recogniser (fresnet exports, InsightFace model-zoo graphs, SFace), or an object with
            ``input_size`` and ``embed(crops)``. None: detection and alignment only.
        flip: embed each face and its mirror and sum them (InsightFace MXNet deploy's ``flip``).
        det_size: an ONNX detector's input ``(width, height)`` (default 640x640; MTCNN ignores it).
        det_thresh: the detector's score threshold (default: the detector's own).
        device: 'cpu', 'cuda' or 'auto'.
        fast: run a PyTorch recogniser through ``optimize_for_inference`` (bf16/int8 where its
            calibration on the first batch keeps the embeddings; docs/performance.md).
        dtype: the fast path's precision for a PyTorch recogniser: 'auto' (the default: timed against
            eager on the first batch), 'float32', 'bfloat16' ('bf16') or 'int8' (CPU); see
            :func:`fresnet.optimize_for_inference`.
        calibration: int8's activation ranges: aligned crops ``(N, S, S, 3)`` uint8 RGB (e.g. from
            :meth:`align` on real photos) or anything ``optimize_for_inference`` takes; with
            ``dtype='auto'`` it makes int8 a candidate.
        batch_size: faces per recogniser call; faces of several photos share a batch. Default:
            :data:`CPU_BATCH` on the CPU (an r50 is fastest per face at 4-8 faces there: 34 ms a face
            in bf16 against 40 ms at 50, 62 ms against 95 ms in float32), :data:`GPU_BATCH` on a GPU.
        keep_crops: keep each face's aligned crop on ``Face.crop``.
    """

    def __init__(self, detector: Any = "mtcnn", recognizer: Any = None, flip: bool = False,
                 det_size: Sequence[int] | None = None, det_thresh: float | None = None,
                 device: str = "cpu", fast: bool = True, batch_size: int | None = None, keep_crops: bool = False,
                 dtype: str = "auto", calibration: Any = None):
        from fresnet.faces.detectors import create_detector
        from fresnet.faces.recognition import check_input_size, create_recognizer

        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise FresnetError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.device = _device(device)
        if batch_size is None:
            batch_size = default_batch_size(self.device)
        self.detector = create_detector(detector, det_size=det_size, det_thresh=det_thresh, device=self.device)
        self.recognizer = None if recognizer is None else create_recognizer(
            recognizer, device=self.device, fast=fast, dtype=dtype, calibration=calibration)
        self.crop_size = 112 if self.recognizer is None else check_input_size(self.recognizer)
        self.flip = bool(flip)
        self.batch_size = batch_size
        self.keep_crops = keep_crops

    def get(self, image: Photo, max_num: int = 0, bgr: bool = False) -> list[Face]:
        """The faces of one photo (a path, a PIL image or an RGB array; ``bgr=True`` for OpenCV's
        arrays), best detector score first; ``max_num > 0`` keeps the largest, most central ones."""
        return self.get_many([image], max_num=max_num, bgr=bgr)[0]

    def get_many(self, images: Iterable[Photo], max_num: int = 0, bgr: bool = False,
                 progress: Callable[[int], None] | None = None) -> list[list[Face]]:
        """The faces of each photo, one list per photo; all faces are embedded together in batches
        of ``batch_size``. ``progress`` is called with 1 after each photo is detected."""
        if isinstance(max_num, bool) or not isinstance(max_num, int) or max_num < 0:
            raise FresnetError(f"max_num must be an integer >= 0 (0 keeps every face), got {max_num!r}")
        results: list[list[Face]] = []
        pending_faces: list[Face] = []
        pending_crops: list[np.ndarray] = []
        for image in images:
            faces, crops = self.align(image, max_num, bgr)
            results.append(faces)
            if self.recognizer is not None:
                pending_faces.extend(faces)
                pending_crops.extend(crops)
            while len(pending_crops) >= self.batch_size:  # memory stays bounded by one batch of crops
                self._embed(pending_faces[:self.batch_size], pending_crops[:self.batch_size])
                del pending_faces[:self.batch_size], pending_crops[:self.batch_size]
            if progress is not None:
                progress(1)
        if pending_crops:
            self._embed(pending_faces, pending_crops)
        return results

    def detect(self, image: Photo, max_num: int = 0, bgr: bool = False):
        """The detector's :class:`Detections` for one photo (after ``max_num``), nothing embedded."""
        return self._detections(load_photo(image, bgr=bgr), max_num)

    def _detections(self, rgb: np.ndarray, max_num: int):
        import inspect

        from fresnet.faces.detection import Detections, largest_first

        detect = self.detector.detect
        if max_num and "max_num" in inspect.signature(detect).parameters:
            return detect(rgb, max_num=max_num)
        found = detect(rgb)
        if not isinstance(found, Detections):
            raise FresnetError(f"detector {getattr(self.detector, 'name', self.detector)!r} returned "
                               f"{type(found).__name__}, not Detections")
        if 0 < max_num < len(found):
            pick = largest_first(found.boxes, rgb.shape, "default")[:max_num]
            found = Detections(found.boxes[pick], found.scores[pick], found.landmarks[pick])
        return found

    def align(self, image: Photo, max_num: int = 0, bgr: bool = False) -> tuple[list[Face], list[np.ndarray]]:
        """The faces of one photo, not yet embedded, and their aligned crops at the recogniser's size."""
        from fresnet.faces.align import norm_crop

        rgb = load_photo(image, bgr=bgr)
        found = self._detections(rgb, max_num)
        faces, crops = [], []
        for box, score, points in zip(found.boxes, found.scores, found.landmarks):
            crop = norm_crop(rgb, points, self.crop_size)
            faces.append(Face(bbox=np.asarray(box, np.float32), kps=np.asarray(points, np.float32),
                              det_score=float(score), crop=crop if self.keep_crops else None))
            crops.append(crop)
        return faces, crops

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Raw embeddings of aligned crops ``(N, S, S, 3)`` uint8 RGB (flip-summed with ``flip``)."""
        if self.recognizer is None:
            raise FresnetError("this FaceAnalysis has no recogniser; pass recognizer=... to embed faces")
        return embed_crops(self.recognizer, crops, flip=self.flip, batch_size=self.batch_size)

    def _embed(self, faces: list[Face], crops: list[np.ndarray]) -> None:
        if self.recognizer is None or not faces:
            return
        embeddings = self.embed_crops(np.stack(crops))
        for face, embedding in zip(faces, embeddings):
            face.embedding = embedding


def embed_crops(recognizer: Any, crops: np.ndarray, flip: bool = False, batch_size: int = 64) -> np.ndarray:
    """Raw embeddings of aligned crops ``(N, S, S, 3)`` uint8 RGB, ``batch_size`` at a time; with
    ``flip``, ``emb(crop) + emb(mirror)`` (InsightFace MXNet deploy's flip)."""
    crops = np.ascontiguousarray(crops, dtype=np.uint8)
    out = []
    for start in range(0, len(crops), batch_size):
        batch = crops[start:start + batch_size]
        emb = np.asarray(recognizer.embed(batch), dtype=np.float32)
        if flip:
            emb = emb + np.asarray(recognizer.embed(np.ascontiguousarray(batch[:, :, ::-1])), dtype=np.float32)
        out.append(emb)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
