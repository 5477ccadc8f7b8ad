"""ONNX recognisers fed as InsightFace's ArcFaceONNX feeds them, against ArcFaceONNX itself and OpenCV's
FaceRecognizerSF, on faces of the reference photos found by the real SCRFD graph."""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import reference_path
from insightface_oracle import model_zoo
from test_scrfd import PHOTOS, read_bgr, scrfd_graph

from fresnet.errors import FresnetError

try:  # alignment moves from eval/ to faces/ with the pipeline
    from fresnet.faces.align import estimate_norm
except ImportError:
    from fresnet.eval.align import estimate_norm
from fresnet.faces.recognizer import NORMALISED, RAW, ONNXRecognizer
from fresnet.faces.scrfd import SCRFD

TINY = {"units": [1, 1, 1, 1], "filter_list": [16, 16, 32, 64, 128], "emb_size": 128}


def sface_path():
    from fresnet.faces.weights import sface_model

    try:
        return sface_model()
    except FresnetError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    """112x112 aligned RGB crops (InsightFace's norm_crop: template similarity, cv2.warpAffine)."""
    folder = reference_path("faces", "photos")
    detector = SCRFD(scrfd_graph())
    out = {}
    for name in PHOTOS:
        image = cv2.cvtColor(read_bgr(folder / f"{name}.jpg"), cv2.COLOR_BGR2RGB)
        found = detector.detect(image)
        assert len(found) == 1
        out[name] = cv2.warpAffine(image, estimate_norm(found.landmarks[0]), (112, 112), borderValue=0.0)
    return out


@pytest.fixture(scope="module")
def sface():
    return ONNXRecognizer(sface_path())


@pytest.fixture(scope="module")
def plain_export(tmp_path_factory):
    """A tiny fresnet network and its plain ONNX export."""
    return tiny_export(tmp_path_factory.mktemp("plain"))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def bgr(images) -> list[np.ndarray]:
    return [cv2.cvtColor(np.ascontiguousarray(i), cv2.COLOR_RGB2BGR) for i in images]


def test_sface_against_opencv_and_arcface_onnx(crops, sface):
    path, recognizer = sface_path(), sface
    assert recognizer.input_size == (112, 112) and recognizer.embedding_size == 128
    assert (recognizer.input_mean, recognizer.input_std) == RAW  # its _minusscalar0/_mulscalar0 found on the data path
    batch = np.stack(list(crops.values()))
    mine = recognizer.embed(batch)
    assert mine.shape == (6, 128) and mine.dtype == np.float32
    # OpenCV's own SFace runner (its DNN engine, not onnxruntime): raw BGR crop, swapRB
    opencv = cv2.FaceRecognizerSF.create(str(path), "")
    theirs = np.stack([opencv.feature(face).ravel() for face in bgr(batch)])
    assert cosine(mine, theirs).min() >= 0.9999
    # InsightFace cannot run this file itself: onnxruntime demands the stale weight inputs that the
    # int8 conversion left declared (ONNXRecognizer drops them); so it gets our session. Its rule looks
    # at the file's first 8 nodes, all weight dequantisations here, and so it normalises pixels the
    # graph normalises again; fed raw, it gives ours exactly
    with pytest.raises(Exception, match="Required inputs"):
        model_zoo("arcface_onnx").ArcFaceONNX(str(path)).get_feat(bgr(batch[:1]))
    arcface = model_zoo("arcface_onnx").ArcFaceONNX(str(path), session=recognizer.session)
    assert (arcface.input_mean, arcface.input_std) == NORMALISED
    misread = np.concatenate([arcface.get_feat(face) for face in bgr(batch)])
    assert cosine(mine, misread).min() < 0.99
    arcface.input_mean, arcface.input_std = RAW
    np.testing.assert_array_equal(np.concatenate([arcface.get_feat(face) for face in bgr(batch)]), mine)


def test_sface_same_person_pairs_score_above_different_people(crops, sface):
    recognizer = sface
    names = list(crops)
    emb = recognizer.embed(np.stack([crops[n] for n in names]))
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    same = [sim[names.index(f"{p}_1"), names.index(f"{p}_2")] for p in ("person_a", "person_b")]
    person = [n.rsplit("_", 1)[0] if n.startswith("person") else n for n in names]
    different = [sim[i, j] for i in range(6) for j in range(i + 1, 6) if person[i] != person[j]]
    assert min(same) > max(different)


