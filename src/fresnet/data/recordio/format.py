"""InsightFace RecordIO training sets (``train.rec``, ``train.idx``, ``property``) without MXNet.

Three layers, bottom up:

* dmlc framing: ``[magic][cflag<<29 | length][payload][pad to 4]``, where a payload that contains the
  magic number at a 4-byte-aligned position is split into chunks flagged 1 (first), 2 (middle) and
  3 (last), and the magic itself is dropped from the chunks (the reader puts it back).
* ``mx.recordio.pack``: an ``IRHeader`` (``<IfQQ``: flag, label, id, id2), then ``flag`` float32 labels
  when the label is an array, then the image bytes.
* InsightFace's layout: record 0 is a header whose labels are the half-open range of identity keys;
  each identity record's labels are the half-open range of its image keys; record 0 is written last.
  Files without that header (shuffled ``im2rec`` output) are plain lists of image records.

``RecordIODataset`` reads it with ``os.pread`` on a file descriptor opened lazily in each process, so
it is safe in DataLoader workers and random access is one or two reads. ``RecordIOWriter`` writes it
byte-for-byte as InsightFace's ``RecBuilder`` does, into temp files renamed only when complete.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fresnet.data.decode import SkipPolicy, check_decoder, decode_image, image_file_bytes
from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write

PathLike = Union[str, os.PathLike]

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrecord
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
IRHEADER = struct.Struct("<IfQQ")  # flag, label, id, id2 -- mx.recordio's _IR_FORMAT

REC_NAME, IDX_NAME, PROPERTY_NAME = "train.rec", "train.idx", "property"


# --------------------------------------------------------------------------------------------------
# record payloads: mx.recordio.pack / unpack


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: Union[float, np.ndarray]
    id: int
    id2: int


def pack_record(label: Union[float, Sequence[float]], payload: bytes, id: int, id2: int = 0) -> bytes:
    """``mx.recordio.pack``: a scalar label goes in the header; a sequence sets ``flag = len`` and
    follows the header as float32, with the header's label written as 0.0."""
    if np.ndim(label) == 0:
        return IRHEADER.pack(0, float(label), id, id2) + payload
    labels = np.asarray(label, dtype="<f4").ravel()
    return IRHEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + payload


def unpack_record(record: bytes, where: str) -> tuple[IRHeader, bytes]:
    """Split a record payload into its ``IRHeader`` and the data after it (``mx.recordio.unpack``)."""
    if len(record) < IRHEADER.size:
        raise FresnetError(
            f"{where}: record is {len(record)} bytes, shorter than the {IRHEADER.size}-byte IRHeader; "
            "the file is corrupt or is not an InsightFace/MXNet image record file"
        )
    flag, label, rec_id, id2 = IRHEADER.unpack_from(record)
    data = record[IRHEADER.size:]
    if flag > 0:
        if 4 * flag > len(data):
            raise FresnetError(
                f"{where}: IRHeader says {flag} float labels but only {len(data)} bytes follow; "
                "the record is corrupt"
            )
        label = np.frombuffer(data, dtype="<f4", count=flag)
        data = data[4 * flag:]
    return IRHeader(flag, label, rec_id, id2), data


def image_label(header: IRHeader, where: str) -> int:
    """The training label of an image record: ``header.label``, or ``label[0]`` for array labels."""
    value = float(header.label[0]) if header.flag > 0 else float(header.label)
    if not np.isfinite(value) or value < 0 or value != int(value):
        raise FresnetError(f"{where}: label {value!r} is not a non-negative integer; the record is corrupt")
    return int(value)


# --------------------------------------------------------------------------------------------------
# dmlc framing


def frame_record(payload: bytes) -> bytes:
    """Frame one record exactly as dmlc's ``RecordIOWriter::WriteRecord`` does.

    The magic number at an aligned position inside the payload would be mistaken for a record start,
    so dmlc cuts the payload there and drops those 4 bytes; the reader re-inserts them.
    """
    if len(payload) > _LENGTH_MASK:
        raise FresnetError(f"a RecordIO record holds at most {_LENGTH_MASK} bytes; got {len(payload)}")
    lower_align = len(payload) & ~3
    parts, start = [], 0
    pos = payload.find(MAGIC_BYTES)
    while 0 <= pos and pos + 4 <= lower_align:
        if pos % 4 == 0:
            cflag = 1 if start == 0 else 2
            parts += [_FRAME.pack(MAGIC, (cflag << _LENGTH_BITS) | (pos - start)), payload[start:pos]]
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    cflag = 3 if start else 0
    tail = payload[start:]
    parts += [_FRAME.pack(MAGIC, (cflag << _LENGTH_BITS) | len(tail)), tail, b"\0" * (-len(payload) % 4)]
    return b"".join(parts)


