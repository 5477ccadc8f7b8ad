"""An InsightFace ``train.rec`` as a map-style dataset: the identity layout on top of the record format."""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from fresnet.data.decode import SkipPolicy, check_decoder, decode_image
from fresnet.data.recordio.format import (
    IRHeader,
    RecFile,
    image_label,
    key_range,
    read_index,
    read_property,
    resolve_paths,
    scan_index,
    unpack_record,
)
from fresnet.errors import FresnetError
from fresnet.limits import check

PathLike = Union[str, os.PathLike]


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
        if not os.path.lexists(self.paths.idx):  # a FIFO or device named train.idx is refused, not skipped
            warnings.warn(
                f"{self.paths.rec}: no index file {self.paths.idx.name}; scanning the whole .rec to build one "
                f"(slow for big files). Save one with fresnet.data.write_index('{self.paths.rec}').",
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
        first, end = key_range(header, f"{self.paths.rec}: record key 0", "header record")
        # Every range is checked against the records the index actually holds before it is walked
        # or expanded: a 60-byte header can name 2**40 identities.
        if end - first > len(keys):
            raise FresnetError(
                f"{self.paths.rec}: the header record names {end - first:,} identities "
                f"(keys [{first}, {end})), but the "
                f"index holds only {len(keys):,} records; the file is corrupt or the .idx belongs to another file"
            )
        check("max_identities", end - first, "the header record's identities", str(self.paths.rec))
        ranges = []
        for key in range(first, end):
            id_header, _ = self._read(key)
            if id_header.flag < 2:
                raise FresnetError(
                    f"{self.paths.rec}: record key {key} should be an identity record (header range "
                    f"[{first}, {end})) but has flag {id_header.flag}; the file is corrupt"
                )
            ranges.append(key_range(id_header, f"{self.paths.rec}: identity record key {key}", "identity record"))
        self._check_identity_ranges(ranges, first, len(keys))
        return ranges

    def _check_identity_ranges(self, ranges: list[tuple[int, int]], first_identity: int, num_keys: int) -> None:
        """Image keys of each identity lie before the identity records, and no two identities share
        an image (RecBuilder writes them as consecutive runs of keys 1..n)."""
        total = 0
        previous_end, previous_key = 1, None
        for offset, (a, b) in enumerate(sorted(ranges)):
            key = first_identity + offset
            if a < 1 or b > first_identity:
                raise FresnetError(
                    f"{self.paths.rec}: an identity record holds image keys [{a}, {b}), outside the image records "
                    f"[1, {first_identity}) that precede the identity records; the file is corrupt"
                )
            if a < previous_end and previous_key is not None:
                raise FresnetError(
                    f"{self.paths.rec}: two identity records share image keys ([{a}, {b}) overlaps a range ending at "
                    f"{previous_end}); one image would get two labels; the file is corrupt"
                )
            previous_end, previous_key = b, key
            total += b - a
        if total > num_keys:
            raise FresnetError(
                f"{self.paths.rec}: the identity records name {total:,} images, but the index holds only "
                f"{num_keys:,} records; the file is corrupt or the .idx belongs to another file"
            )

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


