"""``fresnet drop-subcenters``: the drop step end to end on a tiny sub-center ArcFace run."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from fresnet.cli import main
from test_margin_training import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import fresnet.train

    folder = tmp_path_factory.mktemp("subcenter") / "run"
    fresnet.train.run(tiny_config(folder, "subcenter_arcface", max_steps=6, checkpoint_every=0))
    return folder


def _independent_angles(folder):
    """Each sample's angle to its class's dominant sub-centre, recomputed here in float64."""
    from fresnet.data.transforms import Resize
    from fresnet.network.model import FResNet
    from fresnet.train.config import load_config
    from fresnet.train.data import build_dataset

    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    cfg = load_config({k: v for k, v in state["config"].items() if k not in ("resume", "overwrite")})
    model = FResNet(cfg.net_config())
    model.load_state_dict(state["model"])
    model.eval()
    data = build_dataset(cfg, cfg.net_config().input_size)
    resize = Resize(tuple(cfg.net_config().input_size))
    with torch.no_grad():
        x = model(torch.stack([resize(data[i][0]).float() for i in range(len(data))])).double().numpy()
    labels = np.array([data[i][1] for i in range(len(data))])
    w = state["fc"]["weight"].double().numpy().reshape(-1, 3, x.shape[1])  # K = 3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w /= np.linalg.norm(w, axis=2, keepdims=True)
    cos = np.einsum("nd,nkd->nk", x, w[labels])
    dominant = np.array([np.bincount(cos[labels == c].argmax(1), minlength=3).argmax() for c in range(len(w))])
    angles = np.degrees(np.arccos(np.clip(cos[np.arange(len(x)), dominant[labels]], -1, 1)))
    return angles, labels, dominant, state["fc"]["weight"]


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_drop_writes_kept_samples_and_k1_centres(run, tmp_path, capsys):
    angles, labels, dominant, weight = _independent_angles(run)
    threshold = float(np.median(angles))  # half the samples either side: both verdicts are exercised
    out = tmp_path / "drop"
    assert main(["drop-subcenters", str(run), "--out", str(out), "--threshold-degrees", str(threshold),
                 "--device", "cpu", "--no-progress", "--batch-size", "5"]) == 0
    printed = capsys.readouterr().out
    rows = _rows(out / "samples.csv")
    assert [int(r["index"]) for r in rows] == list(range(len(labels)))
    assert [int(r["label"]) for r in rows] == labels.tolist()
    assert np.allclose([float(r["angle_deg"]) for r in rows], angles, atol=1e-3)
    kept = [int(r["index"]) for r in rows if r["kept"] == "1"]
    clear = [i for i, a in enumerate(angles) if abs(a - threshold) > 1e-3]  # rounding decides at the threshold
    assert [i for i in clear if i in kept] == [i for i in clear if angles[i] <= threshold]
    assert (out / "kept.txt").read_text().split() == [str(i) for i in kept]
    from safetensors.torch import load_file

    centres = load_file(str(out / "centres.safetensors"))["weight"]
    classes = weight.shape[0] // 3
    assert torch.equal(centres, weight.reshape(classes, 3, -1)[torch.arange(classes), torch.as_tensor(dominant)])
    summary = json.loads((out / "drop.json").read_text())
    assert summary["classes"] == classes == 12 and summary["K"] == 3
    assert summary["samples"] == len(labels) and summary["kept"] == len(kept)
    assert summary["dropped"] == len(labels) - len(kept) > 0 and summary["threshold_degrees"] == threshold
    assert f"kept {len(kept)} of {len(labels)} samples" in printed and "12 classes x 3 sub-centres" in printed


def test_default_threshold_is_75_degrees_and_outputs_are_not_overwritten(run, tmp_path, capsys):
    out = tmp_path / "drop"
    assert main(["drop-subcenters", str(run / "checkpoint.pt"), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    rows = _rows(out / "samples.csv")
    assert all((r["kept"] == "1") == (float(r["angle_deg"]) <= 75.0 + 1e-3) for r in rows)
    assert json.loads((out / "drop.json").read_text())["threshold_degrees"] == 75.0
    capsys.readouterr()
    assert main(["drop-subcenters", str(run), "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["drop-subcenters", str(run), "--out", str(out), "--device", "cpu", "--no-progress",
                 "--overwrite", "--threshold-degrees", "180"]) == 0
    assert json.loads((out / "drop.json").read_text())["dropped"] == 0  # nothing lies beyond 180 degrees


def test_refusals_are_clear_errors(run, tmp_path, capsys):
    import fresnet.train

    other = tmp_path / "arcface"
    fresnet.train.run(tiny_config(other, "arcface", max_steps=1, checkpoint_every=0))
    assert main(["drop-subcenters", str(other), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "trained with loss arcface" in err and "loss=subcenter_arcface" in err and "Traceback" not in err
    assert main(["drop-subcenters", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "no training checkpoint here" in capsys.readouterr().err
    assert main(["drop-subcenters", str(run), "--out", str(tmp_path / "o"), "--threshold-degrees", "200",
                 "--device", "cpu"]) == 2
    assert "(0, 180] degrees" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_image_folder_run_gets_a_list_file_for_pack(tmp_path, capsys):
    import cv2

    import fresnet.train

    rng = np.random.default_rng(0)
    for person in range(6):
        folder = tmp_path / "faces" / f"id{person}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 255, (16, 16, 3))
        for k in range(3):
            image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{k}.png"), image)
    run = tmp_path / "run"
    fresnet.train.run(tiny_config(run, "subcenter_arcface", dataset=str(tmp_path / "faces"), max_steps=2,
                                  checkpoint_every=0, rand_mirror=False))
    out = tmp_path / "drop"
    assert main(["drop-subcenters", str(run), "--out", str(out), "--device", "cpu", "--no-progress",
                 "--threshold-degrees", "60"]) == 0
    assert "kept.lst for fresnet pack" in capsys.readouterr().out
    rows = _rows(out / "samples.csv")
    kept = [int(r["index"]) for r in rows if r["kept"] == "1"]
    lines = [line.split("\t") for line in (out / "kept.lst").read_text().splitlines()]
    assert len(lines) == len(kept) > 0
    for index, (path, label) in zip(kept, lines):
        assert path.endswith(f"id{rows[index]['label']}/{index % 3}.png") and label == rows[index]["label"]
    assert main(["pack", str(out / "kept.lst"), str(tmp_path / "kept" / "train")]) == 0  # the K=1 run's data
    assert (tmp_path / "kept" / "train.rec").stat().st_size > 0


def test_a_recordio_run_gets_its_kept_records_and_the_k1_run_starts_from_the_centres(tmp_path, capsys):
    import cv2

    import fresnet.train
    from fresnet.data import RecordIODataset
    from fresnet.data.recordio.writer import RecordIOWriter
    from fresnet.errors import FresnetError

    rng = np.random.default_rng(1)
    with RecordIOWriter(tmp_path / "data" / "train", image_size=(16, 16)) as writer:
        for person in range(6):
            base = rng.integers(0, 255, (16, 16, 3))
            for _ in range(3):
                image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                writer.add_image(cv2.imencode(".jpg", image)[1].tobytes(), person)
    run = tmp_path / "run"
    fresnet.train.run(tiny_config(run, "subcenter_arcface", dataset=str(tmp_path / "data"), max_steps=2,
                                  checkpoint_every=0, rand_mirror=False))
    out = tmp_path / "drop"
    assert main(["drop-subcenters", str(run), "--out", str(out), "--device", "cpu", "--no-progress",
                 "--threshold-degrees", "60"]) == 0
    assert f"dataset={out / 'kept'}" in capsys.readouterr().out
    rows = _rows(out / "samples.csv")
    kept = [int(r["index"]) for r in rows if r["kept"] == "1"]
    original, copy = RecordIODataset(tmp_path / "data"), RecordIODataset(out / "kept")
    assert 0 < len(copy) == len(kept) < len(original)
    assert [copy.read_raw(i) for i in range(len(copy))] == [original.read_raw(i) for i in kept]
    assert not (out / "kept.lst").exists()
    # the K = 1 run starts from the dominant sub-centres (lr 0: they stay; the full set keeps all 6 classes)
    centres = torch.load(run / "checkpoint.pt", weights_only=True)["fc"]["weight"].reshape(6, 3, -1)
    k1 = tmp_path / "k1"
    config = tiny_config(k1, "arcface", dataset=str(tmp_path / "data"), max_steps=1, checkpoint_every=0, lr=0.0,
                         init_centres=str(out / "centres.safetensors"))
    fresnet.train.run(config)
    from safetensors.torch import load_file

    written = load_file(str(out / "centres.safetensors"))["weight"]
    assert torch.equal(torch.load(k1 / "checkpoint.pt", weights_only=True)["fc"]["weight"], written)
    dominant = [[torch.equal(written[c], centres[c, k]) for k in range(3)].index(True) for c in range(6)]
    assert len(dominant) == 6
    with pytest.raises(FresnetError, match=r"'weight' has shape \[6, 32\], this run needs \[18, 32\]"):
        fresnet.train.run({**config, "loss": "subcenter_arcface", "output": str(tmp_path / "k3")})
    with pytest.raises(FresnetError, match="init_centres .*: no such file"):
        fresnet.train.run({**config, "init_centres": str(tmp_path / "nothing.safetensors"),
                           "output": str(tmp_path / "k4")})
