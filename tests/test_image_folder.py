"""Image folders and list files: labels, the shared sample interface, and bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fresnet.data import ImageFolderDataset, RecordIODataset
from fresnet.data.decode import encode_jpeg
from fresnet.data.image_folder import read_image_list
from fresnet.data.recordio.writer import pack_images
from fresnet.errors import FresnetError


def _image(seed: int, size: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (1, 1, 3)) + np.arange(size)[:, None, None] * 2, 0, 255).astype(
        np.uint8
    ) * np.ones((size, size, 3), np.uint8)


def _tree(root: Path, layout: dict[str, int]) -> Path:
    seed = 0
    for identity, count in layout.items():
        (root / identity).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            (root / identity / f"{k:02d}.jpg").write_bytes(encode_jpeg(_image(seed)))
            seed += 1
    return root


def test_labels_follow_sorted_identity_folders(tmp_path):
    root = _tree(tmp_path / "faces", {"carol": 1, "alice": 2, "bob": 3})
    (root / "alice" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(root)
    assert ds.classes == ["alice", "bob", "carol"] and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2]
    image, label = ds[2]
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 20) and label == 1
    assert ds[-1][1] == 2
    with pytest.raises(IndexError):
        ds[6]


def test_same_samples_as_the_packed_recordio(tmp_path):
    root = _tree(tmp_path / "faces", {"a": 2, "b": 1, "c": 3})
    folder = ImageFolderDataset(root, transform=lambda x: x.float())
    items = list(zip(folder.paths, folder.labels.tolist()))
    packed = RecordIODataset(pack_images(items, tmp_path / "rec" / "train").rec, transform=lambda x: x.float())
    assert packed.labels.tolist() == folder.labels.tolist()
    for i in range(len(folder)):
        (a, la), (b, lb) = folder[i], packed[i]
        assert la == lb and a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


def test_empty_or_flat_folders_are_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FresnetError, match="empty: no identity folders found"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.jpg").write_bytes(encode_jpeg(_image(0)))
    with pytest.raises(FresnetError, match="holds 1 loose images"):
        ImageFolderDataset(tmp_path / "flat")
    root = _tree(tmp_path / "faces", {"a": 1, "b": 0, "c": 1})
    with pytest.raises(FresnetError, match=r"faces/b: identity folder holds no images"):
        ImageFolderDataset(root)
    with pytest.warns(UserWarning, match="identity folder holds no images"):
        ds = ImageFolderDataset(root, on_error="skip")
    assert ds.classes == ["a", "c"] and ds.labels.tolist() == [0, 1]
    with pytest.raises(FresnetError, match="not a folder"):
        ImageFolderDataset(tmp_path / "missing")


def test_corrupt_image_raises_with_its_path_or_is_skipped(tmp_path):
    root = _tree(tmp_path / "faces", {"a": 2, "b": 2})
    (root / "a" / "01.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(FresnetError, match=r"faces/a/01\.jpg: cannot decode the image"):
        ImageFolderDataset(root)[1]
    ds = ImageFolderDataset(root, on_error="skip")
    with pytest.warns(UserWarning, match="skipping bad sample"):
        image, label = ds[1]
    assert label == 1 and torch.equal(image, ds[2][0])  # replaced by the next good sample
    assert ds.bad_records == 1
    ds[1]
    assert ds.bad_records == 1  # counted once per bad sample


def test_list_files(tmp_path):
    _tree(tmp_path, {"x": 2})
    (tmp_path / "label.txt").write_text("x/00.jpg\t3\nx/01.jpg 0\n")
    assert [(p.name, label) for p, label in read_image_list(tmp_path / "label.txt")] == [("00.jpg", 3), ("01.jpg", 0)]
    (tmp_path / "insightface.lst").write_text(f"1\t{tmp_path / 'x' / '00.jpg'}\t7\n")
    assert read_image_list(tmp_path / "insightface.lst")[0][1] == 7
    (tmp_path / "bad.txt").write_text("x/00.jpg\t0\nx/01.jpg\tperson\n")
    with pytest.raises(FresnetError, match=r"bad\.txt: line 2 is .*integer label"):
        read_image_list(tmp_path / "bad.txt")
    (tmp_path / "gone.txt").write_text("x/99.jpg\t0\n")
    with pytest.raises(FresnetError, match=r"gone\.txt: line 1: image .*99\.jpg does not exist"):
        read_image_list(tmp_path / "gone.txt")
