"""``fresnet gallery ...`` and the calibration it stores: thresholds from a verification pack and
from an IJB-format release, with their provenance."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fresnet.cli import main
from fresnet.gallery.calibrate import threshold_from_pairs
from fresnet.gallery.gallery import Gallery


def units(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_threshold_from_pairs_meets_the_target_false_match_rate():
    rng = np.random.default_rng(0)
    genuine = rng.uniform(0.3, 0.9, 500)
    impostor = rng.uniform(-0.2, 0.5, 1000)
    scores = np.r_[genuine, impostor]
    same = np.r_[np.ones(500, bool), np.zeros(1000, bool)]
    result = threshold_from_pairs(scores, same, 0.01)
    # at most 10 of the 1000 impostors at or above the threshold, and the lowest such threshold
    assert np.sum(impostor >= result["threshold"]) <= 10
    eleventh = np.sort(impostor)[::-1][10]
    assert eleventh < result["threshold"]
    assert not np.any((genuine > eleventh) & (genuine < result["threshold"]))  # the best TMR at that FMR
    assert result["false_match_rate"] <= 0.01 and result["impostor_pairs"] == 1000
    with pytest.raises(Exception, match="cannot be measured"):
        threshold_from_pairs(scores, same, 1e-4)


def test_create_enrol_list_search_remove(tmp_path, capsys):
    rng = np.random.default_rng(1)
    db = str(tmp_path / "people.db")
    people = {"ada": units(rng, 3), "grace": units(rng, 2), "alan": units(rng, 1)}
    np.savez(tmp_path / "people.npz", **people)
    assert main(["gallery", "create", db, "--embedding-size", "16"]) == 0
    assert main(["gallery", "create", db, "--embedding-size", "16"]) == 2  # exists: refused, no traceback
    assert main(["gallery", "enrol", db, "--embeddings", str(tmp_path / "people.npz")]) == 0
    np.save(tmp_path / "q.npy", np.stack([people["grace"][1], people["alan"][0]]))
    capsys.readouterr()
    assert main(["gallery", "search", db, "--embeddings", str(tmp_path / "q.npy"), "-k", "2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["results"]
    assert [r["matches"][0]["name"] for r in found] == ["grace", "alan"]
    assert found[0]["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert main(["gallery", "remove", db, "alan"]) == 0
    capsys.readouterr()
    assert main(["gallery", "list", db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["name"], i["samples"]) for i in listed["identities"]] == [("ada", 3), ("grace", 2)]
    assert main(["gallery", "remove", db, "nobody"]) == 2
    assert "no identity named 'nobody'" in capsys.readouterr().err
    assert main(["gallery", "enrol", db, "../evil", "--embeddings", str(tmp_path / "q.npy")]) == 2
    assert main(["gallery", "search", db]) == 2


def test_calibrate_from_a_verification_pack_is_stored_with_provenance(tmp_path, capsys):
    from fresnet.data.verification_bin import save_bin

    rng = np.random.default_rng(2)
    faces = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    images, issame = [], []
    for pair in range(40):  # same: a face and a lightly noised copy; different: two faces
        a = faces[pair % 12]
        same = pair % 2 == 0
        b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8) if same \
            else faces[(pair + 5) % 12]
        images += [a, b]
        issame.append(same)
    save_bin(tmp_path / "pairs.bin", np.stack(images), issame)
    db = str(tmp_path / "g.db")
    assert main(["gallery", "create", db, "--embedding-size", "512"]) == 0
    assert main(["gallery", "calibrate", db, "--pack", str(tmp_path / "pairs.bin"), "--model", "r18",
                 "--fmr", "0.1", "--batch-size", "16"]) == 0
    with Gallery(db) as gallery:
        stored = gallery.calibration
    assert stored["target_false_match_rate"] == 0.1 and stored["false_match_rate"] <= 0.1
    assert stored["source_digest"].startswith("sha256:") and stored["model_digest"] == "preset:r18"
    assert stored["impostor_pairs"] == 20 and "calibrated" in stored
    capsys.readouterr()
    assert main(["gallery", "list", db]) == 0
    assert f"calibrated threshold {stored['threshold']:.4f}" in capsys.readouterr().out


def test_calibrate_from_an_ijb_release(tmp_path):
    from fresnet.eval.ijb.protocol import evaluate
    from fresnet.eval.ijb.synthetic import synthetic_features, synthetic_ijb, write_meta

    ijb = synthetic_ijb(400, seed=2)
    write_meta(ijb, tmp_path / "ijb")
    features = synthetic_features(ijb, dim=32, seed=2)
    np.save(tmp_path / "f.npy", features)
    db = str(tmp_path / "g.db")
    assert main(["gallery", "create", db, "--embedding-size", "32"]) == 0
    assert main(["gallery", "calibrate", db, "--ijb", str(tmp_path / "ijb"), "--features", str(tmp_path / "f.npy"),
                 "--fmr", "0.1", "--ijb-gallery", "G1"]) == 0
    expected = evaluate(tmp_path / "ijb", tmp_path / "f.npy").tpir_at_fpir["G1"][0.1]
    with Gallery(db) as gallery:
        stored = gallery.calibration
    assert stored["true_positive_identification_rate"] == expected[0]
    assert stored["threshold"] == pytest.approx(expected[1], abs=1e-6) and stored["threshold"] > expected[1]
    assert "G1" in stored["method"]
    assert main(["gallery", "calibrate", db, "--ijb", str(tmp_path / "ijb"), "--features",
                 str(tmp_path / "f.npy"), "--fmr", "0.05"]) == 2


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "g.db")
    assert main(["serve", "--gallery", db, "--model", "r18", "--host", "0.0.0.0"]) == 2
    assert "needs an API key" in capsys.readouterr().err
    monkeypatch.setenv("SHORT_KEY", "abc")
    assert main(["serve", "--gallery", db, "--model", "r18", "--host", "0.0.0.0", "--api-key-env", "SHORT_KEY"]) == 2
    assert "at least 16" in capsys.readouterr().err
    assert main(["serve", "--gallery", db, "--model", "r18", "--api-key-env", "UNSET_KEY_VARIABLE"]) == 2
    assert "is not set" in capsys.readouterr().err
    assert not (tmp_path / "g.db").exists()  # refused before anything was created
