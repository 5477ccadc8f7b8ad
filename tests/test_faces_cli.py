"""``fresnet detect``, ``fresnet embed`` and ``fresnet compare`` on real photographs."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import reference_path
from fresnet.cli import main

TINY = ["--set", "units=[1,1,1,1]", "--set", "filter_list=[8,8,8,16,16]", "--set", "emb_size=16"]


@pytest.fixture(scope="module")
def scrfd():
    path = Path(sys.prefix) / "oracles" / "scrfd.onnx"
    if not path.is_file():
        pytest.skip(f"the scrfd==0.3.0 sdist's graph is not installed at {path} (make venv's oracle step)")
    return ["--detector", str(path)]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    source = reference_path("faces", "photos")
    for name in ("person_a_1.jpg", "person_a_2.jpg", "impostor_1.jpg"):
        shutil.copy(source / name, folder / name)
    return folder


def test_detect_prints_json_lines_and_draws(photos, scrfd, tmp_path, capsys):
    drawn = tmp_path / "drawn"
    assert main(["detect", str(photos), *scrfd, "--draw", str(drawn)]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(line["file"]).name for line in lines] == ["impostor_1.jpg", "person_a_1.jpg", "person_a_2.jpg"]
    for line in lines:
        assert set(line) == {"file", "face", "box", "score", "landmarks"}
        assert len(line["box"]) == 4 and len(line["landmarks"]) == 5 and 0.5 < line["score"] <= 1
    assert "3 face(s) in 3 photo(s)" in captured.err
    for name in ("impostor_1", "person_a_1", "person_a_2"):
        with Image.open(drawn / f"{name}.jpg") as image, Image.open(photos / f"{name}.jpg") as original:
            assert image.size == original.size
    # the one overwrite rule: drawn photos are not replaced silently
    assert main(["detect", str(photos), *scrfd, "--draw", str(drawn)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["detect", str(photos), *scrfd, "--draw", str(drawn), "--overwrite"]) == 0


@pytest.mark.parametrize("suffix", [".npz", ".parquet", ".npy"])
def test_embed_photos(photos, scrfd, tmp_path, suffix, capsys):
    out = tmp_path / f"emb{suffix}"
    blank = photos / "blank.png"
    Image.new("RGB", (300, 200), (90, 90, 90)).save(blank)  # a photo without a face: no row, no error
    assert main(["embed", str(photos), "--model", "r18", *TINY, *scrfd, "--out", str(out), "--no-flip"]) == 0
    assert "1 photo(s) without a face" in capsys.readouterr().err
    if suffix == ".npz":
        data = np.load(out)
        assert data["embeddings"].shape == (3, 16) and data["boxes"].shape == (3, 4)
        assert data["landmarks"].shape == (3, 5, 2) and data["scores"].min() > 0.5
        assert [Path(f).name for f in data["files"]] == ["impostor_1.jpg", "person_a_1.jpg", "person_a_2.jpg"]
        np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)
    elif suffix == ".parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(out).to_pydict()
        assert len(table["embedding"]) == 3 and len(table["embedding"][0]) == 16 and len(table["box"][0]) == 4
    else:
        assert np.load(out).shape == (3, 16)
        names = (tmp_path / "emb.names.txt").read_text().splitlines()  # <stem>.names.txt
        assert [Path(n).name for n in names] == ["impostor_1.jpg#0", "person_a_1.jpg#0", "person_a_2.jpg#0"]


def test_embed_uses_aligned_crops_as_they_are(tmp_path):
    crops = tmp_path / "crops"
    crops.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(crops / f"c{i}.png")
    out = tmp_path / "e.npz"
    # no detector is ever built for crops: a missing detector graph does not matter
    assert main(["embed", "r18", *TINY, str(crops), "-o", str(out), "--detector", "nowhere.onnx"]) == 0
    data = np.load(out)
    assert data["embeddings"].shape == (2, 16) and list(data["face"]) == [-1, -1]


def test_dataset_faces_of_another_size_are_refused_not_resized(tmp_path, capsys):
    pack = reference_path("recordio", "small_lfw.bin")  # 112x112 faces
    small = ["--set", "units=[1,1,1,1]", "--set", "input_size=32x32", "--set", "emb_size=16"]
    assert main(["embed", "r18", *small, str(pack), "-o", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert "is not an aligned crop of the model's 32x32 input" in err and "Traceback" not in err


def test_compare_photos_with_a_preset_says_the_weights_are_random(photos, scrfd, capsys):
    a, b = photos / "person_a_1.jpg", photos / "impostor_1.jpg"
    assert main(["compare", "r18", *TINY, str(a), str(b), *scrfd]) == 0
    out = capsys.readouterr().out
    assert "face detected" in out and "cosine similarity" in out
    verdict = out.splitlines()[-1]
    assert (
        verdict.startswith("verdict:") and "RANDOM weights" in verdict and "threshold 0.3: fresnet's default" in verdict
    )
    assert main(["compare", str(a), str(b), "--model", "r18", *TINY, *scrfd, "--threshold", "-1"]) == 0
    assert "same person" in capsys.readouterr().out


def test_bad_inputs_end_in_one_line_not_a_traceback(photos, scrfd, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes((photos / "person_a_1.jpg").read_bytes()[:500])
    (tmp_path / "blank.png").write_bytes(b"")
    blank = tmp_path / "grey.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    for argv, message in (
        (["detect", str(tmp_path / "broken.jpg"), *scrfd], "broken.jpg"),
        (["detect", str(tmp_path / "blank.png"), *scrfd], "empty"),
        (["embed", str(tmp_path / "broken.jpg"), "--model", "r18", *TINY, *scrfd, "-o", str(tmp_path / "x.npz")],
         "broken.jpg"),
        (["embed", str(blank), "--model", "r18", *TINY, *scrfd, "-o", str(tmp_path / "y.npz")], "no face found"),
        (["compare", "r18", *TINY, str(blank), str(photos / "person_a_1.jpg"), *scrfd], "grey.png: no face found"),
        (["embed", str(photos), "--model", "r18", *TINY, "--detector", "scrfd", "-o", str(tmp_path / "z.npz")],
         "needs its graph"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


@pytest.mark.parametrize("given, device, expected",
                         [([], "cpu", 8), ([], "cuda", 64), (["--batch-size", "3"], "cpu", 3)])
def test_embed_batches_faces_by_the_devices_default_unless_told(given, device, expected):
    from fresnet.cli import build_parser
    from fresnet.cli.faces import _LazyPipeline

    args = build_parser().parse_args(["embed", "r18", "photo.jpg", *given])
    assert _LazyPipeline(args, None, device).batch_size == expected
    eval_args = build_parser().parse_args(["eval", "r18"])
    assert eval_args.batch_size == 64  # evaluation keeps its own default
