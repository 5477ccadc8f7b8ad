"""MXNet ``.params`` files (``mx.nd.save`` / ``mx.model.save_checkpoint``) in pure numpy.

The container, as written by ``NDArray::Save(stream, arrays, names)`` (all little-endian)::

    uint64 0x112 (kMXAPINDArrayListMagic), uint64 reserved
    uint64 count, then ``count`` arrays
    uint64 name count (0 for an unnamed list), then per name: uint64 length, bytes

and each dense array, in one of three layouts:

* **v2** (MXNet >= 1.0, what this module writes): uint32 0xF993FAC9, int32 storage type (0 = dense),
  shape, context, type flag, data;
* **v1** (legacy): uint32 0xF993FAC8, shape, context, type flag, data;
* **v0** (oldest legacy): no magic -- the first uint32 *is* ndim, followed by ndim uint32 dims,
  then context, type flag, data.

where shape = int32 ndim + ndim int64 dims (v1/v2), context = int32 dev_type + int32 dev_id, and the
type flag is mshadow's (0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64).
A zero-dimensional shape is a "none" array and ends right after its shape.

Checkpoints name their arrays ``arg:<name>`` (parameters) and ``aux:<name>`` (BatchNorm moving stats).
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import BinaryIO, Mapping, Optional, Sequence, Union

import numpy as np

from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write, regular_file
from fresnet.limits import check, product

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA  # numpy-shape semantics (MXNet 2.x / npx.set_np); same layout as v2 for dense arrays
LAYOUTS = ("v2", "v1", "v0")

# mshadow type flags
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
}
TYPE_FLAGS = {dtype.newbyteorder("="): flag for flag, dtype in DTYPES.items()}
DEFAULT_STORAGE = 0
STORAGE_NAMES = {1: "row_sparse", 2: "csr"}
CPU = (1, 0)
MAX_NDIM = 32  # MXNet's own limit is far lower; anything above is corruption
MAX_NAME_BYTES = 1 << 20

PathLike = Union[str, os.PathLike]


class _Reader:
    """Sequential little-endian reader that knows its byte offset and names the file in every error."""

    def __init__(self, handle: BinaryIO, path: str, size: int):
        self.handle = handle
        self.path = path
        self.size = size
        self.offset = 0

    def fail(self, what: str, offset: Optional[int] = None) -> FresnetError:
        at = self.offset if offset is None else offset
        return FresnetError(
            f"{self.path}: corrupt or unsupported MXNet .params file at byte offset {at}: {what}; "
            "re-save it with mx.nd.save / mx.model.save_checkpoint or check the download"
        )

    def read(self, count: int, what: str) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise FresnetError(
                f"{self.path}: truncated MXNet .params file at byte offset {self.offset} while reading {what} "
                f"(needed {count} bytes, {len(data)} left of {self.size}); the file is incomplete -- "
                "re-download or re-save it"
            )
        self.offset += count
        return data

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))

    def read_into(self, array: np.ndarray, what: str) -> None:
        if array.nbytes == 0:  # a dimension of 0: nothing to read (memoryview cannot cast it)
            return
        view = memoryview(array).cast("B")
        got = self.handle.readinto(view)
        if got != view.nbytes:
            raise FresnetError(
                f"{self.path}: truncated MXNet .params file at byte offset {self.offset} while reading {what} "
                f"(needed {view.nbytes} bytes, {got} left of {self.size}); the file is incomplete -- "
                "re-download or re-save it"
            )
        self.offset += got

    @property
    def remaining(self) -> int:
        return self.size - self.offset


def _read_shape64(reader: _Reader, what: str) -> tuple[int, ...]:
    start = reader.offset
    (ndim,) = reader.unpack("i", f"the ndim of {what}")
    if ndim == -1:  # v3 "unknown shape": a none array
        return ()
    if not 0 <= ndim <= MAX_NDIM:
        raise reader.fail(f"{what} has ndim {ndim}", start)
    dims = reader.unpack(f"{ndim}q", f"the shape of {what}") if ndim else ()
    if any(d < 0 for d in dims):
        raise reader.fail(f"{what} has a negative dimension in shape {dims}", start)
    return tuple(dims)


def _read_array(reader: _Reader, index: int, count: int) -> tuple[Optional[np.ndarray], str]:
    """One NDArray; returns (array or None for a 'none' array, layout name)."""
    what = f"array {index} of {count}"
    start = reader.offset
    (magic,) = reader.unpack("I", f"the magic of {what}")
    if magic in (V2_MAGIC, V3_MAGIC):
        layout = "v2" if magic == V2_MAGIC else "v3"
        (stype,) = reader.unpack("i", f"the storage type of {what}")
        if stype != DEFAULT_STORAGE:
            kind = STORAGE_NAMES.get(stype, f"unknown storage type {stype}")
            raise reader.fail(
                f"{what} is a sparse ({kind}) NDArray; only dense arrays are supported -- convert it with "
                "arr.tostype('default') before saving",
                start + 4,
            )
        shape = _read_shape64(reader, what)
    elif magic == V1_MAGIC:
        layout = "v1"
        shape = _read_shape64(reader, what)
    else:
        layout = "v0"
        ndim = magic  # the oldest layout has no magic: the first word is ndim
        if ndim > MAX_NDIM:
            raise reader.fail(
                f"{what} starts with 0x{magic:08X}, which is neither an NDArray magic "
                f"(0x{V2_MAGIC:08X}, 0x{V1_MAGIC:08X}) nor a plausible legacy ndim",
                start,
            )
        shape = reader.unpack(f"{ndim}I", f"the legacy shape of {what}") if ndim else ()
    if len(shape) == 0:
        return None, layout
    ctx_at = reader.offset
    dev_type, _dev_id = reader.unpack("ii", f"the context of {what}")
    if dev_type not in (1, 2, 3, 5):
        raise reader.fail(
            f"{what} has device type {dev_type} (expected 1 cpu, 2 gpu, 3 cpu_pinned, 5 cpu_shared)", ctx_at
        )
    flag_at = reader.offset
    (type_flag,) = reader.unpack("i", f"the dtype of {what}")
    if type_flag not in DTYPES:
        raise reader.fail(f"{what} has unsupported type flag {type_flag} (supported: {sorted(DTYPES)})", flag_at)
    dtype = DTYPES[type_flag]
    nbytes = product(shape) * dtype.itemsize  # Python ints: an int64 product wraps past this check
    # the nonzero dimensions too: numpy refuses (0, 2**62) ("array is too big") though it holds nothing
    check("max_tensor_bytes", max(nbytes, product(d for d in shape if d) * dtype.itemsize),
          f"{what} with shape {tuple(shape)}", f"{reader.path} (byte offset {start})")
    if nbytes > reader.remaining:
        raise FresnetError(
            f"{reader.path}: truncated MXNet .params file at byte offset {reader.offset}: {what} with shape "
            f"{tuple(shape)} and dtype {dtype.name} needs {nbytes} bytes, only {reader.remaining} left; "
            "the file is incomplete -- re-download or re-save it"
        )
    array = np.empty(shape, dtype=dtype)
    reader.read_into(array, f"the data of {what}")
    return array.astype(dtype.newbyteorder("="), copy=False), layout


def read_ndarray_list(path: PathLike) -> tuple[list[Optional[np.ndarray]], list[str]]:
    """Read any ``mx.nd.save`` file: ``(arrays, names)``; ``names`` is empty for an unnamed list.

    Arrays come back as native-endian numpy arrays of their stored dtype (``None`` for a 'none' array).
    """
    path = Path(path)
    try:
        handle = open(regular_file(path, "MXNet .params file"), "rb")
    except FileNotFoundError:
        raise FresnetError(f"{path}: no such file (expected an MXNet .params file)") from None
    except OSError as exc:
        raise FresnetError(f"{path}: cannot open ({exc.strerror})") from None
    with handle:
        reader = _Reader(handle, str(path), os.fstat(handle.fileno()).st_size)
        header, _reserved = reader.unpack("QQ", "the file header")
        if header != LIST_MAGIC:
            raise reader.fail(
                f"file magic is 0x{header:X}, expected 0x{LIST_MAGIC:X} (an mx.nd.save list); "
                "is this really an MXNet .params file?",
                0,
            )
        count_at = reader.offset
        (count,) = reader.unpack("Q", "the array count")
        # every array needs at least its 4-byte magic/ndim word
        if count * 4 > reader.remaining:
            raise FresnetError(
                f"{path}: truncated or corrupt MXNet .params file at byte offset {count_at}: the header announces "
                f"{count} arrays, which cannot fit in the {reader.remaining} bytes left; re-download or re-save it"
            )
        arrays = [_read_array(reader, i, count)[0] for i in range(count)]
        names_at = reader.offset
        (name_count,) = reader.unpack("Q", "the name count")
        if name_count not in (0, count):
            raise reader.fail(f"{name_count} names for {count} arrays (must be 0 or {count})", names_at)
        names = []
        for i in range(name_count):
            length_at = reader.offset
            (length,) = reader.unpack("Q", f"the length of name {i}")
            if length > MAX_NAME_BYTES:
                raise reader.fail(f"name {i} claims {length} bytes", length_at)
            raw = reader.read(length, f"name {i}")
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise reader.fail(f"name {i} is not valid UTF-8: {raw[:40]!r}", length_at + 8) from None
        if reader.remaining:
            raise reader.fail(f"{reader.remaining} unexpected trailing bytes after the name list")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise FresnetError(f"{path}: duplicate array names {dupes[:5]}; the file is corrupt")
    return arrays, names


def read_params(path: PathLike) -> dict[str, np.ndarray]:
    """Read a named ``.params`` file into ``{name: array}``, keeping ``arg:``/``aux:`` prefixes as stored.

    An unnamed list (``mx.nd.save(f, [a, b])``) is returned with keys ``'0'``, ``'1'``, ...
    (use :func:`read_ndarray_list` to tell the two apart).
    """
    arrays, names = read_ndarray_list(path)
    if not names:
        names = [str(i) for i in range(len(arrays))]
    out: dict[str, np.ndarray] = {}
    for name, array in zip(names, arrays):
        if array is None:
            raise FresnetError(f"{path}: array {name!r} is an empty (none) NDArray; a checkpoint cannot hold one")
        out[name] = array
    return out


def split_arg_aux(params: Mapping[str, np.ndarray], path: PathLike = "<params>") -> tuple[dict, dict]:
    """``{'arg:x': ..., 'aux:y': ...}`` -> ``(arg_params, aux_params)`` like ``mx.model.load_checkpoint``.

    Names without a prefix (``mx.nd.save`` of a plain dict, Gluon ``save_parameters``) are sorted by
    their suffix: ``*_moving_mean`` / ``*_moving_var`` are aux, everything else is arg.
    """
    arg, aux = {}, {}
    for key, value in params.items():
        kind, sep, name = key.partition(":")
        if not sep:
            kind, name = ("aux" if key.endswith(("_moving_mean", "_moving_var")) else "arg"), key
        if kind not in ("arg", "aux") or not name:
            raise FresnetError(f"{path}: array name {key!r} must look like 'arg:<name>' or 'aux:<name>'")
        target = arg if kind == "arg" else aux
        if name in target:
            raise FresnetError(f"{path}: {kind} array {name!r} appears twice")
        target[name] = value
    return arg, aux


def _type_flag(array: np.ndarray, name: str) -> int:
    flag = TYPE_FLAGS.get(array.dtype.newbyteorder("="))
    if flag is None:
        supported = ", ".join(d.name for d in DTYPES.values())
        raise FresnetError(f"array {name!r} has dtype {array.dtype}, which MXNet cannot store; use one of {supported}")
    return flag


def encode_ndarray_list(
    arrays: Union[Mapping[str, np.ndarray], Sequence[np.ndarray]], layout: str = "v2"
) -> bytes:
    """The bytes of an ``mx.nd.save`` file. A mapping is saved with names, a sequence without."""
    out = io.BytesIO()
    _write_ndarray_list(out, arrays, layout)
    return out.getvalue()


def _write_ndarray_list(out: BinaryIO, arrays, layout: str) -> None:
    if layout not in LAYOUTS:
        raise FresnetError(f"unknown .params layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if isinstance(arrays, Mapping):
        names = [str(k) for k in arrays]
        values = list(arrays.values())
    else:
        names, values = [], list(arrays)
    out.write(struct.pack("<QQQ", LIST_MAGIC, 0, len(values)))
    for i, value in enumerate(values):
        label = names[i] if names else str(i)
        array = np.asarray(value)
        if array.ndim == 0:
            array = array.reshape(1)  # MXNet has no 0-d dense arrays; a 0-d shape means "none"
        flag = _type_flag(array, label)
        if layout == "v2":
            out.write(struct.pack("<Ii", V2_MAGIC, DEFAULT_STORAGE))
        if layout in ("v2", "v1"):
            if layout == "v1":
                out.write(struct.pack("<I", V1_MAGIC))
            out.write(struct.pack(f"<i{array.ndim}q", array.ndim, *array.shape))
        else:
            if any(d >= 1 << 32 for d in array.shape):
                raise FresnetError(f"array {label!r} is too large for the legacy v0 layout")
            out.write(struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape))
        out.write(struct.pack("<iii", *CPU, flag))
        out.write(np.ascontiguousarray(array, dtype=DTYPES[flag]).tobytes())
    out.write(struct.pack("<Q", len(names)))
    for name in names:
        raw = name.encode("utf-8")
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)


def write_params(
    path: PathLike, arrays: Union[Mapping[str, np.ndarray], Sequence[np.ndarray]], layout: str = "v2"
) -> None:
    """Write an ``mx.nd.save``-compatible file atomically (v2 layout by default, as MXNet 1.x writes).

    Pass ``{'arg:conv0_weight': ..., 'aux:bn0_moving_mean': ...}`` for a checkpoint, or a list for an
    unnamed file. Arrays keep their dtype (float32, float16, float64, and the integer types).
    """
    with atomic_write(path, "wb") as handle:
        _write_ndarray_list(handle, arrays, layout)
