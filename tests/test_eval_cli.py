"""``fresnet eval``, ``fresnet embed`` and ``fresnet compare`` end to end, on tiny networks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import reference_path
from fresnet.cli import main
from fresnet.faces.align import ARCFACE_DST

TINY = ["--set", "units=[1,1,1,1]", "--set", "filter_list=[8,8,8,16,16]", "--set", "emb_size=16"]
SMALL = ["--set", "units=[1,1,1,1]", "--set", "input_size=32x32", "--set", "emb_size=16"]  # for .bin packs of 32x32


def test_eval_small_lfw(tmp_path, capsys):
    pack = reference_path("recordio", "small_lfw.bin")
    out = tmp_path / "report"
    assert main(["eval", "r18", *TINY, "--bin", str(pack), "--out", str(out), "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "small_lfw" in printed and "accuracy" in printed
    report = json.loads((out / "results.json").read_text())
    target = report["targets"]["small_lfw"]
    assert target["num_pairs"] == 10 and target["num_positive"] == 10 and target["num_negative"] == 0
    assert len(target["fold_accuracies"]) == 10
    assert target["accuracy"] == pytest.approx(np.mean(target["fold_accuracies"]))
    # all pairs are "same": no ROC numbers, and the JSON says so instead of inventing them
    assert target["auc"] is None and all(v is None for v in target["tar_at_far"].values())
    assert report["flip"] is True
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_two_packs_with_negatives(tmp_path, capsys):
    from fresnet.data.verification_bin import save_bin

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
        save_bin(tmp_path / f"{name}.bin", images, [i % 2 == 0 for i in range(20)])
    out = tmp_path / "report"
    code = main(["eval", "r18", *SMALL, "--bin", str(tmp_path / "a.bin"), "--bin", str(tmp_path / "b.bin"),
                 "--out", str(out), "--no-flip", "--nfolds", "5"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["targets"]) == {"a", "b"} and report["flip"] is False
    for target in report["targets"].values():
        assert target["nfolds"] == 5 and target["num_negative"] == 10
        assert 0.0 <= target["auc"] <= 1.0 and 0.0 <= target["eer"] <= 1.0
        assert target["tar_at_far"]["1e-01"] is not None  # 10 negatives resolve FAR 0.1
        assert target["tar_at_far"]["1e-02"] is None  # ... but not 0.01
    assert (out / "roc.png").stat().st_size > 1000


def test_eval_missing_pack_is_a_clean_error(tmp_path, capsys):
    assert main(["eval", "r18", *TINY, "--bin", str(tmp_path / "nope.bin"), "--out", str(tmp_path)]) == 2
    assert "nope.bin" in capsys.readouterr().err


def _face_files(folder, count=3, size=160):
    """Images with their landmarks: the ArcFace template scaled up and shifted, noise around it."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    landmarks = {}
    for i in range(count):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        name = folder / f"face{i}.png"
        Image.fromarray(img).save(name)
        landmarks[name.name] = (ARCFACE_DST * 1.2 + 5 + i).tolist()
    return landmarks


def test_embed_folder_with_landmarks(tmp_path, capsys):
    landmarks = _face_files(tmp_path / "faces")
    (tmp_path / "lm.json").write_text(json.dumps(landmarks))
    out = tmp_path / "emb.npy"
    code = main(["embed", "r18", *TINY, str(tmp_path / "faces"), "-o", str(out), "--landmarks", str(tmp_path / "lm.json")])
    assert code == 0
    emb = np.load(out)
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    names = (tmp_path / "emb.names.txt").read_text().split()
    assert [n.rsplit("/", 1)[-1] for n in names] == ["face0.png", "face1.png", "face2.png"]
    # landmarks missing for an image: one clear error
    (tmp_path / "partial.json").write_text(json.dumps({"face0.png": landmarks["face0.png"]}))
    assert main(["embed", "r18", *TINY, str(tmp_path / "faces"), "-o", str(out),
                 "--landmarks", str(tmp_path / "lm.json")]) == 2  # the one overwrite rule
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert main(["embed", "r18", *TINY, str(tmp_path / "faces"), "-o", str(out), "--overwrite",
                 "--landmarks", str(tmp_path / "partial.json")]) == 2
    assert "no landmarks for 2 image" in capsys.readouterr().err


def test_embed_recordio_and_bin(tmp_path):
    rec = reference_path("recordio", "train.rec")
    pack = reference_path("recordio", "small_lfw.bin")
    out = tmp_path / "emb.npy"
    assert main(["embed", "r18", *TINY, str(rec), str(pack), "-o", str(out), "--no-flip"]) == 0
    assert np.load(out).shape == (30, 16)
    names = (tmp_path / "emb.names.txt").read_text().splitlines()
    assert names[0].endswith("train.rec#1") and names[-1].endswith("small_lfw.bin#19")


def test_compare(tmp_path, capsys):
    landmarks = _face_files(tmp_path / "faces", count=2)
    a, b = tmp_path / "faces" / "face0.png", tmp_path / "faces" / "face1.png"
    (tmp_path / "lm.json").write_text(json.dumps(landmarks))
    lm = ["--landmarks", str(tmp_path / "lm.json")]
    assert main(["compare", "r18", *TINY, str(a), str(a), *lm]) == 0
    out = capsys.readouterr().out
    assert "cosine similarity: 1.0000" in out and "same person" in out
    assert "RANDOM weights" in out.splitlines()[-1]  # a preset's verdict says its weights are random
    assert main(["compare", "r18", *TINY, str(a), str(b), "--threshold", "0.999", *lm]) == 0
    out = capsys.readouterr().out
    assert "different people" in out and "given with --threshold" in out
    # a threshold outside [-1, 1] is refused; a photo with no face is named, not resized
    with pytest.raises(SystemExit):
        main(["compare", "r18", *TINY, str(a), str(b), "--threshold", "1.5"])
    assert "[-1, 1]" in capsys.readouterr().err


def test_embed_and_eval_with_the_fast_path(tmp_path, capsys):
    """--fast gives the same embeddings as the eager model, to the fast path's promise, and says
    which path it picked."""
    pack = reference_path("recordio", "small_lfw.bin")
    plain, fast = tmp_path / "plain.npy", tmp_path / "fast.npy"
    assert main(["embed", "r18", *TINY, str(pack), "-o", str(plain)]) == 0
    assert main(["embed", "r18", *TINY, str(pack), "-o", str(fast), "--fast"]) == 0
    assert "fast path: cpu," in capsys.readouterr().err
    a, b = np.load(plain), np.load(fast)
    assert a.shape == b.shape == (20, 16)
    assert np.min(np.sum(a * b, axis=1)) >= 0.9995  # both L2-normalised: the dot product is the cosine
    out = tmp_path / "report"
    assert main(["eval", "r18", *TINY, "--bin", str(pack), "--out", str(out), "--fast"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["fast_path"].startswith("cpu, ")


def test_fast_flag_refuses_onnx_models(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"not really")
    pack = reference_path("recordio", "small_lfw.bin")
    assert main(["embed", str(tmp_path / "m.onnx"), str(pack), "--fast"]) == 2
    assert "--fast applies to PyTorch models" in capsys.readouterr().err