class RecFile:
    """Random access to the frames of one ``.rec``, with a file descriptor per process.

    The descriptor is opened on first use and re-opened after a fork, and it is not pickled, so each
    DataLoader worker gets its own. ``os.pread`` keeps no file position, so reads never interfere.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FresnetError(f"{self.path}: no such RecordIO file; pass the folder holding train.rec or the .rec path")
        self.size = self.path.stat().st_size
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd"] = state["_pid"] = None
        return state

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        return self._fd

    def pread(self, size: int, offset: int) -> bytes:
        fd = self._descriptor()
        if hasattr(os, "pread"):
            return os.pread(fd, size, offset)
        os.lseek(fd, offset, os.SEEK_SET)  # Windows: no pread, but each process has its own descriptor
        return os.read(fd, size)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def read(self, offset: int, where: str) -> tuple[bytes, int]:
        """Read the record starting at ``offset``; return its payload and the offset after it."""
        parts, pos, first = [], offset, True
        while True:
            head = self.pread(_FRAME.size, pos)
            if len(head) < _FRAME.size:
                raise FresnetError(
                    f"{self.path}: {where}: the file ends at byte {self.size}, inside the record header at offset "
                    f"{pos}; the .rec is truncated (an interrupted copy?); re-copy it or load with on_error='skip'"
                )
            magic, lrecord = _FRAME.unpack(head)
            if magic != MAGIC:
                raise FresnetError(
                    f"{self.path}: {where}: bad magic 0x{magic:08x} at offset {pos} (expected 0x{MAGIC:08x}); "
                    "the .idx does not belong to this .rec or the file is corrupt; delete the .idx to rebuild "
                    "it by scanning, or load with on_error='skip'"
                )
            cflag, length = lrecord >> _LENGTH_BITS, lrecord & _LENGTH_MASK
            if first and cflag not in (0, 1):
                raise FresnetError(
                    f"{self.path}: {where}: offset {pos} is the continuation (cflag {cflag}) of a split record, "
                    "not a record start; the .idx does not match this .rec; delete it to rebuild by scanning"
                )
            if not first and cflag not in (2, 3):
                raise FresnetError(
                    f"{self.path}: {where}: a split record continues at offset {pos} with cflag {cflag} "
                    "(expected 2 or 3); the file is corrupt"
                )
            data = self.pread(length, pos + _FRAME.size)
            if len(data) < length:
                raise FresnetError(
                    f"{self.path}: {where}: record at offset {pos} claims {length} bytes but the file ends at "
                    f"byte {self.size}; the .rec is truncated (an interrupted copy?); re-copy it or load with "
                    "on_error='skip'"
                )
            parts.append(data)
            pos += _FRAME.size + ((length + 3) & ~3)
            if cflag in (0, 3):
                return b"".join(parts), pos
            parts.append(MAGIC_BYTES)
            first = False


# --------------------------------------------------------------------------------------------------
# file names, the index and the property file


@dataclass(frozen=True)
class RecPaths:
    rec: Path
    idx: Path
    property: Path


def resolve_paths(path: PathLike) -> RecPaths:
    """Accept a folder (holding ``train.rec``), a ``.rec``/``.idx`` path, or a prefix without suffix."""
    path = Path(path)
    if path.is_dir():
        rec = path / REC_NAME
        if not rec.exists():
            candidates = sorted(path.glob("*.rec"))
            if len(candidates) != 1:
                raise FresnetError(
                    f"{path}: expected a RecordIO dataset folder with {REC_NAME}; found "
                    f"{len(candidates)} .rec files; pass the .rec path itself"
                )
            rec = candidates[0]
    elif path.suffix in (".rec", ".idx"):
        rec = path.with_suffix(".rec")
    else:
        rec = path.with_name(path.name + ".rec")
    return RecPaths(rec=rec, idx=rec.with_suffix(".idx"), property=rec.parent / PROPERTY_NAME)


def output_paths(out_prefix: PathLike) -> RecPaths:
    """Where the writer puts its three files: ``OUT/train.*`` for a folder, ``PREFIX.*`` otherwise."""
    text = os.fspath(out_prefix)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        path = path / "train"
    elif path.suffix in (".rec", ".idx"):
        path = path.with_suffix("")
    rec = path.with_name(path.name + ".rec")
    return RecPaths(rec=rec, idx=rec.with_suffix(".idx"), property=rec.parent / PROPERTY_NAME)


def read_index(paths: RecPaths, rec_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parse ``.idx`` lines ``key\\toffset``; return keys, offsets and problems with offsets past the end."""
    keys, offsets, problems = [], [], []
    with open(paths.idx, "r", encoding="ascii", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise FresnetError(
                    f"{paths.idx}: line {line_no} is {line.strip()!r}, expected '<key>\\t<offset>'; "
                    "the index is corrupt; delete it to rebuild it by scanning the .rec"
                ) from None
            if offset < 0 or offset + _FRAME.size > rec_size:
                problems.append(
                    f"{paths.idx}: line {line_no}: record key {key} points at offset {offset}, past the end of "
                    f"{paths.rec} ({rec_size} bytes); the .rec is truncated or the .idx belongs to another "
                    "file; re-copy the .rec, delete the .idx to rebuild it, or load with on_error='skip'"
                )
                continue
            keys.append(key)
            offsets.append(offset)
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64), problems


