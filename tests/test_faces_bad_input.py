"""Photos that are not what they seem: each gives a clear FresnetError naming the file, or a defined
result (every image mode becomes RGB), with bounded memory."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import fresnet
from fresnet.errors import FresnetError
from fresnet.faces.analysis import FaceAnalysis
from fresnet.faces.detection import Detections
from fresnet.faces.photo import load_photo

RGB = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)


def _save(tmp_path, name, image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_damaged_files_are_named_errors(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(RGB).save(jpeg, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    (tmp_path / "folder.jpg").mkdir()
    for name, message in (("truncated.jpg", "damaged, truncated or not an image"), ("empty.jpg", "empty"),
                          ("notes.jpg", "cannot decode"), ("folder.jpg", "folder"), ("missing.jpg", "missing.jpg")):
        with pytest.raises(FresnetError, match=message) as info:
            load_photo(tmp_path / name)
        assert name in str(info.value)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "I;16"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    if mode == "I;16":
        image = Image.fromarray(RGB[..., 0].astype(np.uint16) * 257)
        path = _save(tmp_path, "deep.png", image)
        decoded = load_photo(path)
        np.testing.assert_array_equal(decoded, np.repeat(RGB[..., :1], 3, axis=2))  # the top 8 bits
        return
    image = Image.fromarray(RGB).convert(mode)
    path = _save(tmp_path, f"x.{'jpg' if mode == 'CMYK' else 'png'}", image)
    decoded = load_photo(path)
    assert decoded.shape == (40, 50, 3) and decoded.dtype == np.uint8
    if mode in ("RGBA",):
        np.testing.assert_array_equal(decoded, RGB)  # alpha dropped, colours kept
    if mode == "L":
        np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])


def test_arrays_of_every_layout():
    assert load_photo(RGB[..., 0]).shape == (40, 50, 3)
    np.testing.assert_array_equal(load_photo(np.dstack([RGB, np.full((40, 50), 7, np.uint8)])), RGB)
    np.testing.assert_array_equal(load_photo(RGB.astype(np.uint16) * 257), RGB)
    np.testing.assert_array_equal(load_photo(RGB[:, :, ::-1], bgr=True), RGB)
    for bad, message in ((RGB.astype(np.float32), "dtype float32"), (np.zeros((0, 5, 3), np.uint8), "empty"),
                         (np.zeros((4, 4, 2), np.uint8), "shape"), ("", "empty path"), (3.5, "float")):
        with pytest.raises((FresnetError, FileNotFoundError), match=message):
            load_photo(bad)


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    path = _save(tmp_path, "big.png", Image.new("L", (3000, 2000)))
    with fresnet.limits.override(max_image_pixels=1_000_000):
        with pytest.raises(FresnetError, match="max_image_pixels") as info:
            load_photo(path)
        assert "big.png" in str(info.value)
        with pytest.raises(FresnetError, match="max_image_pixels"):
            load_photo(np.zeros((2000, 3000), np.uint8))


class NoFaces:
    name = "none"

    def detect(self, image):
        return Detections.empty()


def test_a_photo_without_a_face_is_an_empty_list():
    assert FaceAnalysis(detector=NoFaces()).get(RGB) == []


def test_a_detector_graph_with_an_unexpected_layout_is_named(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # a graph with four outputs: neither SCRFD/RetinaFace (6/9/10/15) nor YuNet
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 64, 64])
    outputs = [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, 3, 64, 64]) for i in range(4)]
    nodes = [helper.make_node("Identity", ["input.1"], [f"out{i}"]) for i in range(4)]
    model = helper.make_model(helper.make_graph(nodes, "odd", [x], outputs), opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    with pytest.raises(FresnetError, match="Layout found") as info:
        FaceAnalysis(detector=str(path))
    assert "4 outputs" in str(info.value)


def test_a_detector_that_is_not_one():
    with pytest.raises(FresnetError, match="detector must be a name"):
        FaceAnalysis(detector=42)
    with pytest.raises(FresnetError, match="neither a name"):
        FaceAnalysis(detector="retinaface-but-missing.onnx")
    with pytest.raises(FresnetError, match="needs its graph"):
        FaceAnalysis(detector="scrfd")


def test_a_recogniser_whose_input_is_not_square():
    class Wide:
        name = "wide"
        input_size = (112, 96)

        def embed(self, crops):
            raise AssertionError("never called")

    with pytest.raises(FresnetError, match="112x96 input; face alignment makes square crops"):
        FaceAnalysis(detector=NoFaces(), recognizer=Wide())
    with pytest.raises(FresnetError, match="square"):
        FaceAnalysis(detector=NoFaces(), recognizer="r18", fast=False).__init__(
            detector=NoFaces(), recognizer=fresnet.create_model("r18", input_size=(112, 96)), fast=False)
