"""The RecordIO file format: dmlc framing, ``mx.recordio`` records, the ``.idx`` index and the
``property`` file (see :mod:`fresnet.data.recordio` for the layers).
"""
from __future__ import annotations

import contextlib
import os
import re
import struct
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write, regular_file
from fresnet.limits import current, raise_hint
from fresnet.validate import as_int, describe

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
    limit = current().max_identities
    if value >= limit:
        raise FresnetError(
            f"{where}: label {value:g} is above the limit max_identities={limit:,} (float32 labels are exact only "
            f"below 2**24); the record is corrupt; if it is trusted, raise the limit: {raise_hint('max_identities')}"
        )
    return int(value)


def key_range(header: IRHeader, where: str, what: str) -> tuple[int, int]:
    """The half-open key range ``[label[0], label[1])`` of a header or identity record, as integers:
    finite, whole, ``0 <= first <= end``, and within ``max_identities`` (keys are float32 too)."""
    values = [float(v) for v in np.asarray(header.label, dtype=np.float64).ravel()[:2]]
    limit = current().max_identities
    if len(values) < 2 or not all(np.isfinite(v) and v == int(v) and 0 <= v <= limit for v in values):
        raise FresnetError(
            f"{where}: the {what} holds {describe(values)}, not a range [first, end) of record keys between 0 and "
            f"{limit:,}; the file is corrupt"
        )
    first, end = int(values[0]), int(values[1])
    if first > end:
        raise FresnetError(
            f"{where}: the {what} holds the range [{first}, {end}), which is reversed; the file is corrupt"
        )
    return first, end


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
        if not self.path.exists():
            raise FresnetError(
                f"{self.path}: no such RecordIO file; pass the folder holding train.rec or the .rec path"
            )
        regular_file(self.path, "RecordIO file")
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
        parts, pos, first, total = [], offset, True, 0
        limit = current().max_record_bytes
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
            total += length
            if total > limit:
                raise FresnetError(
                    f"{self.path}: {where}: the record at offset {offset} is over {limit:,} bytes (max_record_bytes) "
                    f"by offset {pos}; a face record is a few KB, so the file is corrupt; if it is trusted, raise the "
                    f"limit: {raise_hint('max_record_bytes')}"
                )
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


MIN_RECORD_BYTES = _FRAME.size + IRHEADER.size  # a frame holding an empty IRHeader record
_MORE_PROBLEMS = "(more index problems)"


_INDEX_TEXT = re.compile(r"[0-9 \t\r\n]*")
_LONG_NUMBER = re.compile(r"[0-9]{19}")
INDEX_LINE_BYTES = 40  # two 18-digit numbers, a tab, a newline: the longest plausible line


