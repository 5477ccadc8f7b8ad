"""IJB feature extraction from pictures (alignment, batching, resume) and the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fresnet.cli import main
from fresnet.errors import FresnetError
from fresnet.faces.align import align_ijb_face
from fresnet.eval.ijb.extract import extract_features
from fresnet.eval.ijb.layout import read_meta
from fresnet.eval.ijb.synthetic import write_synthetic_ijb
from fresnet.interop.model_loader import TorchEmbedder

TINY = ["--set", "units=[1,1,1,1]", "--set", "filter_list=[8,8,8,8,8]", "--set", "emb_size=16"]


class BlockMeans:
    """An embedder with only ``embed`` (like ONNX): the means of 14x14 blocks, 192 numbers."""

    name, kind, input_size = "block-means", "test", (112, 112)

    def __init__(self):
        self.images = 0

    def embed(self, batch):
        x = np.asarray(batch, dtype=np.float32)
        self.images += len(x)
        return x.reshape(len(x), 3, 8, 14, 8, 14).mean(axis=(3, 5)).reshape(len(x), -1)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    write_synthetic_ijb(root, 40, seed=5)
    return root, read_meta(root)


def _extract(meta, out, embedder=None, **options):
    options.setdefault("batch_size", 8)
    options.setdefault("workers", 0)
    return extract_features(embedder or BlockMeans(), meta.paths, meta.faces, out, model="block-means", **options)


def test_rows_are_the_aligned_face_then_its_mirror(release, tmp_path):
    root, meta = release
    features = np.asarray(_extract(meta, tmp_path / "f.npy"))
    assert features.shape == (40, 2 * 192) and features.dtype == np.float32
    from fresnet.data.decode import read_image_file

    face = align_ijb_face(read_image_file(root / "loose_crop" / meta.faces.names[7]), meta.faces.landmarks[7])
    x = face.transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_array_equal(features[7], np.concatenate([BlockMeans().embed(x), BlockMeans().embed(x[..., ::-1])], 1)[0])
    no_flip = np.asarray(_extract(meta, tmp_path / "g.npy", flip=False))
    np.testing.assert_array_equal(no_flip, features[:, :192])


def test_torch_models_workers_and_the_device_side_warp_give_the_same_rows(release, tmp_path):
    _, meta = release
    reference = np.asarray(_extract(meta, tmp_path / "a.npy"))
    pool = torch.nn.Sequential(torch.nn.AvgPool2d(14), torch.nn.Flatten())
    embedder = TorchEmbedder(pool, name="pool", kind="test")
    # a worker process that decodes and warps, and the main-process warp that a GPU run uses
    in_worker = np.asarray(_extract(meta, tmp_path / "b.npy", embedder, workers=1))
    from fresnet.eval.ijb import extract

    dataset = extract.LooseCropBatches(meta.paths, meta.faces, 16, align=False)
    device_side = np.concatenate([extract.embed_faces(embedder, extract.aligned_faces(dataset[k], "cpu"), True)
                                  for k in range(len(dataset))])
    np.testing.assert_allclose(in_worker, reference, rtol=1e-6, atol=1e-4)  # pooling order differs: float noise
    np.testing.assert_array_equal(device_side, in_worker)


def test_an_interrupted_extraction_resumes_where_it_stopped(release, tmp_path):
    _, meta = release
    complete = np.asarray(_extract(meta, tmp_path / "whole.npy"))
    out = tmp_path / "f.npy"
    batches = []

    def stop_after_two(n):
        batches.append(n)
        if len(batches) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _extract(meta, out, progress=stop_after_two)
    state = json.loads((tmp_path / "f.npy.progress.json").read_text())
    assert state["done"] == 16 and state["complete"] is False and state["faces"] == 40
    embedder, started = BlockMeans(), []
    resumed = np.asarray(_extract(meta, out, embedder, on_start=started.append))
    assert started == [16]
    assert embedder.images == 2 * (40 - 16)  # only the faces left (and their mirrors) were embedded
    np.testing.assert_array_equal(resumed, complete)
    assert json.loads((tmp_path / "f.npy.progress.json").read_text())["complete"] is True
    # run again: nothing to do
    again = BlockMeans()
    np.testing.assert_array_equal(np.asarray(_extract(meta, out, again)), complete)
    assert again.images == 0


def test_resume_refuses_features_of_another_model_or_an_unknown_file(release, tmp_path):
    _, meta = release
    out = tmp_path / "f.npy"
    _extract(meta, out)
    with pytest.raises(FresnetError, match="extracted with model = 'block-means', this run has 'r50'"):
        extract_features(BlockMeans(), meta.paths, meta.faces, out, model="r50", workers=0)
    (tmp_path / "f.npy.progress.json").unlink()
    with pytest.raises(FresnetError, match="f.npy exists but is not a resumable extraction"):
        _extract(meta, out)


def test_a_missing_picture_is_named_with_its_line(release, tmp_path):
    root, meta = release
    picture = root / "loose_crop" / meta.faces.names[11]
    data = picture.read_bytes()
    picture.unlink()
    try:
        with pytest.raises(FresnetError, match=rf"{meta.faces.names[11]} \(line 12 of ijbc_name_5pts_score.txt\)"):
            _extract(meta, tmp_path / "f.npy")
    finally:
        picture.write_bytes(data)


def test_command_line_synth_extract_evaluate_and_reuse(tmp_path, capsys):
    root, out = tmp_path / "ijb", tmp_path / "report"
    assert main(["synth", "--ijb", str(root), "--faces", "24", "--seed", "1"]) == 0
    assert main(["eval", "r18", *TINY, "--ijb", str(root), "--out", str(out), "--batch-size", "12"]) == 0
    printed = capsys.readouterr().out
    assert "TAR (%) at FAR" in printed and "TPIR @ FPIR=0.01, gallery G1" in printed
    report = json.loads((out / "ijb.json").read_text())
    assert report["mode"] == "F1N1D1" and report["verification"]["pairs"] > 0
    assert set(report["identification"]["tpir_at_fpir"]) == {"G1", "G2"}
    assert report["extracted_faces"] == 24
    assert (out / "ijb_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    features = out / "ijb_features.npy"
    assert np.load(features).shape[0] == 24
    # saved features, no model needed; another mode
    again = tmp_path / "again"
    assert main(["eval", "--ijb", str(root), "--features", str(features), "--no-norm-score", "--out", str(again)]) == 0
    assert json.loads((again / "ijb.json").read_text())["mode"] == "F1N0D1"
    assert main(["eval", "--ijb", str(root)]) == 2  # neither a model nor features
    assert "MODEL is missing" in capsys.readouterr().err