def scan_index(rec: RecFile, on_error: str = "raise") -> tuple[np.ndarray, np.ndarray, int]:
    """Walk a ``.rec`` front to back to find every record; return keys, offsets and the bad count.

    Keys are the IRHeader ids when they are unique (InsightFace and im2rec write ``id = key``),
    otherwise the record's position in the file. In skip mode, damage is stepped over by searching
    for the next aligned magic number.
    """
    offsets, ids, bad, pos = [], [], 0, 0
    while pos < rec.size:
        try:
            record, end = rec.read(pos, f"scanning record {len(offsets)}")
            header, _ = unpack_record(record, f"{rec.path}: record at offset {pos}")
        except FresnetError:
            if on_error == "raise":
                raise
            bad += 1
            pos = _next_magic(rec, pos + 4)
            continue
        offsets.append(pos)
        ids.append(header.id)
        pos = end
    offsets_arr = np.asarray(offsets, dtype=np.int64)
    ids_arr = np.asarray(ids, dtype=np.int64)
    keys = ids_arr if len(np.unique(ids_arr)) == len(ids_arr) else np.arange(len(offsets), dtype=np.int64)
    return keys, offsets_arr, bad


def _next_magic(rec: RecFile, start: int) -> int:
    pos = (start + 3) & ~3
    chunk = 1 << 20
    while pos < rec.size:
        data = rec.pread(chunk + 3, pos)
        found = data.find(MAGIC_BYTES)
        while found != -1 and (pos + found) % 4:
            found = data.find(MAGIC_BYTES, found + 1)
        if found != -1:
            return pos + found
        pos += chunk
    return rec.size


def write_index(rec_path: PathLike, idx_path: Optional[PathLike] = None) -> Path:
    """Scan a ``.rec`` and write its ``.idx`` atomically (for files shipped without one)."""
    rec = RecFile(rec_path)
    keys, offsets, _ = scan_index(rec)
    target = Path(idx_path) if idx_path else rec.path.with_suffix(".idx")
    with atomic_write(target, "w") as handle:
        handle.writelines(f"{k}\t{o}\n" for k, o in zip(keys.tolist(), offsets.tolist()))
    return target