def read_index(paths: RecPaths, rec_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parse ``.idx`` lines ``key\\toffset``; return keys, offsets and problems: offsets past the end,
    keys listed twice, and offsets shared by two keys (a copy of one record, served twice).
    The entries in problems are dropped from keys and offsets (the later line of a duplicate)."""
    problems: list[str] = []

    def problem(message: str) -> None:
        problems.append(message if len(problems) < 100 else _MORE_PROBLEMS)  # the count stays exact

    path = regular_file(paths.idx, "RecordIO index")
    max_entries = rec_size // MIN_RECORD_BYTES
    if os.path.getsize(path) > (max_entries + 1) * INDEX_LINE_BYTES + 4096:
        raise FresnetError(
            f"{paths.idx}: {os.path.getsize(path):,} bytes, more than the index of {paths.rec} ({rec_size:,} bytes, at "
            f"most {max_entries:,} records) can take; the .idx belongs to another file or is corrupt; delete it to "
            "rebuild it by scanning"
        )
    with open(path, "rb") as handle:
        text = handle.read().decode("ascii", errors="replace")
    parsed = _parse_index_fast(text)
    if parsed is None:
        keys, offsets, lines = _parse_index_lines(text, paths)
    else:
        keys, offsets = parsed
        lines = np.arange(1, len(keys) + 1, dtype=np.int64)
    if len(keys) > max_entries:
        raise FresnetError(
            f"{paths.idx}: {len(keys):,} entries, more than the {max_entries:,} "
            f"records {paths.rec} ({rec_size:,} bytes) "
            "can hold; the .idx belongs to another file or is corrupt; delete it to rebuild it by scanning"
        )
    keep = (offsets >= 0) & (offsets + _FRAME.size <= rec_size)
    for index in np.flatnonzero(~keep).tolist():
        problem(
            f"{paths.idx}: line {int(lines[index])}: record key {int(keys[index])} "
            f"points at offset {int(offsets[index])}, "
            f"past the end of {paths.rec} ({rec_size} bytes); the .rec is truncated or the .idx belongs to another "
            "file; re-copy the .rec, delete the .idx to rebuild it, or load with on_error='skip'"
        )
    for values, what in ((keys, "key"), (offsets, "offset")):
        for later, first in _repeats(values, keep):
            keep[later] = False
            key, line_no, first_line = int(keys[later]), int(lines[later]), int(lines[first])
            if what == "key":
                problem(f"{paths.idx}: line {line_no}: record key {key} is listed twice (first on line {first_line}); "
                        "the index is corrupt; delete it to rebuild it by scanning, or load with on_error='skip'")
            else:
                problem(f"{paths.idx}: line {line_no}: record key {key} points at offset {int(offsets[later])}, like "
                        f"line {first_line}: one record would be served as two samples; the index is corrupt; delete "
                        "it to rebuild it by scanning, or load with on_error='skip'")
    return keys[keep].copy(), offsets[keep].copy(), problems


def _parse_index_fast(text: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Keys and offsets parsed in C, when the text is only digits and whitespace, no number is too
    long for int64, and every line holds two numbers; else None (the careful path explains)."""
    if not _INDEX_TEXT.fullmatch(text) or _LONG_NUMBER.search(text):
        return None
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ") if text.strip() else np.zeros(0, np.int64)
        except (ValueError, DeprecationWarning):
            return None
    if values.size != 2 * lines:  # blank lines, or lines of one or three fields
        return None
    return values[0::2].copy(), values[1::2].copy()


def _parse_index_lines(text: str, paths: RecPaths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line by line, naming the first line that is not ``key<TAB>offset``."""
    keys, offsets, lines = array("q"), array("q"), array("q")
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2 or len(fields[0]) > 18 or len(fields[1]) > 18:
                raise ValueError
            key, offset = int(fields[0]), int(fields[1])
            if key < 0:
                raise ValueError
        except ValueError:
            raise FresnetError(
                f"{paths.idx}: line {line_no} is {describe(line.strip())}, expected '<key>\\t<offset>' (two "
                "non-negative integers); the index is corrupt; delete it to rebuild it by scanning the .rec"
            ) from None
        keys.append(key)
        offsets.append(offset)
        lines.append(line_no)
    return tuple(np.frombuffer(a, dtype=np.int64).copy() if len(a) else np.zeros(0, np.int64)
                 for a in (keys, offsets, lines))  # type: ignore[return-value]


def _repeats(values: np.ndarray, keep: np.ndarray) -> list[tuple[int, int]]:
    """``(index, index of its first occurrence)`` for every repeated value among the kept entries,
    in line order (vectorised: a 5M-line index takes well under a second)."""
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(values[candidates], kind="stable")]
    sorted_values = values[order]
    repeated = np.flatnonzero(sorted_values[1:] == sorted_values[:-1]) + 1
    if repeated.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    first_of = order[starts[np.searchsorted(starts, repeated, side="right") - 1]]
    pairs = sorted(zip(order[repeated].tolist(), first_of.tolist()))
    return pairs


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


PROPERTY_MAX_BYTES = 4096
MAX_IMAGE_SIDE = 1 << 16


def read_property(path: Path) -> Optional[tuple[int, int, int]]:
    """``property`` holds ``num_classes,height,width``; ``None`` when the file is absent."""
    if not os.path.lexists(path):
        return None
    with open(regular_file(path, "RecordIO property file"), "rb") as handle:
        raw = handle.read(PROPERTY_MAX_BYTES + 1)
    text = raw[:PROPERTY_MAX_BYTES].decode("ascii", errors="replace").strip()
    fields = text.split(",")
    if len(raw) > PROPERTY_MAX_BYTES or len(fields) != 3:
        raise FresnetError(
            f"{path}: expected 'num_classes,height,width' (e.g. '10,112,112'), found {describe(text)}; fix or delete it"
        )
    fix = "the file holds 'num_classes,height,width', e.g. '10,112,112'; fix or delete it"
    classes = as_int(fields[0], "num_classes", str(path), minimum=1, maximum=current().max_identities, fix=fix)
    height = as_int(fields[1], "height", str(path), minimum=1, maximum=MAX_IMAGE_SIDE, fix=fix)
    width = as_int(fields[2], "width", str(path), minimum=1, maximum=MAX_IMAGE_SIDE, fix=fix)
    return classes, height, width

