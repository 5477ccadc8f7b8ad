"""Writing InsightFace training sets: :class:`RecordIOWriter` (``RecBuilder``'s layout, atomically) and
:func:`pack_images` (an image folder or list packed with it)."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from PIL import Image

from fresnet.data.decode import image_file_bytes
from fresnet.data.recordio.format import (
    IRHEADER,
    MAX_IMAGE_SIDE,
    PathLike,
    RecPaths,
    frame_record,
    output_paths,
    pack_record,
)
from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write
from fresnet.limits import check, current
from fresnet.validate import as_int, as_int_tuple

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
        others = sorted(p.name for p in self.paths.rec.parent.glob("*.rec") if p != self.paths.rec)
        if others and os.path.lexists(self.paths.property):
            # one property file per folder (InsightFace's format): it is theirs, not only this prefix's
            raise FresnetError(
                f"{self.paths.property} belongs to {', '.join(others[:3])} too (InsightFace's format keeps one "
                f"property file per folder), so writing {self.paths.rec.name} there would break it; pack into "
                "its own folder"
            )
        existing = [p for p in (self.paths.rec, self.paths.idx, self.paths.property) if os.path.lexists(p)]
        if existing and not overwrite:
            raise FresnetError(
                f"{existing[0]} already exists; choose another output or pass overwrite=True (--overwrite)"
            )
        fix = "give the (H, W) of the images, e.g. (112, 112)"
        self.image_size = as_int_tuple(image_size, "image_size", str(self.paths.property), minimum=1,
                                       maximum=MAX_IMAGE_SIDE, length=2, fix=fix)
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
        # what the reader would refuse is refused here: labels and keys are float32 in the file
        limit = current().max_identities
        label = as_int(
            label,
            "label",
            str(self.paths.rec),
            minimum=0,
            maximum=limit - 1,
            fix=f"labels are integers from 0 to {limit - 1:,} (max_identities; float32 is exact below 2**24)",
        )
        key = self._next_key
        if key + len(self._identities) + 2 > limit:
            raise FresnetError(
                f"{self.paths.rec}: a RecordIO set holds at most {limit:,} records "
                f"(max_identities: its keys are float32 "
                "labels of the identity records); split the data into several sets"
            )
        check("max_record_bytes", len(data) + IRHEADER.size, f"image record {key}", str(self.paths.rec))
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
        self._property.write(f"{max_label + 1},{self.image_size[0]},{self.image_size[1]}\n")
        self.paths.idx.unlink(missing_ok=True)
        self._closed = True
        self._stack.close()
        return self.paths

    def abort(self) -> None:
        """Discard the temp files; nothing under the final names is touched."""
        if not self._closed:
            self._closed = True
            self._stack.__exit__(FresnetError, FresnetError("aborted"), None)

    def __enter__(self) -> RecordIOWriter:
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
        for (_path, label), data in iterator:
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
