"""Image bytes <-> uint8 RGB arrays, with errors that name the file and record.

Pillow (libjpeg-turbo) is the default decoder: on the reference fixtures it reproduces MXNet's
bundled-OpenCV decode exactly (max difference 0 grey levels). OpenCV is used only when asked for
and installed; it is not a dependency.
"""
from __future__ import annotations

import io
import warnings
from typing import Callable

import numpy as np
from PIL import Image

from fresnet.errors import FresnetError

DECODERS = ("pil", "cv2")
JPEG_QUALITY = 95  # what mx.recordio.pack_img uses by default, so re-encoded images match the original tools


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _decode_pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def image_dimensions(data: bytes, where: str) -> tuple[int, int]:
    """``(width, height)`` from the image header alone (nothing is decoded), checked against the
    ``max_image_pixels`` limit: a few KB of PNG or JPEG can declare gigapixels."""
    from fresnet.limits import check

    if len(data) == 0:
        raise FresnetError(f"{where}: the image is empty (0 bytes); re-create the file")
    try:
        with warnings.catch_warnings():  # Pillow warns above 89M pixels; the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as image:
                width, height = image.size
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, SyntaxError...
        raise FresnetError(
            f"{where}: cannot decode the image ({type(exc).__name__}: {str(exc)[:200]}); "
            "the bytes are corrupt or not an image; re-create it, or load with on_error='skip'"
        ) from None
    check("max_image_pixels", int(width) * int(height), f"decoding a {width}x{height} image", where)
    return int(width), int(height)


def _decode_cv2(data: bytes) -> np.ndarray:
    import cv2  # optional: only imported when the caller asked for it

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cv2.imdecode returned None")
    return np.ascontiguousarray(image[:, :, ::-1])  # BGR -> RGB


_DECODER_FUNCS: dict[str, Callable[[bytes], np.ndarray]] = {"pil": _decode_pil, "cv2": _decode_cv2}


def check_decoder(name: str) -> str:
    """Validate a decoder name early, so a missing OpenCV fails at construction, not in a worker."""
    if name not in _DECODER_FUNCS:
        raise FresnetError(f"unknown image decoder {name!r}; choose one of {', '.join(DECODERS)}")
    if name == "cv2":
        try:
            import cv2  # noqa: F401
        except ImportError:
            raise FresnetError(
                "decoder 'cv2' needs OpenCV, which is not installed; "
                "use decoder='pil' or `pip install opencv-python-headless`"
            ) from None
    return name


def decode_image(data: bytes, where: str, decoder: str = "pil") -> np.ndarray:
    """Decode image bytes to a (H, W, 3) uint8 RGB array.

    ``where`` names the source (file, record key, offset) for the error message.
    """
    image_dimensions(data, where)  # before any pixel is allocated
    try:
        image = _DECODER_FUNCS[decoder](bytes(data))
    except FresnetError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for corrupt data
        raise FresnetError(
            f"{where}: cannot decode the image ({type(exc).__name__}: {exc}); "
            "the bytes are corrupt or not an image; re-create it, or load with on_error='skip'"
        ) from exc
    if image.ndim != 3 or image.shape[2] != 3:
        raise FresnetError(f"{where}: decoded to shape {image.shape}, expected (H, W, 3)")
    return image


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode a (H, W, 3) uint8 RGB array as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def read_file_bytes(path) -> bytes:
    from fresnet.ioutil import regular_file

    try:
        with open(regular_file(path, "image file"), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise FresnetError(f"{path}: cannot read the image ({exc.strerror or exc})") from exc


def read_image_file(path, decoder: str = "pil") -> np.ndarray:
    return decode_image(read_file_bytes(path), str(path), decoder)


def image_file_bytes(path, verify: bool = True) -> bytes:
    """The bytes to store for an image file: JPEG files as they are, anything else re-encoded to JPEG.

    Storing the original JPEG bytes is what InsightFace's builder does (the payload sha256 equals the
    source file's), and it avoids a lossy second encode.
    """
    data = read_file_bytes(path)
    if is_jpeg(data):
        if verify:
            decode_image(data, str(path))
        return data
    return encode_jpeg(decode_image(data, str(path)))


class SkipPolicy:
    """What a dataset does with a bad sample: raise, or count it and serve the next good one.

    Replacing (rather than dropping) keeps batch sizes and the sampler's length valid. The bad mask
    lives in shared memory so DataLoader workers' findings are counted in the main process.
    """

    MODES = ("raise", "skip")
    MAX_TRIES = 64
    MAX_WARNINGS = 5

    def __init__(self, mode: str, num_samples: int):
        if mode not in self.MODES:
            raise FresnetError(f"on_error must be one of {self.MODES}, got {mode!r}")
        import torch

        self.mode = mode
        self.bad = torch.zeros(num_samples, dtype=torch.bool)
        if mode == "skip":
            self.bad.share_memory_()
        self.warned = 0

    def load(self, load_one: Callable[[int], tuple], index: int, num_samples: int, what: str) -> tuple:
        for attempt in range(self.MAX_TRIES):
            candidate = (index + attempt) % num_samples
            try:
                return load_one(candidate)
            except FresnetError as exc:
                if self.mode == "raise":
                    raise
                if not self.bad[candidate]:
                    self.bad[candidate] = True
                    self.warn(str(exc))
        raise FresnetError(
            f"{what}: {self.MAX_TRIES} consecutive bad samples from index {index}; "
            "the data is too damaged to skip over; repair or rebuild it"
        )

    def warn(self, message: str) -> None:
        import warnings

        self.warned += 1
        if self.warned <= self.MAX_WARNINGS:
            warnings.warn(f"skipping bad sample: {message}", stacklevel=4)

    @property
    def count(self) -> int:
        return int(self.bad.sum())


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (H, W, 3) uint8 array; a no-op when the size already matches."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    resized = Image.fromarray(image, "RGB").resize((width, height), Image.BILINEAR)
    return np.asarray(resized)
