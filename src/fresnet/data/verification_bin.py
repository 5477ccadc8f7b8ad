"""InsightFace verification packs (``lfw.bin``, ``cfp_fp.bin``, ...) without MXNet, and safely.

A pack is a pickle of ``(bins, issame_list)``: ``2 * P`` encoded images, where pair ``i`` is
``(bins[2i], bins[2i+1])``, and ``P`` bools. Packs made with Python 2 hold ``str`` entries (read as
bytes); newer ones hold ``bytes`` or numpy uint8 arrays (``small_lfw.bin`` holds ``(n, 1)`` arrays).

Unpickling is code execution in general, so ``load_bin`` uses an unpickler that can only build
bytes, lists, tuples, bools, numbers and plain numeric numpy arrays. Every other global a pickle
names (``os.system``, ``builtins.eval``, ...) is refused before anything is called.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from fresnet.data.decode import decode_image, encode_jpeg, image_dimensions, image_file_bytes, resize_rgb
from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write_bytes, regular_file
from fresnet.limits import check
from fresnet.validate import as_int, describe

PathLike = Union[str, os.PathLike]
PICKLE_PROTOCOL = 4  # readable by every Python 3 InsightFace tool; protocol 2 would need _codecs for bytes

# ---------------------------------------------------------------------------------------------------
# the restricted unpickler


class _RefusedBuild(pickle.UnpicklingError):
    pass


def _refuse_build(name: str):
    def __setstate__(*_state) -> None:
        raise _RefusedBuild(f"the pickle sets attributes (BUILD) on {name}, which a verification pack never does; "
                            "the file is crafted")
    return staticmethod(__setstate__)


class _NDArrayToken:
    """Stands in for ``numpy.ndarray`` so the pickle can name it but never call it directly."""

    __setstate__ = _refuse_build("numpy.ndarray")  # BUILD on the class itself, not on an array


class _Allowed:
    """One allowed global: callable (REDUCE), but BUILD on it (pickle's ``__setstate__`` or
    ``setattr`` of slot state) is refused, so a pickle cannot mutate the reader's own helpers."""

    __slots__ = ("function", "name")

    def __init__(self, function: Callable, name: str):
        self.function, self.name = function, name

    def __call__(self, *args):
        return self.function(*args)

    def __setstate__(self, _state) -> None:
        raise _RefusedBuild(f"the pickle sets attributes (BUILD) on {self.name}, which a verification pack never "
                            "does; the file is crafted")


def _plain_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"array dtype {dtype!r} is not a plain numeric type")
    return dtype


def _safe_dtype(spec, align=False, copy=False) -> np.dtype:
    if isinstance(spec, bytes):  # Python 2 pickles read with encoding='bytes'
        spec = spec.decode("ascii")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"dtype spec {spec!r} is not a type code")
    return _plain_dtype(np.dtype(spec, bool(align), bool(copy)))


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's own _reconstruct, wherever this numpy keeps it


def _safe_reconstruct(subtype, shape, typecode):
    if subtype is not _NDArrayToken:
        raise pickle.UnpicklingError("array subtype is not numpy.ndarray")
    if shape != (0,):  # numpy always pickles (0,) here; anything else would be allocated as declared
        raise pickle.UnpicklingError(f"array placeholder shape {describe(shape)} is not (0,)")
    # The array is created empty (int8 placeholder, as numpy does) and filled by __setstate__,
    # whose dtype can only come from _safe_dtype.
    return _RECONSTRUCT(np.ndarray, shape, typecode)


def _safe_scalar(dtype, data):
    _plain_dtype(dtype)
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar data is not bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _safe_frombuffer(buffer, dtype, shape, order):
    # numpy's pickle protocol 5 path: _frombuffer(PickleBuffer, dtype, shape, order), in-band as bytes.
    _plain_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise pickle.UnpicklingError("numpy buffer is not bytes")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order)


def _safe_latin1_encode(text, encoding="utf-8"):
    # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only as the latin1 bytes trick")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable] = {
    ("numpy", "ndarray"): _NDArrayToken,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("_codecs", "encode"): _safe_latin1_encode,
}
_ALLOWED_GLOBALS = {key: value if isinstance(value, type) else _Allowed(value, ".".join(key))
                    for key, value in _ALLOWED_GLOBALS.items()}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")  # what verification.load_bin falls back to for py2 packs
        self.source = source

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise FresnetError(
                f"{self.source}: refused to load: the pickle asks for '{module}.{name}', which a verification "
                "pack never needs (only bytes, lists, bools and numeric numpy arrays are allowed). The file is "
                "not an InsightFace .bin, or it was crafted to run code when unpickled; do not open it with "
                "pickle. Nothing from it was executed."
            )
        return allowed

    def persistent_load(self, pid):
        raise FresnetError(f"{self.source}: refused to load: the pickle uses persistent ids, which a .bin never has")


