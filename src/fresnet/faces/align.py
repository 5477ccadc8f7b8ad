"""5-point face alignment to the ArcFace template, exactly as InsightFace does it.

``norm_crop`` reproduces InsightFace's ``utils/face_align.norm_crop`` bit for bit: a similarity
transform (rotation, uniform scale, translation) estimated by Umeyama's least-squares method, as
``skimage``'s ``SimilarityTransform.estimate`` computes it, from the five landmarks (left eye, right eye,
nose tip, left and right mouth corners, in image pixels, any detector's) onto InsightFace's float32
``arcface_dst`` template scaled for the crop size (112, 224, ...: x size/112; 128, 256, ...: x size/128
with InsightFace's 8-pixel x-shift), then OpenCV's own ``cv2.warpAffine`` (bilinear, black border).
The estimate runs in the landmarks' own precision, as skimage's does: detectors give float32 points,
so InsightFace's transform is a float32 fit, and so is this one.

Landmark files (``read_landmarks``) serve ``fresnet eval``'s aligned-crop embedding; the IJB scripts'
alignment (a float32 template of their own, and OpenCV's fixed-point warp re-done in torch for batches
on the GPU) is the second half of the module.
"""
from __future__ import annotations

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
    """The 3x3 similarity transform ``T`` minimising ``sum |T src_i - dst_i|^2`` (Umeyama 1991).

    Written operation for operation like ``skimage.transform._umeyama``, in the inputs' precision as
    skimage does: InsightFace's IJB scripts pass float32 landmarks and a float32 template, so their
    transform is estimated in float32 (float32 SVD) and so is this one, to the last bit on the same
    numpy. Integer inputs are computed in float64.
    """
    src = np.asarray(src)
    dst = np.asarray(dst)
    if not np.issubdtype(src.dtype, np.floating):
        src = src.astype(np.float64)
    if not np.issubdtype(dst.dtype, np.floating):
        dst = dst.astype(np.float64)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    cov = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(cov) < 0:
        d[dim - 1] = -1  # a reflection would fit better; forbid it
    T = np.eye(dim + 1, dtype=np.float64)
    U, S, Vt = np.linalg.svd(cov)
    rank = np.count_nonzero(S > S.max() * max(cov.shape) * np.finfo(float).eps)
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
    scale = 1.0 / src_demean.var(axis=0).sum() * (S @ d) if estimate_scale else 1.0
    T[:dim, dim] = dst_mean - scale * (T[:dim, :dim] @ src_mean.T)
    T[:dim, :dim] *= scale
    return T


# InsightFace's face_align.arcface_dst is float32, and the scaled template it fits stays float32
_ARCFACE_DST_F32 = ARCFACE_DST.astype(np.float32)


def crop_geometry(image_size: int) -> tuple[float, float]:
    """The template's scale and x-shift for an ``image_size`` crop, as InsightFace's ``estimate_norm``."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise FresnetError(f"aligned crop size must be a positive integer, got {image_size!r}")
    if image_size % 112 == 0:
        return image_size / 112.0, 0.0
    if image_size % 128 == 0:
        ratio = image_size / 128.0
        return ratio, 8.0 * ratio
    raise FresnetError(f"aligned crop size must be a multiple of 112 or 128 (InsightFace's templates), got {image_size}")


def _landmark_points(landmarks: np.ndarray) -> np.ndarray:
    lmk = np.asarray(landmarks)
    if lmk.shape != (5, 2):
        raise FresnetError(f"alignment needs 5 (x, y) landmarks, got an array of shape {lmk.shape}")
    if not np.issubdtype(lmk.dtype, np.floating):
        lmk = lmk.astype(np.float64)
    if not np.all(np.isfinite(lmk)):
        raise FresnetError("alignment needs finite landmarks; got NaN or infinity")
    return lmk


def estimate_norm(landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The 2x3 float64 matrix mapping image pixels to the aligned crop: InsightFace's ``estimate_norm``
    ('arcface' mode), in the landmarks' own precision (float32 points give InsightFace's float32 fit)."""
    lmk = _landmark_points(landmarks)
    ratio, shift = crop_geometry(image_size)
    dst = _ARCFACE_DST_F32 * ratio  # stays float32, as arcface_dst * ratio does in InsightFace
    dst[:, 0] += shift
    return umeyama(lmk, dst)[:2]


