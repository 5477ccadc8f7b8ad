"""5-point face alignment to the ArcFace 112x112 template, in numpy.

Reproduces InsightFace's ``face_align.norm_crop``: a similarity transform (rotation, uniform scale,
translation) estimated by Umeyama's least-squares method (what ``skimage``'s ``SimilarityTransform``
does) from the five landmarks (left eye, right eye, nose tip, left and right mouth corners, in image
pixels) onto ``ARCFACE_DST``, then a bilinear warp with a black border (``cv2.warpAffine`` with
``borderValue=0``; pixel centres at integer coordinates, as OpenCV).

Landmarks come from the user (``--landmarks landmarks.json|.txt``); there is no detector here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from fresnet.errors import FresnetError

ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """The 3x3 similarity transform ``T`` minimising ``sum |T src_i - dst_i|^2`` (Umeyama 1991)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    cov = dst_demean.T @ src_demean / num
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[dim - 1] = -1  # a reflection would fit better; forbid it
    T = np.eye(dim + 1)
    U, S, Vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        raise FresnetError("landmarks are all the same point; cannot estimate an alignment")
    if rank == dim - 1:
        if np.linalg.det(U) * np.linalg.det(Vt) > 0:
            T[:dim, :dim] = U @ Vt
        else:
            s = d[dim - 1]
            d[dim - 1] = -1
            T[:dim, :dim] = U @ np.diag(d) @ Vt
            d[dim - 1] = s
    else:
        T[:dim, :dim] = U @ np.diag(d) @ Vt
    scale = (S @ d) / src_demean.var(0).sum() if estimate_scale else 1.0
    T[:dim, dim] = dst_mean - scale * (T[:dim, :dim] @ src_mean)
    T[:dim, :dim] *= scale
    return T


def estimate_norm(landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The 2x3 matrix mapping image pixels to the aligned crop (InsightFace's ``estimate_norm``,
    'arcface' mode: the template is scaled by ``image_size/112``, or by ``/128`` with an 8-px shift)."""
    lmk = np.asarray(landmarks, dtype=np.float64)
    if lmk.shape != (5, 2):
        raise FresnetError(f"alignment needs 5 (x, y) landmarks, got an array of shape {lmk.shape}")
    if image_size % 112 == 0:
        ratio, shift = image_size / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        shift = 8.0 * ratio
    else:
        raise FresnetError(f"aligned crop size must be a multiple of 112 or 128, got {image_size}")
    dst = ARCFACE_DST * ratio
    dst[:, 0] += shift
    return umeyama(lmk, dst)[:2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (w, h), borderValue=0)`` with bilinear sampling, in numpy.

    ``matrix`` maps source pixels to destination pixels; ``size`` is (height, width).
    """
    img = np.asarray(image)
    h, w = size
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    src = img.astype(np.float64)
    if src.ndim == 2:
        src = src[..., None]
    H, W = src.shape[:2]

    def tap(yy, xx):
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        values = src[np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]
        return values * inside[..., None]  # outside the image: border value 0

    out = (
        tap(y0, x0) * (1 - fx) * (1 - fy)
        + tap(y0, x0 + 1) * fx * (1 - fy)
        + tap(y0 + 1, x0) * (1 - fx) * fy
        + tap(y0 + 1, x0 + 1) * fx * fy
    )
    if img.ndim == 2:
        out = out[..., 0]
    if np.issubdtype(img.dtype, np.integer):
        return np.clip(np.rint(out), 0, 255).astype(img.dtype)
    return out.astype(img.dtype)


def norm_crop(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The aligned ``image_size`` x ``image_size`` face crop (uint8 HWC RGB in, same out)."""
    return warp_affine(image, estimate_norm(landmarks, image_size), (image_size, image_size))


# --------------------------------------------------------------------------------------------------
# landmark files

Landmarks = dict[str, np.ndarray]


def _as_points(values, where: str) -> np.ndarray:
    try:
        points = np.asarray(values, dtype=np.float64).reshape(5, 2)
    except (ValueError, TypeError):
        raise FresnetError(
            f"{where}: expected 5 landmarks as 10 numbers [[x1, y1], ..., [x5, y5]] "
            "(left eye, right eye, nose, left mouth, right mouth)"
        ) from None
    if not np.all(np.isfinite(points)):
        raise FresnetError(f"{where}: landmarks must be finite numbers")
    return points


def read_landmarks(path: Union[str, os.PathLike]) -> Union[Landmarks, list[np.ndarray]]:
    """Read user landmarks.

    * ``.json``: ``{"image.jpg": [[x, y] x5], ...}`` (keyed by file name or path) or a list of
      ``[[x, y] x5]`` in input order.
    * ``.txt``: one line per image, ``[name] x1 y1 x2 y2 ... x5 y5`` (10 numbers, with or without a
      leading image name); ``#`` starts a comment.

    Returns a dict keyed by name, or a list in input order.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FresnetError(f"{path}: cannot read the landmarks file ({exc.strerror or exc})") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FresnetError(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from exc
        if isinstance(data, dict):
            return {str(k): _as_points(v, f"{path}: key {k!r}") for k, v in data.items()}
        if isinstance(data, list):
            return [_as_points(v, f"{path}: entry {i}") for i, v in enumerate(data)]
        raise FresnetError(f"{path}: expected a JSON object {{name: landmarks}} or a list of landmarks")
    named: Landmarks = {}
    ordered: list[np.ndarray] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        where = f"{path}: line {lineno}"
        if len(fields) == 11:
            named[fields[0]] = _as_points(fields[1:], where)
        elif len(fields) == 10:
            ordered.append(_as_points(fields, where))
        else:
            raise FresnetError(f"{where}: expected '[name] x1 y1 ... x5 y5' (10 numbers), got {len(fields)} fields")
    if named and ordered:
        raise FresnetError(f"{path}: mix of named and unnamed lines; give every line an image name, or none")
    return named if named else ordered


def landmarks_for(table: Union[Landmarks, list[np.ndarray]], name: str, index: int) -> Optional[np.ndarray]:
    """The landmarks for input ``index`` called ``name`` (full path, then file name), or None."""
    if isinstance(table, list):
        return table[index] if index < len(table) else None
    for key in (name, os.path.basename(name)):
        if key in table:
            return table[key]
    return None


def check_landmarks_cover(table: Union[Landmarks, list[np.ndarray]], names: Sequence[str], source: str) -> None:
    """Every input must have landmarks, or the user gets one error listing the first few missing."""
    if isinstance(table, list):
        if len(table) != len(names):
            raise FresnetError(f"{source}: {len(table)} landmark entries for {len(names)} input images; give one per image")
        return
    missing = [n for i, n in enumerate(names) if landmarks_for(table, n, i) is None]
    if missing:
        raise FresnetError(
            f"{source}: no landmarks for {len(missing)} image(s), e.g. {missing[:3]}; key them by file name or path"
        )
