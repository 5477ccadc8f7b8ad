"""SCRFD/RetinaFace ONNX detection, bit for bit against insightface 2.1's own ``model_zoo/scrfd.py``.

InsightFace takes BGR (OpenCV's convention) and fresnet RGB: each test gives InsightFace the BGR and
fresnet the RGB of one decoded photo. The real graph is the ``scrfd==0.3.0`` sdist's
``models/scrfd.onnx`` (9 outputs, batched, fixed 640x640), which ``make venv`` puts in
``$VIRTUAL_ENV/oracles``; the other layouts (6 outputs, dynamic input, 10/15 outputs, unbatched)
are made from it or built here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import reference_path
from insightface_oracle import model_zoo

from fresnet.errors import FresnetError
from fresnet.faces.scrfd import SCRFD, greedy_nms

PHOTOS = ("person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2")


def scrfd_graph() -> Path:
    path = Path(os.environ.get("FRESNET_SCRFD_ONNX") or Path(sys.prefix) / "oracles" / "scrfd.onnx")
    if not path.is_file():
        pytest.skip(f"no SCRFD graph at {path}: run `make venv` (it unpacks the scrfd==0.3.0 sdist's "
                    "models/scrfd.onnx there) or set FRESNET_SCRFD_ONNX")
    return path


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    folder = reference_path("faces", "photos")
    return {name: read_bgr(folder / f"{name}.jpg") for name in PHOTOS}


@pytest.fixture(scope="module")
def collage(photos) -> np.ndarray:
    """The six portraits, 320 px high, in two rows of three on grey (BGR)."""
    tiles = [cv2.resize(p, (round(p.shape[1] * 320 / p.shape[0]), 320), interpolation=cv2.INTER_AREA)
             for p in photos.values()]
    width = max(sum(t.shape[1] for t in tiles[i:i + 3]) for i in (0, 3))
    canvas = np.full((640, width, 3), 128, np.uint8)
    for index, tile in enumerate(tiles):
        row, col = divmod(index, 3)
        x = sum(t.shape[1] for t in tiles[row * 3:row * 3 + col])
        canvas[row * 320:(row + 1) * 320, x:x + tile.shape[1]] = tile
    return canvas


def rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def oracle(path, input_size=None, det_thresh=0.5):
    detector = model_zoo("scrfd").SCRFD(model_file=str(path))
    detector.prepare(-1, input_size=input_size, det_thresh=det_thresh)
    return detector


def assert_identical(reference, mine) -> None:
    det, kps = reference
    assert len(mine) == len(det)
    np.testing.assert_array_equal(mine.boxes, det[:, :4])
    np.testing.assert_array_equal(mine.scores, det[:, 4])
    if kps is None:
        assert np.isnan(mine.landmarks).all()
    else:
        np.testing.assert_array_equal(mine.landmarks, kps)
    assert mine.boxes.dtype == mine.scores.dtype == mine.landmarks.dtype == np.float32


# ---------------------------------------------------------------- the real graph, real photos
def test_real_graph_layout():
    detector = SCRFD(scrfd_graph())
    assert detector.layout.strides == (8, 16, 32) and detector.layout.anchors == 2 and detector.has_landmarks
    assert detector.fixed_size == (640, 640) and detector.input_sizes == ((640, 640),)


def test_photos_bit_identical_to_insightface(photos):
    path = scrfd_graph()
    reference, mine = oracle(path), SCRFD(path)
    for name, bgr in photos.items():
        found = mine.detect(rgb(bgr))
        assert_identical(reference.detect(bgr), found)
        assert len(found) == 1, name
        (x1, y1, x2, y2), points = found.boxes[0], found.landmarks[0]
        assert (points[:, 0] > x1).all() and (points[:, 0] < x2).all() and (points[:, 1] > y1).all() and (
            points[:, 1] < y2).all(), name
        left_eye, right_eye, nose, left_mouth, right_mouth = points
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0], name
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1]), name


def test_collage_six_faces_low_threshold_and_max_num(collage):
    path = scrfd_graph()
    image = rgb(collage)
    found = SCRFD(path).detect(image)
    assert len(found) == 6
    tiles = {(int(cy // 320), int(cx // (collage.shape[1] / 3))) for cx, cy in
             zip((found.boxes[:, 0] + found.boxes[:, 2]) / 2, (found.boxes[:, 1] + found.boxes[:, 3]) / 2)}
    assert len(tiles) == 6
    # a low threshold feeds NMS hundreds of overlapping candidates; max_num ranks them both ways
    reference, mine = oracle(path, det_thresh=0.05), SCRFD(path, det_thresh=0.05)
    assert_identical(reference.detect(collage), mine.detect(image))
    for metric in ("default", "max"):
        assert_identical(reference.detect(collage, max_num=3, metric=metric), mine.detect(image, max_num=3, metric=metric))
    assert len(mine.detect(image, max_num=3, metric="max")) == 3


def test_no_face_is_empty():
    found = SCRFD(scrfd_graph()).detect(np.full((300, 500, 3), 90, np.uint8))
    assert len(found) == 0 and found.boxes.shape == (0, 4) and found.landmarks.shape == (0, 5, 2)


def test_bad_images_and_arguments():
    detector = SCRFD(scrfd_graph())
    assert len(detector.detect(np.zeros((1, 5000, 3), np.uint8))) == 0  # a 1-px-high strip (InsightFace: cv2 error)
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32),
                np.zeros((0, 10, 3), np.uint8), "photo.jpg"):
        with pytest.raises(FresnetError, match="RGB uint8|empty"):
            detector.detect(bad)
    with pytest.raises(FresnetError, match="unknown max_num metric"):
        detector.detect(np.zeros((64, 64, 3), np.uint8), max_num=1, metric="area")
    with pytest.raises(FresnetError, match="no such face detector graph"):
        SCRFD("/nonexistent/det_10g.onnx")


# ---------------------------------------------------------------- other layouts made from the real graph
def _save(model, folder: Path, name: str) -> Path:
    path = folder / name
    onnx.save(model, str(path))
    return path


def dynamic_variant(folder: Path) -> Path:
    """The real graph with a symbolic input size: the two FPN upsamplings by scale 2 instead of fixed sizes."""
    model = onnx.load(str(scrfd_graph()))
    graph = model.graph
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up2"))
    for node in graph.node:
        if node.op_type == "Resize":
            del node.input[2:]
            node.input.append("up2")  # X, roi, scales
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "candidates"
    del graph.value_info[:]
    return _save(model, folder, "scrfd_dynamic.onnx")


def without_landmarks(folder: Path) -> Path:
    model = onnx.load(str(scrfd_graph()))
    keep = [o for o in model.graph.output if not o.name.startswith("kps")]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return _save(model, folder, "scrfd_nokps.onnx")


def test_dynamic_input_several_sizes(tmp_path, photos, collage):
    path = dynamic_variant(tmp_path)
    fixed = SCRFD(scrfd_graph()).detect(rgb(photos["person_b_1"]))
    np.testing.assert_array_equal(SCRFD(path).detect(rgb(photos["person_b_1"])).boxes, fixed.boxes)
    sizes = [(320, 320), (640, 480)]
    mine = SCRFD(path, det_size=sizes)
    assert mine.fixed_size is None and mine.input_sizes == tuple(sizes)
    reference = oracle(path, input_size=sizes)
    for bgr in (photos["impostor_2"], collage):
        assert_identical(reference.detect(bgr), mine.detect(rgb(bgr)))
    with pytest.raises(FresnetError, match="not a multiple of 32"):
        SCRFD(path, det_size=(500, 500))


def test_six_outputs_no_landmarks(tmp_path, collage):
    path = without_landmarks(tmp_path)
    mine = SCRFD(path)
    assert not mine.has_landmarks
    found = mine.detect(rgb(collage))
    assert_identical(oracle(path).detect(collage), found)
    assert len(found) == 6


def test_unexpected_layout_is_named(tmp_path):
    model = onnx.load(str(scrfd_graph()))
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(outputs[:8])
    with pytest.raises(FresnetError, match=r"8 outputs.*Layout found: score_8 \[1, 12800, 1\]"):
        SCRFD(_save(model, tmp_path, "eight.onnx"))
    del model.graph.output[:]
    model.graph.output.extend(outputs[3:6] + outputs[:3] + outputs[6:])  # boxes before scores
    with pytest.raises(FresnetError, match="should end in 1, not 4"):
        SCRFD(_save(model, tmp_path, "swapped.onnx"))


# ---------------------------------------------------------------- five strides, unbatched (built here)
def synthetic_graph(folder: Path, strides, anchors: int, kps: bool, batched: bool) -> Path:
    """An SCRFD-shaped graph: per stride, average pooling and a seeded 1x1 conv per output kind."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(len(strides) * 10 + anchors)
    nodes, inits, outputs = [], [], []
    kinds = [("score", 1), ("bbox", 4)] + ([("kps", 10)] if kps else [])
    for kind, width in kinds:
        for stride in strides:
            pooled, name = f"pool{stride}", f"{kind}_{stride}"
            if kind == "score":
                nodes.append(helper.make_node("AveragePool", ["input"], [pooled], kernel_shape=[stride, stride],
                                              strides=[stride, stride]))
            channels = anchors * width
            weight = rng.normal(0, 1.5 if kind == "score" else 0.5, (channels, 3, 1, 1)).astype(np.float32)
            bias = rng.normal(0, 0.5, channels).astype(np.float32) + (1.0 if kind == "bbox" else 0.0)
            inits += [numpy_helper.from_array(weight, f"w_{name}"), numpy_helper.from_array(bias, f"b_{name}")]
            nodes.append(helper.make_node("Conv", [pooled, f"w_{name}", f"b_{name}"], [f"c_{name}"]))
            nodes.append(helper.make_node("Transpose", [f"c_{name}"], [f"t_{name}"], perm=[0, 2, 3, 1]))
            shape = [1, -1, width] if batched else [-1, width]
            inits.append(numpy_helper.from_array(np.array(shape, np.int64), f"s_{name}"))
            reshaped = f"r_{name}" if kind == "score" else name
            nodes.append(helper.make_node("Reshape", [f"t_{name}", f"s_{name}"], [reshaped]))
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [reshaped], [name]))
            dims = [1, None, width] if batched else [None, width]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    graph = helper.make_graph(nodes, "synthetic_scrfd",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return _save(model, folder, f"synthetic_{len(outputs)}_{int(batched)}.onnx")


@pytest.mark.parametrize("strides,anchors,kps,batched", [
    ((8, 16, 32, 64, 128), 1, True, False),
    ((8, 16, 32, 64, 128), 1, False, True),
    ((8, 16, 32), 2, True, False),
])
def test_other_layouts_bit_identical(tmp_path, photos, strides, anchors, kps, batched):
    path = synthetic_graph(tmp_path, strides, anchors, kps, batched)
    size = (256, 384)
    mine = SCRFD(path, det_size=size, det_thresh=0.6)
    assert mine.layout.strides == tuple(strides) and mine.has_landmarks == kps
    reference = oracle(path, input_size=size, det_thresh=0.6)
    bgr = photos["person_a_1"]
    found = mine.detect(rgb(bgr))
    assert len(found) > 3  # random weights: boxes everywhere, which exercises the NMS
    assert_identical(reference.detect(bgr), found)
    assert_identical(reference.detect(bgr, max_num=2), mine.detect(rgb(bgr), max_num=2))


def test_greedy_nms_counts_one_pixel_per_side():
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [100, 100, 110, 110]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    # +1 areas: the first two overlap by 5x10 of 100 + 100 - 50 = 150 -> IoU 1/3
    assert greedy_nms(boxes, scores, 0.4).tolist() == [0, 1, 2]
    assert greedy_nms(boxes, scores, 0.3).tolist() == [0, 2]