def read_property(path: Path) -> Optional[tuple[int, int, int]]:
    """``property`` holds ``num_classes,height,width``; ``None`` when the file is absent."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        values = tuple(int(v) for v in text.split(","))
        if len(values) != 3:
            raise ValueError
    except ValueError:
        raise FresnetError(
            f"{path}: expected 'num_classes,height,width' (e.g. '10,112,112'), found {text!r}; fix or delete it"
        ) from None
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# the dataset


class RecordIODataset(Dataset):
    """An InsightFace ``train.rec`` as a map-style dataset: ``ds[i] -> (image, label)``.

    Args:
        path: the dataset folder, the ``.rec`` path, or its prefix (``data/train``).
        transform: applied to the uint8 ``(3, H, W)`` RGB tensor; ``None`` returns it as is.
        on_error: ``"raise"`` (default) stops at the first bad record with an error naming the file,
            record key and offset. ``"skip"`` counts it in ``bad_records`` (shared by all DataLoader
            workers) and returns the next good sample instead, so batches keep their size and the
            sampler's length stays valid; index entries past the end of the file are dropped at load.
        decoder: ``"pil"`` (default) or ``"cv2"`` when OpenCV is installed.

    Attributes: ``labels`` (int64 array, one per sample), ``num_classes``, ``image_size`` ((H, W) from
    ``property`` or ``None``), ``keys`` (the record key of each sample), ``has_identity_header``.
    """

    def __init__(
        self,
        path: PathLike,
        transform: Optional[Callable] = None,
        on_error: str = "raise",
        decoder: str = "pil",
    ):
        self._load_warnings = SkipPolicy(on_error, 0)  # validates on_error; warns about load-time drops
        self.paths = resolve_paths(path)
        self.transform = transform
        self.on_error = on_error
        self.decoder = check_decoder(decoder)
        self._rec = RecFile(self.paths.rec)
        self._bad_at_load = 0

        keys, offsets = self._load_index()
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]

        ranges = self._identity_ranges(keys)
        self.has_identity_header = ranges is not None
        if ranges is not None:
            self.keys, self.labels = self._samples_from_identities(ranges)
        else:
            self.keys, self.labels = self._samples_from_headers(keys)
        self._offsets, found = self._lookup(self.keys)
        if not found.all():
            missing = self.keys[~found]
            if on_error == "raise":
                raise FresnetError(
                    f"{self.paths.idx}: image keys {missing[:5].tolist()} (of {len(missing)}) named by the "
                    "identity records are not in the index; the .idx is incomplete or belongs to another "
                    "file; delete it to rebuild it by scanning, or load with on_error='skip'"
                )
            self._bad_at_load += len(missing)
            self.keys, self.labels, self._offsets = self.keys[found], self.labels[found], self._offsets[found]
        if len(self.keys) == 0:
            raise FresnetError(f"{self.paths.rec}: no readable image records; the dataset is empty")
        self._policy = SkipPolicy(on_error, len(self.keys))

        prop = read_property(self.paths.property)
        max_label = int(self.labels.max())
        if prop is not None and max_label >= prop[0]:
            raise FresnetError(
                f"{self.paths.property}: says {prop[0]} classes but the records use label {max_label}; "
                "the property file belongs to another dataset; fix or delete it"
            )
        self.num_classes = prop[0] if prop else max_label + 1
        self.image_size = (prop[1], prop[2]) if prop else None

    # ---- loading the index and the identity structure

    def _load_index(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.paths.idx.is_file():
            warnings.warn(
                f"{self.paths.rec}: no index file {self.paths.idx.name}; scanning the whole .rec to build one "
                f"(slow for big files). Save one with fresnet.data.recordio.format.write_index('{self.paths.rec}').",
                stacklevel=3,
            )
            keys, offsets, bad = scan_index(self._rec, self.on_error)
            self._bad_at_load += bad
            return keys, offsets
        keys, offsets, problems = read_index(self.paths, self._rec.size)
        if problems:
            if self.on_error == "raise":
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise FresnetError(problems[0] + more)
            self._bad_at_load += len(problems)
            self._load_warnings.warn(problems[0])
        return keys, offsets

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offsets of ``keys`` and a mask of the keys found in the index."""
        if len(self._sorted_keys) == 0:
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        # 'right' - 1 picks the last entry for a duplicated key, as MXIndexedRecordIO's dict does.
        pos = np.searchsorted(self._sorted_keys, keys, side="right") - 1
        found = (pos >= 0) & (self._sorted_keys[np.maximum(pos, 0)] == keys)
        return self._sorted_offsets[np.maximum(pos, 0)], found

    def _read(self, key: int) -> tuple[IRHeader, bytes]:
        offsets, found = self._lookup(np.asarray([key], dtype=np.int64))
        if not found[0]:
            raise FresnetError(
                f"{self.paths.idx}: record key {key} is not in the index; the .idx is incomplete or belongs "
                "to another file; delete it to rebuild it by scanning the .rec"
            )
        offset = int(offsets[0])
        where = f"record key {key} at offset {offset}"
        record, _ = self._rec.read(offset, where)
        return unpack_record(record, f"{self.paths.rec}: {where}")

    def _identity_ranges(self, keys: np.ndarray) -> Optional[list[tuple[int, int]]]:
        """InsightFace's header: record 0 with ``flag > 0`` and an empty payload (FaceImageIter only
        checks the flag; the empty payload also tells it apart from an image with array labels)."""
        if not (keys == 0).any():
            return None
        header, data = self._read(0)
        if header.flag < 2 or data:
            return None
        first, end = int(header.label[0]), int(header.label[1])
        ranges = []
        for key in range(first, end):
            id_header, _ = self._read(key)
            if id_header.flag < 2:
                raise FresnetError(
                    f"{self.paths.rec}: record key {key} should be an identity record (header range "
                    f"[{first}, {end})) but has flag {id_header.flag}; the file is corrupt"
                )
            a, b = int(id_header.label[0]), int(id_header.label[1])
            if a > b:
                raise FresnetError(
                    f"{self.paths.rec}: identity record key {key} holds the range [{a}, {b}), which is "
                    "reversed; the file is corrupt"
                )
            ranges.append((a, b))
        return ranges

    def _samples_from_identities(self, ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        # Each identity's label is read from its first good image, so labels match what the image
        # records say (FaceImageIter's source of truth) at the cost of one read per identity.
        keys, labels = [], []
        for a, b in ranges:
            label = None
            for key in range(a, b):
                try:
                    label = image_label(self._read(key)[0], f"{self.paths.rec}: record key {key}")
                    break
                except FresnetError:
                    if self.on_error == "raise":
                        raise
            if label is None:  # every image of this identity is bad (skip mode): drop it
                self._bad_at_load += b - a
                continue
            keys.append(np.arange(a, b, dtype=np.int64))
            labels.append(np.full(b - a, label, dtype=np.int64))
        if not keys:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(keys), np.concatenate(labels)

    def _samples_from_headers(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # No identity header (e.g. a shuffled im2rec file): every record is an image, in .idx order
        # like FaceImageIter's `imgrec.keys`, and the label has to come from each record's header.
        good_keys, labels = [], []
        for key in keys.tolist():
            try:
                labels.append(image_label(self._read(key)[0], f"{self.paths.rec}: record key {key}"))
                good_keys.append(key)
            except FresnetError as exc:
                if self.on_error == "raise":
                    raise
                self._bad_at_load += 1
                self._load_warnings.warn(str(exc))
        return np.asarray(good_keys, dtype=np.int64), np.asarray(labels, dtype=np.int64)

    # ---- sample access

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def bad_records(self) -> int:
        """Bad records met so far: dropped at load plus replaced while sampling (all workers)."""
        return self._bad_at_load + self._policy.count

    def read_raw(self, index: int) -> tuple[bytes, int]:
        """The stored image bytes and label of sample ``index``, without decoding."""
        key, offset = int(self.keys[index]), int(self._offsets[index])
        where = f"record key {key} at offset {offset}"
        record, _ = self._rec.read(offset, where)
        header, data = unpack_record(record, f"{self.paths.rec}: {where}")
        return data, image_label(header, f"{self.paths.rec}: {where}")

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        data, label = self.read_raw(index)
        where = f"{self.paths.rec}: record key {int(self.keys[index])} at offset {int(self._offsets[index])}"
        image = decode_image(data, where, self.decoder)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, label = self._policy.load(self._load, index % len(self), len(self), str(self.paths.rec))
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def close(self) -> None:
        self._rec.close()

    def __repr__(self) -> str:
        return (
            f"RecordIODataset({str(self.paths.rec)!r}, samples={len(self)}, num_classes={self.num_classes}, "
            f"identity_header={self.has_identity_header}, on_error={self.on_error!r})"
        )


# --------------------------------------------------------------------------------------------------
# the writer


class RecordIOWriter:
    """Write an InsightFace training set exactly as ``RecBuilder`` does, atomically.

    Images must arrive grouped by identity with non-decreasing labels. Keys are 1..n for images,
    then one identity record per label (``[first_key, end_key)``), then record 0 ``[first_identity,
    end_identity)`` with ``id2 = 1``, written last; ``property`` is ``num_classes,H,W``.

    All three files go to temp names and are renamed only by ``close()``: ``.rec`` first, then
    ``.idx``, then ``property``. A stale ``.idx`` is deleted before the renames, so after a crash at
    any point an ``.idx`` that exists always matches the ``.rec`` beside it.
    Use as a context manager; an exception inside the block discards everything.
    """

    def __init__(self, out_prefix: PathLike, image_size: tuple[int, int] = (112, 112), overwrite: bool = False):
        self.paths = output_paths(out_prefix)
        existing = [p for p in (self.paths.rec, self.paths.idx) if p.exists()]
        if existing and not overwrite:
            raise FresnetError(f"{existing[0]} already exists; choose another output or pass overwrite=True (--overwrite)")
        self.image_size = tuple(int(v) for v in image_size)
        self._stack = contextlib.ExitStack()
        # Entered in this order so that the stack, unwinding last-in first-out, renames .rec first.
        self._property = self._stack.enter_context(atomic_write(self.paths.property, "w"))
        self._idx = self._stack.enter_context(atomic_write(self.paths.idx, "w"))
        self._rec = self._stack.enter_context(atomic_write(self.paths.rec, "wb"))
        self._position = 0
        self._next_key = 1
        self._identities: list[tuple[int, int, int]] = []  # (label, first key, end key)
        self._closed = False

    def _write(self, key: int, payload: bytes) -> None:
        frame = frame_record(payload)
        self._rec.write(frame)
        self._idx.write(f"{key}\t{self._position}\n")
        self._position += len(frame)

    def add_image(self, data: bytes, label: int) -> int:
        """Append one encoded image of identity ``label``; return its record key."""
        if self._closed:
            raise FresnetError("this RecordIOWriter is closed")
        label = int(label)
        if label < 0:
            raise FresnetError(f"label {label} is negative; labels must be integers >= 0")
        key = self._next_key
        if self._identities and label < self._identities[-1][0]:
            raise FresnetError(
                f"label {label} arrived after label {self._identities[-1][0]}; add images grouped by identity "
                "in ascending label order (the identity records need contiguous key ranges)"
            )
        self._write(key, pack_record(float(label), data, id=key, id2=0))
        if self._identities and self._identities[-1][0] == label:
            first = self._identities[-1][1]
            self._identities[-1] = (label, first, key + 1)
        else:
            self._identities.append((label, key, key + 1))
        self._next_key += 1
        return key

    def close(self) -> RecPaths:
        """Write the identity records, header record and property, then rename everything into place."""
        if self._closed:
            return self.paths
        if not self._identities:
            self.abort()
            raise FresnetError(f"{self.paths.rec}: no images were added; nothing to write")
        first_identity = self._next_key
        for offset, (_, first, end) in enumerate(self._identities):
            key = first_identity + offset
            self._write(key, pack_record([first, end], b"", id=key, id2=0))
        end_identity = first_identity + len(self._identities)
        self._write(0, pack_record([first_identity, end_identity], b"", id=0, id2=1))
        max_label = self._identities[-1][0]
        self._property.write("%d,%d,%d\n" % (max_label + 1, self.image_size[0], self.image_size[1]))
        self.paths.idx.unlink(missing_ok=True)
        self._closed = True
        self._stack.close()
        return self.paths

    def abort(self) -> None:
        """Discard the temp files; nothing under the final names is touched."""
        if not self._closed:
            self._closed = True
            self._stack.__exit__(FresnetError, FresnetError("aborted"), None)

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def num_images(self) -> int:
        return self._next_key - 1


# --------------------------------------------------------------------------------------------------
# packing an image folder or list


def pack_images(
    items: Sequence[tuple[Path, int]],
    out_prefix: PathLike,
    image_size: Optional[tuple[int, int]] = None,
    overwrite: bool = False,
    verify: bool = True,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> RecPaths:
    """Pack ``(image_path, label)`` items into ``.rec``/``.idx``/``property``.

    Items are grouped by label (ascending, keeping their order within a label). JPEG files are
    stored byte for byte, other formats are re-encoded as JPEG (quality 95, like ``pack_img``).
    ``image_size`` defaults to the first image's size; ``verify`` decodes every image first so a
    corrupt file fails the pack with its name instead of failing training later.
    """
    if not items:
        raise FresnetError("no images to pack")
    ordered = sorted(items, key=lambda item: item[1])
    payloads = (image_file_bytes(path, verify=verify) for path, _ in ordered)
    iterator = zip(ordered, payloads)
    if progress is not None:
        iterator = progress(iterator)
    writer = None
    try:
        for (path, label), data in iterator:
            if writer is None:
                if image_size is None:
                    with Image.open(io.BytesIO(data)) as first:
                        image_size = (first.height, first.width)
                writer = RecordIOWriter(out_prefix, image_size=image_size, overwrite=overwrite)
            writer.add_image(data, label)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer.close()
