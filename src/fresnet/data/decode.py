"""Image bytes <-> uint8 RGB arrays, with errors that name the file and record.

Pillow (libjpeg-turbo) is the default decoder: on the reference fixtures it reproduces MXNet's
bundled-OpenCV decode exactly (max difference 0 grey levels). OpenCV is used only when asked for
and installed; it is not a dependency.
"""
from __future__ import annotations

import contextlib
import io
import struct
import warnings
from typing import Callable, Iterator, Optional

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


def _open(data: bytes):
    """``Image.open``: the header only. Pillow warns about images above its own bomb threshold
    (89M pixels); when the ``max_image_pixels`` limit has been raised past it, that limit decides."""
    from fresnet.limits import current

    if Image.MAX_IMAGE_PIXELS is None or current().max_image_pixels <= Image.MAX_IMAGE_PIXELS:
        return Image.open(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


@contextlib.contextmanager
def opened_image(data: bytes, where: str) -> Iterator[Image.Image]:
    """The image, header parsed and its pixels checked against ``max_image_pixels``, nothing decoded
    yet: a few KB of PNG or JPEG can declare gigapixels."""
    from fresnet.limits import check

    if len(data) == 0:
        raise FresnetError(f"{where}: the image is empty (0 bytes); re-create the file")
    try:
        image = _open(data)
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, SyntaxError...
        raise _undecodable(where, exc) from None
    with image:
        width, height = image.size
        check("max_image_pixels", int(width) * int(height), f"decoding a {width}x{height} image", where)
        yield image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def _header_dimensions(data: bytes) -> Optional[tuple[int, int]]:
    """``(width, height)`` of a PNG (its IHDR) or a JPEG (its first start-of-frame marker), read
    directly: ten times faster than Pillow's header parse, which matters for a 500k-image pack.
    None for anything else; the decoder checks the size again when it opens the image."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            pos += 2
            continue
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return None


def image_dimensions(data: bytes, where: str) -> tuple[int, int]:
    """``(width, height)`` from the image header alone, checked like :func:`opened_image`."""
    from fresnet.limits import check

    size = _header_dimensions(data) if len(data) else None
    if size is None:
        with opened_image(data, where) as image:
            return int(image.size[0]), int(image.size[1])
    width, height = size
    check("max_image_pixels", width * height, f"decoding a {width}x{height} image", where)
    return width, height


def _undecodable(where: str, exc: BaseException) -> FresnetError:
    return FresnetError(
        f"{where}: cannot decode the image ({type(exc).__name__}: {str(exc)[:200]}); "
        "the bytes are corrupt or not an image; re-create or remove it, or skip bad images (fresnet train "
        "on_error=skip; the datasets' on_error='skip')"
    )


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

    ``where`` names the source (file, record key, offset) for the error message. The image's size
    is read from its header and checked against ``max_image_pixels`` before any pixel is decoded.
    """
    data = bytes(data)
    try:
        if decoder == "pil":
            with opened_image(data, where) as image:
                decoded = np.asarray(image.convert("RGB"))
        else:
            image_dimensions(data, where)
            decoded = _DECODER_FUNCS[decoder](data)
    except FresnetError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for corrupt data
        raise _undecodable(where, exc) from exc
    if decoded.ndim != 3 or decoded.shape[2] != 3:
        raise FresnetError(f"{where}: decoded to shape {decoded.shape}, expected (H, W, 3)")
    return decoded


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
