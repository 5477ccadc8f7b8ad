"""Photographs in, ``(H, W, 3)`` uint8 RGB arrays out: files, PIL images and arrays, all alike.

Files are opened by Pillow with the size in their header checked against ``max_image_pixels``
(:mod:`fresnet.limits`) before a pixel is decoded, and turned upright by their EXIF orientation (as
a phone's gallery shows them; OpenCV's ``imread`` does so too). Every mode becomes RGB: grayscale and
palette images are expanded, an alpha channel is dropped (as ``cv2.imread`` drops it), CMYK is
converted, and 16-bit samples keep their top 8 bits (Pillow's own RGB conversion would clip them).
Arrays are RGB unless ``bgr=True`` says they come from OpenCV.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from fresnet.errors import FresnetError

Photo = Union[str, os.PathLike, np.ndarray, Any]  # a path, an array, or a PIL image


def load_photo(image: Photo, bgr: bool = False, where: str | None = None) -> np.ndarray:
    """``image`` as a contiguous ``(H, W, 3)`` uint8 RGB array (see the module docs)."""
    if isinstance(image, (str, os.PathLike)):
        return read_photo(image)
    if isinstance(image, np.ndarray):
        return _from_array(image, bgr, where or "image array")
    if hasattr(image, "mode") and hasattr(image, "size") and hasattr(image, "convert"):
        if bgr:
            raise FresnetError("bgr=True applies to arrays; a PIL image carries its own mode")
        return _from_pil(image, where or "PIL image")
    raise FresnetError(
        f"{where or 'image'}: expected a file path, a PIL image or a (H, W[, 3|4]) array, got {type(image).__name__}"
    )


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """Decode one photo file (any format Pillow reads), upright and RGB."""
    from fresnet.data.decode import opened_image, read_file_bytes

    where = str(path)
    if not where:
        raise FresnetError("an empty path names no photo")
    if Path(path).is_dir():
        raise FresnetError(f"{where}: is a folder, not a photo")
    data = read_file_bytes(path)
    with opened_image(data, where) as image:
        try:
            return _from_pil(image, where)
        except FresnetError:
            raise
        except Exception as exc:  # noqa: BLE001 -- truncated or corrupt data surface while decoding, not at open
            raise FresnetError(
                f"{where}: cannot decode the image ({type(exc).__name__}: {str(exc)[:200]}); "
                "the file is damaged, truncated or not an image; re-create it"
            ) from None


def _from_pil(image, where: str) -> np.ndarray:
    from PIL import ImageOps

    from fresnet.limits import check

    width, height = image.size
    check("max_image_pixels", int(width) * int(height), f"decoding a {width}x{height} image", where)
    image.load()
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _from_array(np.asarray(image), False, where)
    if mode in ("RGBA", "LA", "PA", "P", "1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La", "I;16S"):
        image = image.convert("RGBA" if mode == "P" and "transparency" in image.info else mode).convert("RGB")
    elif mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _from_array(array: np.ndarray, bgr: bool, where: str) -> np.ndarray:
    from fresnet.limits import check

    x = np.asarray(array)
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
        raise FresnetError(f"{where}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise FresnetError(f"{where}: the image is empty ({x.shape[0]}x{x.shape[1]} pixels)")
    check("max_image_pixels", int(x.shape[0]) * int(x.shape[1]), f"a {x.shape[1]}x{x.shape[0]} image", where)
    if x.dtype == np.uint16:
        x = (x >> 8).astype(np.uint8)  # 16-bit samples: the top 8 bits, as OpenCV's 8-bit conversion
    elif x.dtype in (np.int32, np.uint32) and x.ndim == 2:  # Pillow's 'I' mode (32-bit grey)
        x = (np.clip(x, 0, 65535) >> 8).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise FresnetError(
            f"{where}: pixels of dtype {x.dtype}; give uint8 (0..255) or uint16 samples "
            "(float images: (x * 255).round().astype('uint8') if they are in 0..1)"
        )
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    elif x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    elif x.shape[2] == 4:
        x = x[:, :, :3]  # alpha dropped, as cv2.imread(IMREAD_COLOR) drops it
    if bgr:
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x)
