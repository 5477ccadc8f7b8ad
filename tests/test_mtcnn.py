"""MTCNN on real photographs, against facenet-pytorch 2.6.0's ``MTCNN.detect`` (the oracle)."""
from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

from fresnet.errors import FresnetError
from fresnet.faces.detection import Detections

try:
    importlib.metadata.distribution("facenet-pytorch")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch==2.6.0)",
                allow_module_level=True)

from face_photos import (
    PHOTOS,
    assert_plausible,
    assert_same,
    collage,
    grace_hopper,
    load_photos,
)
from facenet_oracle import facenet_detect, facenet_mtcnn

from fresnet.faces.mtcnn import INSIGHTFACE_THRESHOLDS, MTCNN


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return load_photos()


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def oracle():
    return facenet_mtcnn()


@pytest.fixture(scope="module")
def found(detector, photos) -> dict[str, Detections]:
    """Our detections, once per photo and on the collage of all six."""
    result = {name: detector.detect(rgb) for name, rgb in photos.items()}
    result["collage"] = detector.detect(collage(list(photos.values())))
    return result


def assert_same_as(ours: Detections, reference: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    assert_same(ours, *reference)


def test_every_photo_one_plausible_face(found):
    for name in PHOTOS:
        assert len(found[name]) == 1, name
        assert found[name].boxes.dtype == np.float32 and found[name].landmarks.shape == (1, 5, 2)
        assert 0.99 < found[name].scores[0] <= 1.0
        assert_plausible(found[name])


def test_same_as_facenet_pytorch_on_each_photo(found, oracle, photos):
    for name, rgb in photos.items():
        assert_same_as(found[name], facenet_detect(oracle, rgb))


def test_collage_of_six_and_grace_hopper(detector, found, oracle, photos):
    assert len(found["collage"]) == 6
    assert_plausible(found["collage"])
    assert_same_as(found["collage"], facenet_detect(oracle, collage(list(photos.values()))))
    hopper = grace_hopper()
    found = detector.detect(hopper)
    assert len(found) == 1
    assert_plausible(found)
    assert_same_as(found, facenet_detect(oracle, hopper))


def test_insightface_thresholds_option(photos):
    ours = MTCNN(thresholds=INSIGHTFACE_THRESHOLDS)
    reference = facenet_mtcnn(thresholds=list(INSIGHTFACE_THRESHOLDS))
    assert ours.thresholds == (0.6, 0.7, 0.8)
    rgb = photos["person_a_1"]  # the smallest portrait: the second oracle run stays cheap
    assert_same_as(ours.detect(rgb), facenet_detect(reference, rgb))


def test_rows_best_first(found):
    assert np.all(np.diff(found["collage"].scores) <= 0)


def test_no_face_gives_empty_detections(detector):
    rng = np.random.default_rng(0)
    gradient = np.broadcast_to(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 320, 3)).copy()
    for image in (np.full((200, 300, 3), 128, np.uint8), gradient, np.zeros((8, 8, 3), np.uint8),
                  rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)):
        found = detector.detect(image)
        assert len(found) == 0 and found.landmarks.shape == (0, 5, 2)


@pytest.mark.parametrize("image", [
    np.zeros((50, 50), np.uint8),  # grayscale
    np.zeros((50, 50, 4), np.uint8),  # alpha
    np.zeros((50, 50, 3), np.uint16),  # 16-bit
    np.zeros((50, 50, 3), np.float32),
    np.zeros((0, 50, 3), np.uint8),
    [[0, 0, 0]],
])
def test_bad_input_is_a_clear_error(detector, image):
    with pytest.raises(FresnetError, match="uint8 RGB"):
        detector.detect(image)


def test_bad_options_and_weights(tmp_path):
    with pytest.raises(FresnetError, match="three probabilities"):
        MTCNN(thresholds=(0.6, 0.7))
    with pytest.raises(FresnetError, match="factor"):
        MTCNN(factor=1.2)
    with pytest.raises(FresnetError, match="lack"):
        MTCNN(weights={"pnet": tmp_path / "p.pt"})
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    from fresnet.faces.weights import mtcnn_weights
    paths = dict(mtcnn_weights(), rnet=wrong)
    with pytest.raises(FresnetError, match="does not fit MTCNN's RNet"):
        MTCNN(weights=paths)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(found, photos):
    gpu = MTCNN(device="cuda")
    for name, rgb in photos.items():
        ours, theirs = gpu.detect(rgb), found[name]
        assert len(ours) == len(theirs)
        np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=0.5)
        np.testing.assert_allclose(ours.landmarks, theirs.landmarks, atol=0.5)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-4)


@pytest.mark.parametrize("count", [0, 1, 7, 300, 2500])  # 2500: past the IoU-table limit, the per-box loop
def test_nms_same_as_reference_nms(count):
    from facenet_oracle import greedy_batched_nms

    from fresnet.faces.nms import nms_iou, nms_min_plus_one

    facenet_mtcnn()  # imports facenet-pytorch behind the stand-in torchvision
    from facenet_pytorch.models.utils.detect_face import nms_numpy

    rng = np.random.default_rng(count)
    corner = rng.integers(0, 200, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + rng.integers(1, 60, (count, 2)).astype(np.float32)], 1)
    scores = rng.random(count).astype(np.float32)
    scores[: count // 3] = 0.5  # ties: broken by the lower index
    for threshold in (0.5, 0.7):
        reference = greedy_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                       torch.zeros(count, dtype=torch.long), threshold)
        np.testing.assert_array_equal(nms_iou(boxes, scores, threshold), reference.numpy())
        if count:
            np.testing.assert_array_equal(nms_min_plus_one(boxes, scores, threshold),
                                          nms_numpy(boxes, scores, threshold, "Min"))
