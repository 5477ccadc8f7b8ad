"""5-point alignment: Umeyama similarity, the ArcFace template, InsightFace's norm_crop bit for bit, landmark files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fresnet.errors import FresnetError
from fresnet.faces.align import (
    ARCFACE_DST,
    check_landmarks_cover,
    crop_geometry,
    estimate_norm,
    landmarks_for,
    norm_crop,
    norm_crops,
    read_landmarks,
    umeyama,
)


def _similarity(scale, angle, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_template_is_the_arcface_one():
    assert ARCFACE_DST.tolist() == [
        [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]
    ]


def test_umeyama_recovers_an_exact_similarity():
    true = _similarity(0.37, 0.4, 12.0, -7.5)
    src = np.array([[100.0, 140.0], [210.0, 150.0], [160.0, 200.0], [110.0, 260.0], [200.0, 262.0]])
    T = umeyama(src, _apply(true, src))
    np.testing.assert_allclose(T[:2], true, atol=1e-10)
    np.testing.assert_allclose(T[2], [0, 0, 1])


def test_estimate_norm_maps_scaled_rotated_landmarks_onto_the_template():
    # a face 2.5x bigger, rotated 20 degrees and shifted: the inverse similarity must come back
    forward = _similarity(2.5, np.deg2rad(20), 40.0, 15.0)
    landmarks = _apply(forward, ARCFACE_DST)
    M = estimate_norm(landmarks)
    # InsightFace's template is float32: the fit lands on it to float32's precision, not float64's
    np.testing.assert_allclose(_apply(M, landmarks), ARCFACE_DST, atol=1e-4)
    # the template itself needs no transform; 224 crops use the template scaled by 2; 128 ones by
    # 128/128 with InsightFace's 8-pixel x-shift
    np.testing.assert_allclose(estimate_norm(ARCFACE_DST), [[1, 0, 0], [0, 1, 0]], atol=1e-5)
    np.testing.assert_allclose(_apply(estimate_norm(landmarks, 224), landmarks), ARCFACE_DST * 2, atol=1e-4)
    np.testing.assert_allclose(_apply(estimate_norm(landmarks, 128), landmarks), ARCFACE_DST + [8, 0], atol=1e-4)
    np.testing.assert_allclose(_apply(estimate_norm(landmarks, 256), landmarks), ARCFACE_DST * 2 + [16, 0], atol=1e-4)
    assert crop_geometry(112) == (1.0, 0.0) and crop_geometry(128) == (1.0, 8.0) and crop_geometry(224) == (2.0, 0.0)
    for bad in (100, 0, -112, 112.0):
        with pytest.raises(FresnetError, match="crop size"):
            estimate_norm(landmarks, bad)


def test_umeyama_never_reflects():
    mirrored = ARCFACE_DST * [-1, 1]  # a mirrored face cannot be fitted by a rotation: det stays +1
    T = umeyama(mirrored, ARCFACE_DST)
    assert np.linalg.det(T[:2, :2]) > 0


def test_norm_crop_puts_the_landmarks_on_the_template():
    forward = _similarity(2.0, np.deg2rad(-15), 60.0, 30.0)
    landmarks = _apply(forward, ARCFACE_DST)
    img = np.zeros((400, 400, 3), np.uint8)
    for x, y in np.rint(landmarks).astype(int):
        img[y - 3:y + 4, x - 3:x + 4] = 255  # a bright square on each landmark
    crop = norm_crop(img, landmarks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in ARCFACE_DST:
        assert crop[int(round(y)), int(round(x))].min() > 200
    assert crop[5, 5].max() == 0
    both = norm_crops(img, np.stack([landmarks, landmarks + 1]), 224)
    assert both.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(both[0], norm_crop(img, landmarks, 224))
    gray = norm_crops(img[..., 0], landmarks[None], 112)
    assert gray.shape == (1, 112, 112)


def _insightface_face_align():
    """InsightFace's own utils/face_align.py, imported by file path (the package's __init__ pulls in far
    more than this module needs); it needs skimage's SimilarityTransform."""
    import importlib.util

    pytest.importorskip("skimage", reason="scikit-image (the test extra) runs InsightFace's face_align")
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("insightface==2.1 (make venv's oracle step, --no-deps) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "face_align.py"
    module_spec = importlib.util.spec_from_file_location("insightface_face_align", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_crop_is_insightfaces_bit_for_bit(dtype):
    oracle = _insightface_face_align()
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for trial in range(12):
        forward = _similarity(rng.uniform(0.6, 4.0), rng.uniform(-0.6, 0.6), rng.uniform(0, 400), rng.uniform(0, 200))
        landmarks = (_apply(forward, ARCFACE_DST) + rng.normal(0, 1.5, (5, 2))).astype(dtype)
        for size in (112, 128, 224, 256):
            np.testing.assert_array_equal(estimate_norm(landmarks, size), oracle.estimate_norm(landmarks, size))
            np.testing.assert_array_equal(norm_crop(img, landmarks, size), oracle.norm_crop(img, landmarks, size))


def test_landmark_files(tmp_path):
    pts = ARCFACE_DST.tolist()
    (tmp_path / "lm.json").write_text(json.dumps({"faces/a.jpg": pts, "b.jpg": pts}))
    table = read_landmarks(tmp_path / "lm.json")
    assert landmarks_for(table, "faces/a.jpg", 0) is not None
    assert landmarks_for(table, "/data/b.jpg", 1) is not None  # matched by file name
    check_landmarks_cover(table, ["faces/a.jpg", "x/b.jpg"], "lm.json")
    with pytest.raises(FresnetError, match="no landmarks for 1 image"):
        check_landmarks_cover(table, ["faces/a.jpg", "c.jpg"], "lm.json")

    flat = " ".join(str(v) for p in pts for v in p)
    (tmp_path / "lm.txt").write_text(f"# name x1 y1 ... x5 y5\na.jpg {flat}\nb.jpg {flat}\n")
    named = read_landmarks(tmp_path / "lm.txt")
    np.testing.assert_allclose(named["b.jpg"], ARCFACE_DST)
    (tmp_path / "order.txt").write_text(f"{flat}\n{flat}\n")
    ordered = read_landmarks(tmp_path / "order.txt")
    assert isinstance(ordered, list) and len(ordered) == 2
    with pytest.raises(FresnetError, match="2 landmark entries for 3 input"):
        check_landmarks_cover(ordered, ["a", "b", "c"], "order.txt")


def test_bad_landmark_files_name_the_line(tmp_path):
    (tmp_path / "bad.txt").write_text("a.jpg 1 2 3\n")
    with pytest.raises(FresnetError, match="line 1"):
        read_landmarks(tmp_path / "bad.txt")
    (tmp_path / "bad.json").write_text('{"a.jpg": [[1, 2], [3, 4]]}')
    with pytest.raises(FresnetError, match="key 'a.jpg'"):
        read_landmarks(tmp_path / "bad.json")
    with pytest.raises(FresnetError, match="5"):
        estimate_norm(np.zeros((4, 2)))
    with pytest.raises(FresnetError, match="same point"):
        estimate_norm(np.ones((5, 2)))


# ---- InsightFace's IJB alignment: float32 template, skimage's Umeyama, OpenCV's fixed-point warp ----

from fresnet.faces.align import (  # noqa: E402
    IJB_TEMPLATE,
    align_ijb_face,
    ijb_alignment_matrix,
    landmarks_68_to_5,
    pixel_batch,
    warp_affine_opencv,
    warp_affine_opencv_batch,
)


def test_ijb_template_is_built_in_float32_with_the_8_pixel_shift():
    assert IJB_TEMPLATE.dtype == np.float32
    np.testing.assert_array_equal(IJB_TEMPLATE[:, 0], np.float32([30.2946, 65.5318, 48.0252, 33.5493, 62.7299]) + np.float32(8))
    assert IJB_TEMPLATE[4, 0] != np.float32(70.7299)  # the float32 sum is not the decimal 70.7299


def test_ijb_alignment_inverts_a_hand_computed_similarity():
    # landmarks = s R template + t, so the alignment must be x -> R^T (x - t) / s
    s, theta, t = 1.7, np.deg2rad(12.0), np.array([31.0, -4.5])
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    landmarks = (IJB_TEMPLATE.astype(np.float64) @ R.T) * s + t
    expected = np.hstack([R.T / s, (-R.T @ t / s)[:, None]])
    np.testing.assert_allclose(ijb_alignment_matrix(landmarks.astype(np.float32)), expected, atol=2e-5)
    # and the estimate is computed in float32, like skimage given float32 points
    exact = umeyama(landmarks, IJB_TEMPLATE.astype(np.float64))[:2]
    assert not np.array_equal(ijb_alignment_matrix(landmarks.astype(np.float32)), exact)


def test_68_landmarks_reduce_to_eye_centres_nose_and_mouth_corners():
    points = np.arange(136, dtype=np.float32).reshape(68, 2)
    five = landmarks_68_to_5(points)
    np.testing.assert_array_equal(five[0], (points[36] + points[39]) / 2)
    np.testing.assert_array_equal(five[1], (points[42] + points[45]) / 2)
    np.testing.assert_array_equal(five[2:], points[[30, 48, 54]])
    np.testing.assert_array_equal(ijb_alignment_matrix(points), ijb_alignment_matrix(five))


def test_opencv_warp_is_fixed_point_like_opencv():
    img = ((np.arange(16)[:, None] * 37 + np.arange(16)[None, :] * 11) % 256).astype(np.uint8)
    out = warp_affine_opencv(img, [[0.83, -0.21, 3.4], [0.19, 0.91, -1.7]], (8, 9))
    # cv2.warpAffine(img, M, (9, 8), borderValue=0) from OpenCV 4.11
    assert out.tolist() == [
        [0, 0, 0, 69, 73, 77, 81, 84, 88], [0, 0, 15, 110, 115, 118, 122, 126, 129],
        [0, 0, 58, 153, 156, 159, 164, 167, 171], [0, 0, 121, 194, 197, 201, 205, 208, 213],
        [0, 0, 145, 227, 239, 193, 159, 226, 85], [0, 1, 17, 21, 64, 68, 32, 35, 40],
        [0, 18, 59, 62, 66, 70, 73, 78, 81], [0, 57, 100, 104, 107, 111, 115, 119, 122],
    ]
    # half a pixel: OpenCV rounds the two-tap mean half up (real-valued bilinear would give x.5)
    half = warp_affine_opencv(img, [[1, 0, 0.5], [0, 1, 0]], (16, 16))
    np.testing.assert_array_equal(half[:, 1:], (img[:, :-1].astype(int) + img[:, 1:] + 1) // 2)
    np.testing.assert_array_equal(warp_affine_opencv(img, [[1, 0, 0], [0, 1, 0]], (16, 16)), img)


def test_batched_warp_equals_one_image_at_a_time():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in ((50, 70), (90, 40), (64, 64))]
    matrices = np.stack([ijb_alignment_matrix(IJB_TEMPLATE * s + 3) for s in (0.5, 0.8, 0.6)])
    import torch

    batch = warp_affine_opencv_batch(*pixel_batch(images), torch.from_numpy(matrices), (112, 112)).numpy()
    for image, matrix, out in zip(images, matrices, batch):
        np.testing.assert_array_equal(out, warp_affine_opencv(image, matrix, (112, 112)))
    gray = images[0][..., 0]
    assert warp_affine_opencv(gray, matrices[0], (112, 112)).shape == (112, 112)
    assert align_ijb_face(images[2], IJB_TEMPLATE * 0.6 + 3).shape == (112, 112, 3)
