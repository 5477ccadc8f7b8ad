"""The real photographs of ``../shared/reference/faces`` and pictures made from them, for detector tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import reference_path

PHOTOS = ("impostor_1", "impostor_2", "person_a_1", "person_a_2", "person_b_1", "person_b_2")


def read_rgb(path: Path) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def load_photos() -> dict[str, np.ndarray]:
    """The six portraits as RGB arrays (skips when the reference folder is absent)."""
    folder = reference_path("faces", "photos")
    return {name: read_rgb(folder / f"{name}.jpg") for name in PHOTOS}


def collage(images: list[np.ndarray], height: int = 300, columns: int = 3) -> np.ndarray:
    """The photos scaled to one height, in a grid (one face per tile)."""
    cv2 = pytest.importorskip("cv2")
    tiles = [cv2.resize(im, (round(im.shape[1] * height / im.shape[0]), height), interpolation=cv2.INTER_AREA)
             for im in images]
    width = max(t.shape[1] for t in tiles)
    rows = []
    for start in range(0, len(tiles), columns):
        row = np.zeros((height, width * columns, 3), np.uint8)
        for k, tile in enumerate(tiles[start:start + columns]):
            row[:, k * width:k * width + tile.shape[1]] = tile
        rows.append(row)
    return np.concatenate(rows)


def grace_hopper() -> np.ndarray:
    """matplotlib's own sample photograph (public domain)."""
    matplotlib = pytest.importorskip("matplotlib")
    return read_rgb(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


def assert_plausible(found) -> None:
    """Eyes above the nose above the mouth, left (as seen) before right, all inside the box."""
    for box, points in zip(found.boxes, found.landmarks):
        left_eye, right_eye, nose, left_mouth, right_mouth = points
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
        assert np.all(points[:, 0] > box[0]) and np.all(points[:, 0] < box[2])
        assert np.all(points[:, 1] > box[1]) and np.all(points[:, 1] < box[3])


def assert_same(ours, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray,
                pixels: float = 0.5, score_tolerance: float = 1e-4) -> None:
    """Same number of faces, boxes and landmarks within ``pixels``, scores within ``score_tolerance``."""
    assert len(ours) == len(scores)
    np.testing.assert_allclose(ours.boxes, boxes, atol=pixels, rtol=0)
    np.testing.assert_allclose(ours.scores, scores, atol=score_tolerance, rtol=0)
    np.testing.assert_allclose(ours.landmarks, landmarks, atol=pixels, rtol=0)