def norm_crop(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The aligned ``image_size`` x ``image_size`` face (HWC in, same dtype and channels out):
    ``cv2.warpAffine(image, estimate_norm(landmarks, image_size), (size, size), borderValue=0)``."""
    import cv2

    matrix = estimate_norm(landmarks, image_size)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (image_size, image_size), borderValue=0.0)


def norm_crops(image: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Every face of one image aligned: landmarks ``(N, 5, 2)`` -> ``(N, size, size[, C])``."""
    points = np.asarray(landmarks)
    if points.ndim != 3 or points.shape[1:] != (5, 2):
        raise FresnetError(f"expected landmarks of shape (N, 5, 2), got {points.shape}")
    img = np.ascontiguousarray(image)
    out = np.empty((len(points), image_size, image_size, *img.shape[2:]), dtype=img.dtype)
    for i, lmk in enumerate(points):
        out[i] = norm_crop(img, lmk, image_size)
    return out


# --------------------------------------------------------------------------------------------------
# InsightFace's IJB alignment (recognition/arcface_torch/eval_ijbc.py, _evaluation_/ijb/ijb_onnx.py)

def _ijb_template() -> np.ndarray:
    # the scripts build the template in float32 and add the 8-px shift in float32; the ulps this
    # costs (62.7299 + 8 is not 70.7299 in float32) move the transform, so they are kept
    template = np.array(
        [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
        dtype=np.float32,
    )
    template[:, 0] += 8.0
    return template


IJB_TEMPLATE = _ijb_template()
IJB_CROP_SIZE = 112


def landmarks_68_to_5(points: np.ndarray) -> np.ndarray:
    """Five points from 68 (iBUG order), as ``Embedding.get`` reduces them, in float32: the eye
    centres are the means of each eye's corners (36, 39 and 42, 45), then the nose tip (30) and the
    mouth corners (48, 54)."""
    lmk = np.asarray(points, dtype=np.float32)
    if lmk.shape != (68, 2):
        raise FresnetError(f"expected 68 (x, y) landmarks, got an array of shape {lmk.shape}")
    five = np.zeros((5, 2), dtype=np.float32)
    five[0] = (lmk[36] + lmk[39]) / 2
    five[1] = (lmk[42] + lmk[45]) / 2
    five[2] = lmk[30]
    five[3] = lmk[48]
    five[4] = lmk[54]
    return five


def ijb_alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The 2x3 matrix taking a loose crop's pixels to the 112x112 crop: skimage's
    ``SimilarityTransform().estimate(landmark5, src)`` on float32 points, as the IJB scripts call it."""
    lmk = np.asarray(landmarks, dtype=np.float32)
    if lmk.shape == (68, 2):
        lmk = landmarks_68_to_5(lmk)
    if lmk.shape != (5, 2):
        raise FresnetError(f"alignment needs 5 (or 68) (x, y) landmarks, got an array of shape {lmk.shape}")
    return umeyama(lmk, IJB_TEMPLATE)[:2]


def warp_affine_opencv(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (w, h), borderValue=0)``: one uint8 image, (H, W) or (H, W, C);
    ``size`` is (height, width). OpenCV itself: on the CPU it is 37x faster than the torch copy below
    (64 faces: 6 ms against 225 ms, 2 cores), which earns its place on the GPU only."""
    import cv2

    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise FresnetError(f"the OpenCV-exact warp takes uint8 images, got {img.dtype}")
    h, w = size
    return cv2.warpAffine(np.ascontiguousarray(img), np.asarray(matrix, dtype=np.float64).reshape(2, 3), (w, h),
                          borderValue=0.0)


def pixel_batch(images: Sequence[np.ndarray]):
    """(H, W, C) uint8 images as :func:`warp_affine_opencv_batch`'s ``pixels``, ``offsets``, ``shapes``."""
    import torch

    sizes = [img.size for img in images]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    pixels = np.concatenate([np.ascontiguousarray(img, dtype=np.uint8).reshape(-1) for img in images])
    shapes = np.array([img.shape[:2] for img in images], dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(pixels), torch.from_numpy(offsets), torch.from_numpy(shapes)


def warp_affine_opencv_batch(pixels, offsets, shapes, matrices, size: tuple[int, int], channels: int = 3):
    """OpenCV 4.x's ``warpAffine`` (bilinear, constant border 0) of a batch of uint8 images, in torch,
    for a batch warped on the GPU where the pictures already are (on the CPU, use OpenCV).

    OpenCV's bilinear warp of 8-bit images is fixed-point, not the real-valued interpolation of
    :func:`warp_affine`: it inverts the matrix itself, rounds each source coordinate to 1/32 pixel
    (coordinates times 1024, rounded half to even, then shifted), weights the four neighbours with
    15-bit integers and rounds the weighted sum half up. After the matrix inversion everything is
    integer arithmetic, so any device gives the same bits. Checked against OpenCV 4.10 and 4.11 on
    random images and transforms: no pixel differs. (OpenCV 5.0 changed this arithmetic; its output
    is a few grey levels away from 4.x's, and so from InsightFace's.)

    ``pixels``: the images' (H, W, C) bytes one after the other (uint8, 1-D); ``offsets``: where each
    image starts; ``shapes``: (B, 2) heights and widths; ``matrices``: (B, 2, 3) float64, image pixels
    to output pixels. Returns (B, h, w, C) uint8 on ``pixels``' device.
    """
    import torch

    if pixels.device.type == "cpu" and torch.get_num_threads() > 1:
        # many small integer ops: on CPU, threads cost more than they give (5x slower with 2 threads)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return warp_affine_opencv_batch(pixels, offsets, shapes, matrices, size, channels)
        finally:
            torch.set_num_threads(threads)
    device = pixels.device
    h, w = size
    m = matrices.to(device=device, dtype=torch.float64).reshape(-1, 6)
    offsets, shapes = offsets.to(device), shapes.to(device)
    # cv::warpAffine inverts M with these very operations, so with the same rounding
    det = m[:, 0] * m[:, 4] - m[:, 1] * m[:, 3]
    det = torch.where(det != 0, 1.0 / det, torch.zeros_like(det))
    i0, i1, i3, i4 = m[:, 4] * det, m[:, 1] * -det, m[:, 3] * -det, m[:, 0] * det
    b0 = -i0 * m[:, 2] - i1 * m[:, 5]
    b1 = -i3 * m[:, 2] - i4 * m[:, 5]
    xs = torch.arange(w, dtype=torch.float64, device=device)
    ys = torch.arange(h, dtype=torch.float64, device=device)
    # AB_BITS = 10 (coordinates times 1024), INTER_BITS = 5 (1/32 pixel), round_delta = 1024 / 32 / 2
    x_step = torch.round(i0[:, None] * xs * 1024).int()
    y_step = torch.round(i3[:, None] * xs * 1024).int()
    x_row = torch.round((i1[:, None] * ys + b0[:, None]) * 1024).int() + 16
    y_row = torch.round((i4[:, None] * ys + b1[:, None]) * 1024).int() + 16
    fx = (x_row[:, :, None] + x_step[:, None, :]) >> 5
    fy = (y_row[:, :, None] + y_step[:, None, :]) >> 5
    sx, sy, ax, ay = fx >> 5, fy >> 5, fx & 31, fy & 31
    H, W = shapes[:, 0, None, None].int(), shapes[:, 1, None, None].int()
    base = offsets[:, None, None, None]
    channel = torch.arange(channels, device=device)
    acc = torch.full((len(m), h, w, channels), 1 << 14, dtype=torch.int32, device=device)  # + half: rounds half up
    for dy, wy in ((0, 32 - ay), (1, ay)):
        yy = sy + dy
        y_in = (yy >= 0) & (yy < H)
        row = yy.clamp(min=0).minimum(H - 1) * W
        for dx, wx in ((0, 32 - ax), (1, ax)):
            xx = sx + dx
            # a neighbour outside the image is the border value 0: its weight is dropped
            weight = wx * wy * 32 * (y_in & (xx >= 0) & (xx < W))
            index = base + ((row + xx.clamp(min=0).minimum(W - 1)) * channels)[..., None].long() + channel
            acc += pixels.take(index).int() * weight[..., None]
    return (acc >> 15).to(torch.uint8)


def align_ijb_face(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112 face that InsightFace's IJB scripts feed the network (uint8 HWC in, same out)."""
    return warp_affine_opencv(image, ijb_alignment_matrix(landmarks), (IJB_CROP_SIZE, IJB_CROP_SIZE))


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
    from fresnet.ioutil import read_text
    from fresnet.validate import load_json

    path = Path(path)
    try:
        text = read_text(path, "landmarks file")
    except OSError as exc:
        raise FresnetError(f"{path}: cannot read the landmarks file ({exc.strerror or exc})") from exc
    if path.suffix.lower() == ".json":
        data = load_json(text, str(path), "landmarks JSON")
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
