"""Face images on disk: one folder per identity, or a list file of ``path label`` lines.

The listing functions are shared by ``ImageFolderDataset`` and the RecordIO packer, so a folder
packed into a ``.rec`` gets the same labels as the folder read directly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from fresnet.data.decode import SkipPolicy, check_decoder, read_image_file
from fresnet.errors import FresnetError
from fresnet.ioutil import regular_file
from fresnet.validate import describe

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_identity_folders(root: PathLike, on_error: str = "raise") -> tuple[list[tuple[Path, int]], list[str]]:
    """``root/<identity>/<image>`` -> ``[(path, label)]`` and class names; labels follow sorted names.

    An identity folder without images is an error (it would silently shift every later label if it
    were dropped unnoticed); with ``on_error="skip"`` it is dropped with a warning instead.
    """
    root = Path(root)
    if not root.is_dir():
        raise FresnetError(f"{root}: not a folder; expected one sub-folder of images per identity")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = _images_in(root)
        hint = (
            f" (it holds {len(loose)} loose images; move each identity's images into its own folder)" if loose else ""
        )
        raise FresnetError(f"{root}: no identity folders found{hint}; expected root/<identity>/<image>.jpg")
    items, classes = [], []
    for folder in folders:
        images = _images_in(folder)
        if not images:
            message = (
                f"{folder}: identity folder holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
            if on_error == "raise":
                raise FresnetError(message)
            SkipPolicy(on_error, 0).warn(message)
            continue
        label = len(classes)
        classes.append(folder.name)
        items.extend((path, label) for path in images)
    if not items:
        raise FresnetError(f"{root}: every identity folder is empty; there are no images to use")
    return items, classes


def _parse_list_line(fields: list[str]) -> tuple[str, str]:
    """Return (path, label) from one list line.

    Accepted: ``path label`` (label.txt), InsightFace ``.lst`` ``aligned path label [...]``, and
    MXNet ``im2rec`` ``index label path``.
    """
    if len(fields) == 2:
        return fields[0], fields[1]
    if len(fields) >= 3 and fields[0] in ("0", "1") and fields[2].lstrip("-").isdigit():
        return fields[1], fields[2]
    if len(fields) == 3:
        try:
            float(fields[1])
            return fields[2], fields[1]
        except ValueError:
            pass
    raise ValueError


def read_image_list(list_path: PathLike) -> list[tuple[Path, int]]:
    """Read a list file; relative image paths are taken relative to the list file's folder."""
    list_path = Path(list_path)
    items = []
    with open(regular_file(list_path, "image list"), encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            try:
                path_text, label_text = _parse_list_line([f.strip() for f in fields])
                label = int(float(label_text))
                if label < 0 or float(label_text) != label:
                    raise ValueError
            except (ValueError, OverflowError):
                raise FresnetError(
                    f"{list_path}: line {line_no} is {describe(line)}; expected 'path<TAB>label' with an integer "
                    "label >= 0 (or InsightFace '1<TAB>path<TAB>label')"
                ) from None
            path = Path(path_text)
            if not path.is_absolute():
                path = list_path.parent / path
            if not path.is_file():
                raise FresnetError(f"{list_path}: line {line_no}: image {path} does not exist")
            items.append((path, label))
    if not items:
        raise FresnetError(f"{list_path}: the list names no images")
    return items


def list_image_source(source: PathLike) -> tuple[list[tuple[Path, int]], Optional[list[str]]]:
    """A folder-per-identity tree or a list file -> items and (for folders) class names."""
    source = Path(source)
    if source.is_dir():
        return list_identity_folders(source)
    if source.exists():
        return read_image_list(source), None
    raise FresnetError(f"{source}: no such folder or list file")


class ImageFolderDataset(Dataset):
    """Images in ``root/<identity>/``: ``ds[i] -> (uint8 (3, H, W) RGB tensor, label)``.

    Labels are the positions of the identity folders in sorted order (``classes`` holds the names).
    ``on_error`` works as in ``RecordIODataset``: ``"skip"`` counts an undecodable image in
    ``bad_records`` and serves the next good sample instead.
    """

    def __init__(
        self,
        root: PathLike,
        transform: Optional[Callable] = None,
        on_error: str = "raise",
        decoder: str = "pil",
    ):
        self._policy = SkipPolicy(on_error, 0)  # validate on_error before touching the disk
        self.root = Path(root)
        items, self.classes = list_identity_folders(self.root, on_error)
        self.paths = [path for path, _ in items]
        self.labels = np.asarray([label for _, label in items], dtype=np.int64)
        self.num_classes = len(self.classes)
        self.transform = transform
        self.on_error = on_error
        self.decoder = check_decoder(decoder)
        self._policy = SkipPolicy(on_error, len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def bad_records(self) -> int:
        return self._policy.count

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        image = read_image_file(self.paths[index], self.decoder)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), int(self.labels[index])

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, label = self._policy.load(self._load, index % len(self), len(self), str(self.root))
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, samples={len(self)}, num_classes={self.num_classes})"