def test_batching_fixed_and_dynamic(crops, sface, plain_export):
    batch = np.stack(list(crops.values()))
    fixed = sface  # batch dimension fixed at 1
    assert fixed.batch_size == 1
    np.testing.assert_array_equal(fixed.embed(batch[:3]), np.concatenate([fixed.embed(batch[i:i + 1]) for i in range(3)]))
    assert fixed.embed(batch[:0]).shape == (0, 128)
    path, _ = plain_export
    dynamic = ONNXRecognizer(path, batch_size=4)
    whole = dynamic.embed(batch)
    np.testing.assert_allclose(ONNXRecognizer(path, batch_size=1).embed(batch), whole, rtol=1e-5, atol=1e-5)


def tiny_export(folder, name="tiny.onnx", insightface=False):
    import torch

    from fresnet.interop.insightface_onnx import export_insightface
    from fresnet.interop.onnx_export import export_onnx
    from fresnet.network.model import create_model

    torch.manual_seed(0)
    model = create_model("r18", **TINY).eval()
    path = folder / name
    (export_insightface if insightface else export_onnx)(model, path)
    return path, model


def test_fresnet_exports_read_as_raw_pixels(tmp_path, crops, plain_export):
    import torch

    batch = np.stack(list(crops.values()))
    for insightface in (False, True):
        path, model = tiny_export(tmp_path, "tiny_insightface.onnx", True) if insightface else plain_export
        recognizer = ONNXRecognizer(path)
        assert (recognizer.input_mean, recognizer.input_std) == RAW and recognizer.embedding_size == 128
        with torch.no_grad():
            expected = model(torch.from_numpy(batch).permute(0, 3, 1, 2).float()).numpy()
        assert cosine(recognizer.embed(batch), expected).min() >= 0.99999
        arcface = model_zoo("arcface_onnx").ArcFaceONNX(str(path))
        if insightface:  # InsightFace reads the marked export the same way and gets the same numbers
            assert (arcface.input_mean, arcface.input_std) == RAW
            np.testing.assert_array_equal(arcface.get_feat(bgr(batch)), recognizer.embed(batch))
        else:  # the plain export's /stem/norm/Sub sits past InsightFace's 8-node window
            assert (arcface.input_mean, arcface.input_std) == NORMALISED


def test_normalised_input_graph_matches_arcface_onnx(tmp_path, crops, plain_export):
    """A graph whose first nodes are not named Sub/Mul (as in w600k_r50.onnx) gets (x - 127.5) / 127.5,
    as in InsightFace, and the very same numbers."""
    path, _ = plain_export
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for index, node in enumerate(proto.graph.node):
        node.name = f"node{index}"  # InsightFace's rule no longer finds Sub/Mul by name
    onnx.save(proto, str(tmp_path / "normalised.onnx"))
    recognizer = ONNXRecognizer(tmp_path / "normalised.onnx")
    assert (recognizer.input_mean, recognizer.input_std) == NORMALISED
    arcface = model_zoo("arcface_onnx").ArcFaceONNX(str(tmp_path / "normalised.onnx"))
    assert (arcface.input_mean, arcface.input_std) == NORMALISED
    batch = np.stack(list(crops.values()))
    np.testing.assert_array_equal(arcface.get_feat(bgr(batch)), recognizer.embed(batch))


def _graph(folder, name, shape):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(folder / name))
    return folder / name


def test_bad_graphs_and_crops(tmp_path):
    with pytest.raises(FresnetError, match="112x96 crops.*only square-input"):
        ONNXRecognizer(_graph(tmp_path, "rect.onnx", ["n", 3, 112, 96]))
    with pytest.raises(FresnetError, match="no fixed height and width"):
        ONNXRecognizer(_graph(tmp_path, "dyn.onnx", ["n", 3, "h", "w"]))
    with pytest.raises(FresnetError, match="no such face recogniser graph"):
        ONNXRecognizer(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(FresnetError, match="junk.onnx: not a readable ONNX"):
        ONNXRecognizer(tmp_path / "junk.onnx")
    recognizer = ONNXRecognizer(_graph(tmp_path, "ok.onnx", ["n", 3, 112, 112]))
    assert recognizer.embedding_size == 8  # found by running it: the output shape is not declared
    for bad in (np.zeros((2, 112, 112, 3), np.float32), np.zeros((112, 112, 3), np.uint8),
                np.zeros((1, 128, 128, 3), np.uint8)):
        with pytest.raises(FresnetError, match=r"aligned RGB uint8 crops of shape \(N, 112, 112, 3\)"):
            recognizer.embed(bad)