def safe_unpickle(data: bytes, source: str):
    """Unpickle ``data`` allowing only what verification packs are made of."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except FresnetError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError... from a damaged or foreign file
        raise FresnetError(
            f"{source}: not a readable InsightFace verification pack ({type(exc).__name__}: {exc}); expected a "
            "pickle of (list of encoded images, list of bools); re-create it with `fresnet make-bin`"
        ) from exc


# ---------------------------------------------------------------------------------------------------
# load / save


def _entry_bytes(entry, index: int, source: str) -> bytes:
    if isinstance(entry, (bytes, bytearray)):
        return bytes(entry)
    if isinstance(entry, np.ndarray) and entry.dtype == np.uint8:
        return entry.tobytes()  # small_lfw.bin stores (n, 1) uint8 column vectors
    raise FresnetError(
        f"{source}: image entry {index} is a {type(entry).__name__}"
        f"{' of dtype ' + str(entry.dtype) if isinstance(entry, np.ndarray) else ''}; "
        "expected encoded image bytes or a uint8 array of them"
    )


def _as_bool(value, index: int, source: str) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise FresnetError(f"{source}: issame entry {index} is {describe(value)}; expected a bool")


def read_bin(path: PathLike) -> tuple[list[bytes], list[bool]]:
    """The encoded images and pair flags of a ``.bin``, validated but not decoded."""
    path = Path(path)
    try:
        with open(regular_file(path, "verification pack"), "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise FresnetError(f"{path}: cannot read the verification pack ({exc.strerror or exc})") from exc
    content = safe_unpickle(data, str(path))
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise FresnetError(
            f"{path}: the pickle holds a {type(content).__name__}, expected a pair (bins, issame_list); "
            "this is not an InsightFace verification pack"
        )
    bins, issame = content
    if isinstance(issame, np.ndarray) and issame.ndim != 1:
        raise FresnetError(f"{path}: issame is a {issame.ndim}-d array of shape {issame.shape}; expected a list "
                           "(or 1-d array) of bools, one per pair; re-create the pack with `fresnet make-bin`")
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise FresnetError(
            f"{path}: expected (list of images, list of bools), got ({type(bins).__name__}, {type(issame).__name__})"
        )
    if len(bins) != 2 * len(issame) or not bins:
        raise FresnetError(
            f"{path}: {len(bins)} images for {len(issame)} pairs; a pack needs exactly two images per pair"
        )
    stored = sum(len(entry) if isinstance(entry, (bytes, bytearray)) else getattr(entry, "nbytes", 0) for entry in bins)
    if stored > len(data):
        # a pickle can name one bytes object many times (its memo): 186 KB of references to one
        # JPEG decode to gigabytes. Every image of a real pack is stored in full.
        raise FresnetError(
            f"{path}: the pack names {len(bins)} images holding {stored:,} bytes, but the file has only {len(data):,}: "
            "its entries repeat shared data, which InsightFace packs never do; the file is crafted or damaged; "
            "re-create it with `fresnet make-bin`"
        )
    images = [_entry_bytes(entry, i, str(path)) for i, entry in enumerate(bins)]
    flags = [_as_bool(value, i, str(path)) for i, value in enumerate(issame)]
    return images, flags


def check_pack_pixels(encoded: Sequence[bytes], source: str) -> int:
    """Read every image's dimensions from its header, each within ``max_image_pixels`` and all
    together within ``max_pack_pixels`` and ``max_pixels_per_byte`` of the encoded bytes, before
    anything is decoded; returns the total."""
    total = 0
    for index, data in enumerate(encoded):
        width, height = image_dimensions(data, f"{source}: image {index} (pair {index // 2})")
        total += width * height
    what = f"decoding the {len(encoded)} images of the pack"
    check("max_pack_pixels", total, f"{what} (pixels in all)", source)
    stored = sum(len(data) for data in encoded)
    check("max_pixels_per_byte", -(-total // max(stored, 1)),
          f"{what} ({total:,} pixels from {stored:,} bytes: pixels per byte)", source)
    return total


def load_bin(
    path: PathLike, image_size: Optional[tuple[int, int]] = None, decoder: str = "pil"
) -> tuple[np.ndarray, list[bool]]:
    """Load a verification pack: ``(images, issame)``.

    ``images`` is uint8 RGB of shape ``(2P, H, W, 3)``; pair ``i`` is ``images[2i], images[2i+1]``.
    Images are resized (bilinear) to ``image_size`` = (H, W) when given; otherwise they must all
    share one size. Flipped copies, which the original adds, are left to the evaluator.
    """
    encoded, issame = read_bin(path)
    check_pack_pixels(encoded, str(path))
    if image_size is not None:
        height, width = (as_int(v, "image_size", f"load_bin({path})", minimum=1) for v in image_size)
        check("max_pack_pixels", len(encoded) * height * width, f"the {len(encoded)} images at {height}x{width}",
              str(path))
    images: Optional[np.ndarray] = None  # filled in place: no second copy of the pack
    for index, data in enumerate(encoded):
        image = decode_image(data, f"{path}: image {index} (pair {index // 2})", decoder)
        if image_size is not None:
            image = resize_rgb(image, height, width)
        elif images is not None and image.shape != images.shape[1:]:
            raise FresnetError(
                f"{path}: image {index} is {image.shape[1]}x{image.shape[0]} but image 0 is "
                f"{images.shape[2]}x{images.shape[1]}; pass image_size=(H, W) to resize them"
            )
        if images is None:
            images = np.empty((len(encoded),) + image.shape, dtype=np.uint8)
        images[index] = image
    return images, issame


def save_bin(path: PathLike, images: Union[np.ndarray, Sequence], issame: Sequence[bool], quality: int = 95,
             verify: bool = True) -> Path:
    """Write a verification pack atomically.

    ``images`` holds ``2 * len(issame)`` entries, each encoded bytes (stored as they are) or a
    (H, W, 3) uint8 RGB array (JPEG-encoded). The file loads with InsightFace's ``load_bin``, and
    with :func:`load_bin`: what it would refuse is refused here (``verify`` decodes each encoded
    entry once; the pixel limits of :mod:`fresnet.limits` apply).
    """
    issame = [_as_bool(v, i, str(path)) for i, v in enumerate(issame)]
    if len(images) != 2 * len(issame) or not issame:
        raise FresnetError(f"{path}: {len(images)} images for {len(issame)} pairs; give two images per pair")
    bins = []
    for index, image in enumerate(images):
        if isinstance(image, (bytes, bytearray)):
            if verify:
                decode_image(bytes(image), f"{path}: image {index}")
            bins.append(bytes(image))
        else:
            array = np.asarray(image)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
                raise FresnetError(f"image {index}: expected (H, W, 3) uint8 RGB, got {array.dtype} {array.shape}")
            bins.append(encode_jpeg(array, quality))
    if verify:
        check_pack_pixels(bins, str(path))
    path = Path(path)
    atomic_write_bytes(path, pickle.dumps((bins, issame), protocol=PICKLE_PROTOCOL))
    return path


# ---------------------------------------------------------------------------------------------------
# building a pack from image pairs

_TRUE = {"1", "true", "same", "yes"}
_FALSE = {"0", "false", "diff", "different", "no"}


def _lfw_path(root: Path, name: str, number: str) -> Path:
    return root / name / f"{name}_{int(number):04d}.jpg"


def read_pairs_list(
    list_path: PathLike, root: Optional[PathLike] = None, fmt: str = "auto"
) -> list[tuple[Path, Path, bool]]:
    """Read image pairs.

    ``simple``: ``path1 path2 issame`` per line (tab or spaces; issame 1/0/true/false); relative
    paths are resolved against ``root`` (default: the list's folder).
    ``lfw``: LFW's ``pairs.txt`` (optional ``sets pairs`` first line, then ``name n1 n2`` for a match
    and ``name1 n1 name2 n2`` for a mismatch, images at ``root/name/name_0001.jpg``).
    ``auto`` picks ``lfw`` when a line has four fields or the first line is two integers.
    """
    list_path = Path(list_path)
    root = Path(root) if root is not None else list_path.parent
    lines = []
    with open(regular_file(list_path, "pairs list"), encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
                lines.append((line_no, [f.strip() for f in fields]))
    if not lines:
        raise FresnetError(f"{list_path}: the pairs list is empty")
    if fmt == "auto":
        first = lines[0][1]
        lfw_header = len(first) == 2 and all(f.isdigit() for f in first)
        fmt = "lfw" if lfw_header or any(len(fields) == 4 for _, fields in lines) else "simple"
    if fmt not in ("simple", "lfw"):
        raise FresnetError(f"unknown pairs format {fmt!r}; choose one of auto, simple, lfw")
    if fmt == "lfw" and len(lines[0][1]) == 2:
        lines = lines[1:]
    pairs = []
    for line_no, fields in lines:
        try:
            if fmt == "simple":
                flag = fields[2].lower()
                if len(fields) != 3 or flag not in _TRUE | _FALSE:
                    raise ValueError
                a, b, same = root / fields[0], root / fields[1], flag in _TRUE
            elif len(fields) == 3:
                a, b, same = _lfw_path(root, fields[0], fields[1]), _lfw_path(root, fields[0], fields[2]), True
            elif len(fields) == 4:
                a, b, same = _lfw_path(root, fields[0], fields[1]), _lfw_path(root, fields[2], fields[3]), False
            else:
                raise ValueError
        except (ValueError, IndexError):
            expected = "'path1 path2 issame'" if fmt == "simple" else "'name n1 n2' or 'name1 n1 name2 n2'"
            raise FresnetError(f"{list_path}: line {line_no} is {' '.join(fields)!r}; expected {expected}") from None
        for image in (a, b):
            if not image.is_file():
                raise FresnetError(f"{list_path}: line {line_no}: image {image} does not exist")
        pairs.append((a, b, same))
    return pairs


def make_bin(
    pairs: Sequence[tuple[Path, Path, bool]],
    out_path: PathLike,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> Path:
    """Build a ``.bin`` from image-file pairs; JPEG files are stored as they are."""
    files = [path for a, b, _ in pairs for path in (a, b)]
    iterator = progress(files) if progress is not None else files
    images = [image_file_bytes(path, verify=True) for path in iterator]
    return save_bin(out_path, images, [same for _, _, same in pairs], verify=False)  # decoded just above
