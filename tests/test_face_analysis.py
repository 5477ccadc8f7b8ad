"""FaceAnalysis: photos in, faces out -- detection, InsightFace-exact alignment and batched embedding,
with stand-in detectors and recognisers, then on real photographs with real weights."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import reference_path
from fresnet.errors import FresnetError
from fresnet.faces.align import ARCFACE_DST, norm_crop
from fresnet.faces.analysis import FaceAnalysis
from fresnet.faces.detection import Detections


class FakeDetector:
    """Faces where the test puts them: each a box and the ArcFace template scaled into it."""

    name = "fake"

    def __init__(self, boxes):
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        points = []
        for x1, y1, x2, _y2 in self.boxes:
            scale = (x2 - x1) / 112.0
            points.append(ARCFACE_DST * scale + [x1, y1])
        scores = np.linspace(0.99, 0.9, len(self.boxes)).astype(np.float32)
        return Detections(self.boxes.copy(), scores, np.asarray(points, np.float32).reshape(-1, 5, 2))


class FakeRecognizer:
    """Embeds a crop as its per-row mean colour split by image half (so a mirror changes it)."""

    name = "fake-recogniser"

    def __init__(self, size=(112, 112)):
        self.input_size = size
        self.batches: list[int] = []

    def embed(self, crops):
        crops = np.asarray(crops)
        assert crops.dtype == np.uint8 and crops.shape[1:] == (*self.input_size, 3)
        self.batches.append(len(crops))
        half = crops.shape[2] // 2
        left = crops[:, :, :half].reshape(len(crops), -1, 3).mean(1)
        right = crops[:, :, half:].reshape(len(crops), -1, 3).mean(1)
        return np.concatenate([left, right * 2], axis=1).astype(np.float32) + 1


def _photo(seed=0, shape=(240, 320, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_faces_carry_box_landmarks_score_and_embeddings():
    detector = FakeDetector([[20, 30, 132, 142], [150, 40, 206, 96]])
    recognizer = FakeRecognizer()
    app = FaceAnalysis(detector=detector, recognizer=recognizer, keep_crops=True)
    photo = _photo()
    faces = app.get(photo)
    assert len(faces) == 2
    found = detector.detect(photo)
    for face, box, points, score in zip(faces, found.boxes, found.landmarks, found.scores):
        np.testing.assert_array_equal(face.bbox, box)
        np.testing.assert_array_equal(face.kps, points)
        assert face.det_score == pytest.approx(float(score))
        np.testing.assert_array_equal(face.crop, norm_crop(photo, points, 112))  # InsightFace's crop
        np.testing.assert_allclose(face.embedding, recognizer.embed(face.crop[None])[0])
        assert np.linalg.norm(face.normed_embedding) == pytest.approx(1.0, abs=1e-6)
        assert face.embedding_norm == pytest.approx(float(np.linalg.norm(face.embedding)))
    assert faces[0].to_dict()["box"] == [20.0, 30.0, 132.0, 142.0]


def test_every_face_of_every_photo_shares_batches():
    recognizer = FakeRecognizer()
    app = FaceAnalysis(detector=FakeDetector([[10, 10, 66, 66], [80, 10, 136, 66], [150, 10, 206, 66]]),
                       recognizer=recognizer, batch_size=4)
    results = app.get_many([_photo(i) for i in range(3)])
    assert [len(faces) for faces in results] == [3, 3, 3]
    assert recognizer.batches == [4, 4, 1]  # nine faces in three calls, not nine
    one_by_one = [FaceAnalysis(detector=FakeDetector([[10, 10, 66, 66], [80, 10, 136, 66], [150, 10, 206, 66]]),
                               recognizer=FakeRecognizer()).get(_photo(i)) for i in range(3)]
    for got, want in zip(results, one_by_one):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-6)


def test_the_default_batch_is_small_on_the_cpu_and_large_on_a_gpu(monkeypatch):
    from fresnet.faces import analysis

    grid = [[x, 10, x + 20, 30] for x in range(0, 600, 24)]  # 25 faces
    recognizer = FakeRecognizer()
    app = FaceAnalysis(detector=FakeDetector(grid), recognizer=recognizer)
    assert app.batch_size == analysis.CPU_BATCH == 8
    app.get(_photo(5, (320, 640, 3)))
    assert recognizer.batches == [8, 8, 8, 1]  # the CPU's fastest faces per call for an r50
    monkeypatch.setattr(analysis, "_device", lambda device: "cuda")
    assert FaceAnalysis(detector=FakeDetector(grid), recognizer=FakeRecognizer(), device="cuda").batch_size == 64
    with pytest.raises(FresnetError, match="batch_size"):
        FaceAnalysis(detector=FakeDetector(grid), recognizer=FakeRecognizer(), batch_size=0)


def test_flip_sums_the_mirror_and_normalises():
    detector = FakeDetector([[20, 30, 132, 142]])
    plain = FaceAnalysis(detector=detector, recognizer=FakeRecognizer(), keep_crops=True).get(_photo())[0]
    flipped = FaceAnalysis(detector=detector, recognizer=FakeRecognizer(), flip=True).get(_photo())[0]
    mirror = FakeRecognizer().embed(plain.crop[None, :, ::-1])[0]
    np.testing.assert_allclose(flipped.embedding, plain.embedding + mirror, rtol=1e-6)
    total = plain.embedding + mirror
    np.testing.assert_allclose(flipped.normed_embedding, total / np.linalg.norm(total), rtol=1e-6)


def test_crop_size_follows_the_recogniser():
    app = FaceAnalysis(detector=FakeDetector([[20, 30, 132, 142]]), recognizer=FakeRecognizer((128, 128)),
                       keep_crops=True)
    face = app.get(_photo())[0]
    assert face.crop.shape == (128, 128, 3)
    np.testing.assert_array_equal(face.crop, norm_crop(_photo(), face.kps, 128))
    with pytest.raises(FresnetError, match="112x96 input; face alignment makes square crops"):
        FaceAnalysis(detector=FakeDetector([]), recognizer=FakeRecognizer((112, 96)))
    with pytest.raises(FresnetError, match="multiple of 112 or 128"):
        FaceAnalysis(detector=FakeDetector([]), recognizer=FakeRecognizer((100, 100)))


def test_path_pil_and_array_inputs_agree_and_bgr_is_a_switch(tmp_path):
    photo = _photo(3)
    Image.fromarray(photo).save(tmp_path / "p.png")
    app = FaceAnalysis(detector=FakeDetector([[20, 30, 132, 142]]), recognizer=FakeRecognizer())
    want = app.get(photo)[0].embedding
    np.testing.assert_array_equal(app.get(tmp_path / "p.png")[0].embedding, want)
    np.testing.assert_array_equal(app.get(str(tmp_path / "p.png"))[0].embedding, want)
    np.testing.assert_array_equal(app.get(Image.open(tmp_path / "p.png"))[0].embedding, want)
    np.testing.assert_array_equal(app.get(photo[:, :, ::-1].copy(), bgr=True)[0].embedding, want)
    assert not np.array_equal(app.get(photo[:, :, ::-1].copy())[0].embedding, want)


def test_exif_orientation_is_applied(tmp_path):
    photo = _photo(4, (60, 100, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG", exif=exif)
    (tmp_path / "rotated.png").write_bytes(buffer.getvalue())
    from fresnet.faces.photo import load_photo

    upright = load_photo(tmp_path / "rotated.png")
    assert upright.shape == (100, 60, 3)
    np.testing.assert_array_equal(upright, np.rot90(photo, k=-1))


def test_max_num_keeps_the_largest_most_central_faces():
    boxes = [[0, 0, 30, 30], [100, 80, 220, 200], [250, 10, 300, 60]]
    app = FaceAnalysis(detector=FakeDetector(boxes), recognizer=None)
    faces = app.get(_photo(), max_num=1)
    assert len(faces) == 1 and faces[0].bbox.tolist() == [100, 80, 220, 200]
    assert len(app.get(_photo())) == 3 and faces[0].embedding is None
    with pytest.raises(FresnetError, match="max_num"):
        app.get(_photo(), max_num=-1)


def test_no_face_is_an_empty_list_and_hundreds_are_fine():
    recognizer = FakeRecognizer()
    assert FaceAnalysis(detector=FakeDetector([]), recognizer=recognizer).get(_photo()) == []
    assert recognizer.batches == []
    grid = [[x, y, x + 20, y + 20] for x in range(0, 600, 24) for y in range(0, 300, 24)]  # 325 faces
    recognizer = FakeRecognizer()
    faces = FaceAnalysis(detector=FakeDetector(grid), recognizer=recognizer, batch_size=64).get(
        _photo(5, (320, 640, 3))
    )
    assert len(faces) == len(grid) and all(f.embedding is not None for f in faces)
    assert max(recognizer.batches) == 64


def test_a_fresnet_network_is_a_recogniser(tmp_path):
    import torch

    import fresnet
    from fresnet.eval.embed import embed_images

    torch.manual_seed(0)
    model = fresnet.create_model("r18", units=[1, 1, 1, 1], filter_list=[8, 8, 8, 16, 16], emb_size=16).eval()
    detector = FakeDetector([[20, 30, 132, 142]])
    app = FaceAnalysis(detector=detector, recognizer=model, fast=False, keep_crops=True, flip=True)
    face = app.get(_photo())[0]
    want = embed_images(fresnet_loader(model), face.crop[None], flip=True)[0]
    np.testing.assert_allclose(face.embedding, want, rtol=1e-5, atol=1e-5)
    path = tmp_path / "m.safetensors"
    fresnet.save(model, path)
    again = FaceAnalysis(detector=detector, recognizer=str(path), fast=False, flip=True).get(_photo())[0]
    np.testing.assert_allclose(again.embedding, want, rtol=1e-5, atol=1e-5)


def _tiny_network():
    import torch

    import fresnet

    torch.manual_seed(0)
    return fresnet.create_model("r18", units=[1, 1, 1, 1], filter_list=[8, 8, 8, 16, 16], emb_size=16).eval()


def test_dtype_chooses_the_fast_paths_precision():
    model = _tiny_network()
    detector = FakeDetector([[20, 30, 132, 142]])
    eager = FaceAnalysis(detector=detector, recognizer=model, fast=False).get(_photo())[0].embedding
    app = FaceAnalysis(detector=detector, recognizer=model, dtype="float32")
    assert "float32" in app.recognizer.fast_choice() and "timed against eager" not in app.recognizer.fast_choice()
    np.testing.assert_allclose(app.get(_photo())[0].embedding, eager, rtol=1e-4, atol=1e-4)


def test_calibration_crops_reach_the_fast_path_as_float_nchw(monkeypatch):
    import torch

    import fresnet.inference.fast as fast

    seen = {}
    real = fast.optimize_for_inference

    def spy(model, **options):
        seen.update(options)
        return real(model, device=options["device"], dtype="float32")

    monkeypatch.setattr(fast, "optimize_for_inference", spy)
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    FaceAnalysis(detector=FakeDetector([]), recognizer=_tiny_network(), dtype="int8", calibration=crops)
    assert seen["dtype"] == "int8"
    batch = seen["calibration"]
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32 and tuple(batch.shape) == (3, 3, 112, 112)
    np.testing.assert_array_equal(batch[1, 2].numpy(), crops[1, :, :, 2])


def test_dtype_is_refused_where_it_cannot_apply(tmp_path):
    detector = FakeDetector([])
    with pytest.raises(FresnetError, match="fast=True"):
        FaceAnalysis(detector=detector, recognizer=_tiny_network(), fast=False, dtype="bfloat16")
    with pytest.raises(FresnetError, match="PyTorch recogniser"):
        FaceAnalysis(detector=detector, recognizer=FakeRecognizer(), dtype="int8")
    with pytest.raises(FresnetError, match="unknown dtype 'int4'"):
        FaceAnalysis(detector=detector, recognizer=_tiny_network(), dtype="int4")


def fresnet_loader(model):
    from fresnet.interop.model_loader import load_any

    return load_any(model)


# ---- real photographs, real weights ----

PHOTOS = ("person_a_1", "person_a_2", "person_b_1", "person_b_2", "impostor_1", "impostor_2")


def _real_photos():
    folder = reference_path("faces", "photos")
    return {name: folder / f"{name}.jpg" for name in PHOTOS}


def _scrfd_graph() -> Path:
    path = Path(sys.prefix) / "oracles" / "scrfd.onnx"
    if not path.is_file():
        pytest.skip(f"the scrfd==0.3.0 sdist's graph is not installed at {path} (make venv's oracle step)")
    return path


def _detector(name):
    if name == "scrfd":
        return str(_scrfd_graph())
    pytest.importorskip(f"fresnet.faces.{name}", reason=f"the {name} detector module is not in this tree")
    try:
        FaceAnalysis(detector=name)
    except FresnetError as exc:
        pytest.skip(f"{name}: {exc}")
    return name


def _plausible(face):
    (lx, ly), (rx, ry), (_, ny), (mlx, mly), (mrx, mry) = face.kps
    x1, y1, x2, y2 = face.bbox
    assert lx < rx and mlx < mrx  # left (in the image) before right
    assert max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth
    assert np.all((face.kps[:, 0] > x1) & (face.kps[:, 0] < x2) & (face.kps[:, 1] > y1) & (face.kps[:, 1] < y2))


@pytest.mark.parametrize("detector", ["mtcnn", "scrfd", "yunet"])
def test_every_real_photo_gives_one_face_with_plausible_landmarks(detector):
    app = FaceAnalysis(detector=_detector(detector))
    for name, path in _real_photos().items():
        faces = app.get(path)
        assert len(faces) == 1, f"{name}: {len(faces)} faces"
        _plausible(faces[0])


def _collage(paths, height=360):
    tiles = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            tiles.append(np.asarray(image.resize((round(image.width * height / image.height), height))))
    return np.concatenate(tiles, axis=1)


@pytest.mark.parametrize("detector", ["mtcnn", "scrfd"])
def test_a_collage_of_the_six_gives_six_faces(detector):
    faces = FaceAnalysis(detector=_detector(detector)).get(_collage(_real_photos().values()))
    assert len(faces) == 6
    for face in faces:
        _plausible(face)


def test_sface_scores_both_same_person_pairs_above_every_different_pair():
    pytest.importorskip("fresnet.faces.recognizer", reason="the ONNX recogniser module is not in this tree")
    from fresnet.faces.weights import sface_model

    try:
        sface = sface_model()
    except FresnetError as exc:
        pytest.skip(str(exc))
    app = FaceAnalysis(detector=str(_scrfd_graph()), recognizer=str(sface))
    photos = _real_photos()
    results = app.get_many(list(photos.values()))
    emb = {name: faces[0].normed_embedding for name, faces in zip(photos, results)}
    same = [emb["person_a_1"] @ emb["person_a_2"], emb["person_b_1"] @ emb["person_b_2"]]
    pairs = [(a, b) for i, a in enumerate(PHOTOS) for b in PHOTOS[i + 1:]]
    different = [emb[a] @ emb[b] for a, b in pairs if {a, b} not in ({"person_a_1", "person_a_2"},
                                                                       {"person_b_1", "person_b_2"})]
    assert min(same) > max(different), (same, different)
