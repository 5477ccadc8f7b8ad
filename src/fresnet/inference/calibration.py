"""Calibration images for int8 quantisation: from a tensor, an iterable of tensors, or a path.

Static int8 quantisation fixes one scale per activation from the ranges it sees during
calibration, so what it sees must look like what the network will be given: aligned face crops,
float RGB in 0..255, at the network's input size. A few hundred images are enough
(:data:`RECOMMENDED_IMAGES`); the ranges of a handful, or of blank frames, are wrong for real faces
and the int8 model would silently lose accuracy, so such sets are refused or warned about here
(:func:`check_calibration`).

``source`` may be

* a float tensor ``(N, 3, H, W)`` of 0..255 RGB faces (or a uint8 one),
* an iterable of such tensors (a list of batches, a generator),
* a path: a verification ``.bin`` pack, an InsightFace RecordIO dataset (its folder, ``.rec`` or
  prefix), or an image folder (one sub-folder per identity), read with :mod:`fresnet.data`'s readers,
* ``None``: synthetic faces (:class:`fresnet.data.SyntheticFaces`), for random-weight networks and
  speed tests only.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch

from fresnet.errors import FresnetError

CalibrationSource = Union[torch.Tensor, Iterable[torch.Tensor], str, os.PathLike, None]

MIN_IMAGES = 16  # fewer: the error names the count and asks for more
RECOMMENDED_IMAGES = 256  # fewer than this (but at least MIN_IMAGES): a warning
DEFAULT_LIMIT = 512  # images read from a path (evenly spread over the whole set)
BLANK_STD = 2.0  # an image whose pixel standard deviation (0..255) is below this is blank
BATCH_SIZE = 32


class CalibrationWarning(UserWarning):
    """The calibration set is usable but small or partly blank: the int8 model may be less accurate."""


def calibration_batches(
    source: CalibrationSource,
    input_size: Sequence[int],
    *,
    limit: int = DEFAULT_LIMIT,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
) -> list[torch.Tensor]:
    """``source`` as a list of float32 ``(B, 3, H, W)`` batches in 0..255, checked (:func:`check_calibration`).

    Args:
        source: see the module docs.
        input_size: the network's (H, W); images from a path are resized to it, tensors must match.
        limit: at most this many images are used (a path is sampled evenly across the whole set).
        batch_size: batch size of the returned batches (tensors passed in keep their own batching).
    """
    from fresnet.validate import as_int, as_int_tuple

    height, width = as_int_tuple(input_size, "input_size", "calibration", minimum=1, length=2)
    limit = as_int(limit, "limit", "calibration", minimum=1)
    batch_size = as_int(batch_size, "batch_size", "calibration", minimum=1)
    if source is None:
        batches = _synthetic(min(limit, RECOMMENDED_IMAGES), height, width, seed, batch_size)
        where = "synthetic faces"
    elif isinstance(source, (str, os.PathLike)):
        images = _read_path(Path(source), limit, (height, width))
        batches = list(torch.from_numpy(images).permute(0, 3, 1, 2).float().split(batch_size))
        where = str(source)
    elif isinstance(source, torch.Tensor):
        batches = [_as_batch(source, "the calibration tensor", height, width)]
        where = "the calibration tensor"
    else:
        try:
            items = iter(source)
        except TypeError:
            raise FresnetError(f"calibration= takes a tensor (N, 3, H, W), an iterable of them or a path to a .bin, "
                               f"RecordIO or image folder; got {type(source).__name__}") from None
        batches = [_as_batch(item, f"calibration batch {i}", height, width) for i, item in enumerate(items)]
        where = "the calibration batches"
    batches = _take(batches, limit)
    check_calibration(batches, where)
    return batches


def check_calibration(batches: Sequence[torch.Tensor], where: str = "calibration data") -> None:
    """Refuse a calibration set whose ranges would be wrong for real faces; warn about a weak one.

    Errors: no images, fewer than :data:`MIN_IMAGES`, values in 0..1 rather than 0..255, every image
    blank (all-black, all-white or any one colour), or all images the same. Warnings: fewer than
    :data:`RECOMMENDED_IMAGES`, or more than a quarter of them blank.
    """
    count = sum(int(b.shape[0]) for b in batches)
    if count == 0:
        raise FresnetError(f"{where}: no images to calibrate int8 on; give a few hundred face crops")
    if count < MIN_IMAGES:
        raise FresnetError(f"{where}: {count} image(s) are too few to calibrate int8 (at least {MIN_IMAGES}, "
                           f"a few hundred recommended); the activation ranges of so few faces do not hold for others")
    peak = max(float(b.detach().float().abs().max()) for b in batches)
    if 0 < peak <= 1.0:
        raise FresnetError(f"{where}: pixel values are at most {peak:.3g}; fresnet networks take 0..255 RGB, not "
                           "0..1: multiply the images by 255")
    spread = torch.cat([b.detach().float().flatten(1).std(dim=1) for b in batches])
    blank = int((spread < BLANK_STD).sum())
    if blank == count:
        raise FresnetError(f"{where}: all {count} images are blank (one colour, e.g. all-black); int8 calibrated "
                           "on them would clip every real face; give real face crops")
    first = batches[0][:1].detach().float()
    if all(bool((b.detach().float() - first).abs().max() < 0.5) for b in batches):
        raise FresnetError(f"{where}: all {count} images are the same image; int8 calibration needs varied faces")
    if blank > count // 4:
        warnings.warn(f"{where}: {blank} of {count} images are blank; their ranges dilute the faces' ones",
                      CalibrationWarning, stacklevel=3)
    if count < RECOMMENDED_IMAGES:
        warnings.warn(f"{where}: {count} images; int8 calibration is more reliable with a few hundred "
                      f"({RECOMMENDED_IMAGES} or more)", CalibrationWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------------


def _as_batch(item, where: str, height: int, width: int) -> torch.Tensor:
    if not isinstance(item, torch.Tensor):
        raise FresnetError(f"{where}: expected a tensor (N, 3, H, W), got {type(item).__name__}")
    if item.dim() == 3:
        item = item.unsqueeze(0)
    if item.dim() != 4 or item.shape[1] != 3:
        raise FresnetError(f"{where}: shape {tuple(item.shape)}; calibration images are (N, 3, H, W) RGB")
    if tuple(item.shape[2:]) != (height, width):
        raise FresnetError(f"{where}: images are {item.shape[2]}x{item.shape[3]} but the network takes "
                           f"{height}x{width}; resize them (or pass a path, which is resized for you)")
    if item.is_floating_point() and not bool(torch.isfinite(item).all()):
        raise FresnetError(f"{where}: holds NaN or infinite values")
    return item.detach().float().cpu()


def _take(batches: list[torch.Tensor], limit: int) -> list[torch.Tensor]:
    out, total = [], 0
    for batch in batches:
        if total >= limit:
            break
        out.append(batch[: limit - total])
        total += out[-1].shape[0]
    return out


def _evenly(count: int, limit: int) -> np.ndarray:
    """``min(count, limit)`` indices spread over ``range(count)``: a dataset sorted by identity gives
    many identities, not the first few."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def _read_path(path: Path, limit: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB images from a .bin pack, a RecordIO dataset or an image folder."""
    from fresnet.data.decode import resize_rgb

    if path.suffix == ".bin":
        if not path.is_file():
            raise FresnetError(f"{path}: no such verification pack")
        from fresnet.data.verification_bin import load_bin

        images, _ = load_bin(path, image_size=size)
        return images[_evenly(len(images), limit)]
    if _is_recordio(path):
        from fresnet.data.recordio.dataset import RecordIODataset

        dataset = RecordIODataset(path)
    elif path.is_dir():
        from fresnet.data.image_folder import ImageFolderDataset

        dataset = ImageFolderDataset(path)
    else:
        raise FresnetError(f"{path}: not a calibration source; give a verification .bin, a RecordIO dataset "
                           "(folder with train.rec, or the .rec) or an image folder (one sub-folder per identity)")
    if len(dataset) == 0:
        raise FresnetError(f"{path}: holds no images")
    images = []
    for index in _evenly(len(dataset), limit):
        image = dataset[int(index)][0].permute(1, 2, 0).numpy()  # uint8 (H, W, 3)
        images.append(image if image.shape[:2] == size else resize_rgb(image, *size))
    return np.stack(images)


def _is_recordio(path: Path) -> bool:
    if path.suffix in (".rec", ".idx"):
        return True
    if path.is_dir():
        return any(path.glob("*.rec"))
    return path.with_name(path.name + ".rec").is_file()


def _synthetic(count: int, height: int, width: int, seed: int, batch_size: int) -> list[torch.Tensor]:
    return list(synthetic_faces(count, (height, width), seed=10_000 + seed).split(batch_size))


def synthetic_faces(count: int, size: Sequence[int], seed: int = 0) -> torch.Tensor:
    """``count`` synthetic faces (:class:`fresnet.data.SyntheticFaces`) as float (N, 3, H, W) in 0..255."""
    from fresnet.data.synthetic import SyntheticFaces

    height, width = int(size[0]), int(size[1])
    if height != width:
        raise FresnetError(f"synthetic faces are square; this network takes {height}x{width}: pass calibration= images")
    faces = SyntheticFaces(num_identities=max(1, (count + 1) // 2), images_per_identity=2, seed=seed, size=height)
    pixels = faces.render(list(range(count)))  # uint8 (N, H, W, 3)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().contiguous()
