"""Synthetic identities: determinism, identity vs nuisance, difficulty, and writing them out."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fresnet.cli import main as cli_main
from fresnet.data import RecordIODataset, SyntheticFaces, load_bin, synthetic
from fresnet.data.synthetic import synthetic_pairs, write_synthetic_dataset
from fresnet.errors import FresnetError


def _best_threshold_accuracy(sims: np.ndarray, issame) -> float:
    """Accuracy at the best threshold chosen on the pairs themselves: an optimistic bound."""
    issame = np.asarray(issame)
    return max(float(((sims > t) == issame).mean()) for t in np.unique(sims))


def test_samples_are_deterministic_and_batch_independent():
    ds = SyntheticFaces(4, 3, seed=7)
    assert len(ds) == 12 and ds.num_classes == 4 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    image, label = ds[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 112) and label == 1
    assert torch.equal(SyntheticFaces(4, 3, seed=7)[5][0], image)  # another instance, same image
    batch = ds.render([11, 5, 0])
    assert np.array_equal(batch[1], image.permute(1, 2, 0).numpy())  # batch rendering = one by one
    assert not torch.equal(SyntheticFaces(4, 3, seed=8)[5][0], image)  # the seed matters
    with pytest.raises(IndexError):
        ds[12]


def test_identity_offset_selects_other_identities_by_number():
    base = SyntheticFaces(5, 4, seed=0, size=48)
    shifted = SyntheticFaces(3, 4, seed=0, identity_offset=2, size=48)
    image, label = shifted[1]
    assert label == 0 and torch.equal(image, base[2 * 4 + 1][0])  # identity 2, image 1


@pytest.mark.parametrize("size", [32, 64, 112])
def test_sizes(size):
    image, _ = SyntheticFaces(1, 1, size=size)[0]
    assert image.shape == (3, size, size)
    with pytest.raises(FresnetError, match="too small"):
        SyntheticFaces(1, 1, size=8)


def test_identity_is_in_the_face_and_nuisance_is_per_image():
    clean = SyntheticFaces(2, 2, seed=3, size=64, nuisance=0.0)
    a, b, other = clean[0][0].float(), clean[1][0].float(), clean[2][0].float()
    centre = (slice(None), slice(20, 44), slice(20, 44))  # inside the face, away from the background
    assert torch.equal(a[centre], b[centre])  # without nuisance, one identity's face is fixed
    assert (a[centre] - other[centre]).abs().mean() > 5  # and another identity's differs
    noisy = SyntheticFaces(2, 2, seed=3, size=64)
    assert (noisy[0][0].float() - noisy[1][0].float()).abs().mean() > 10  # pose, light, noise, occluders


def test_pixels_and_an_untrained_network_are_near_chance():
    images, issame = synthetic_pairs(200, 50, identity_offset=1000, seed=0, size=32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    flat = F.normalize((x - 127.5).flatten(1), dim=1)
    assert _best_threshold_accuracy((flat[0::2] * flat[1::2]).sum(1).numpy(), issame) < 0.66
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    with torch.no_grad():
        emb = F.normalize(net((x - 127.5) / 128), dim=1)
    assert _best_threshold_accuracy((emb[0::2] * emb[1::2]).sum(1).numpy(), issame) < 0.66


def test_pairs_are_balanced_and_use_only_the_held_out_identities(monkeypatch):
    seen = []
    original = synthetic.identity_params
    monkeypatch.setattr(
        synthetic, "identity_params", lambda seed, identity: seen.append(identity) or original(seed, identity)
    )
    images, issame = synthetic_pairs(10, 4, identity_offset=20, seed=1, size=32)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert issame == [True, False] * 5
    assert set(seen) <= {20, 21, 22, 23}
    firsts, seconds = seen[0::2], seen[1::2]
    assert [a == b for a, b in zip(firsts, seconds)] == issame
    again, _ = synthetic_pairs(10, 4, identity_offset=20, seed=1, size=32)
    assert np.array_equal(images, again)


def test_written_dataset_reads_back_as_recordio_and_bin(tmp_path):
    paths = write_synthetic_dataset(tmp_path / "syn", 3, 2, holdout_identities=2, pairs=4, seed=0, size=48)
    assert paths["rec"] == tmp_path / "syn" / "train.rec" and paths["bin"].is_file()
    ds = RecordIODataset(tmp_path / "syn")
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2] and ds.num_classes == 3 and ds.image_size == (48, 48)
    rendered = SyntheticFaces(3, 2, seed=0, size=48)
    for i in range(len(ds)):
        assert (ds[i][0].float() - rendered[i][0].float()).abs().mean() < 6  # JPEG quality 95 (of noisy images)
    images, issame = load_bin(paths["bin"])
    assert images.shape == (8, 48, 48, 3) and issame == [True, False, True, False]
    with pytest.raises(FresnetError, match="already exists"):
        write_synthetic_dataset(tmp_path / "syn", 3, 2, holdout_identities=2, pairs=4, size=48)
    write_synthetic_dataset(tmp_path / "syn", 2, 2, holdout_identities=2, pairs=4, size=48, overwrite=True)
    assert RecordIODataset(tmp_path / "syn").num_classes == 2


def test_synth_command(tmp_path):
    args = ["synth", str(tmp_path / "s"), "--identities", "2", "--images-per-identity", "2", "--holdout", "2",
            "--pairs", "2", "--size", "32"]
    assert cli_main(args) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "property",
        "synthetic_val.bin",
        "train.idx",
        "train.rec",
    ]
    assert cli_main(args) == 2  # exists: a clear error, no traceback
    assert cli_main(args[:-2] + ["--pairs", "1"]) == 2


def test_rendering_on_threads_keeps_order_and_bounds_the_waiting_results():
    import threading

    from fresnet.data.synthetic import in_order_on_threads

    started = []
    lock = threading.Lock()

    def work(item):
        with lock:
            started.append(item)
        return item * item

    consumed = []
    for result in in_order_on_threads(work, range(100), threads=2):
        with lock:
            ahead = len(started) - len(consumed)
        assert ahead <= 2 * 2 + 1  # never more than 2 x threads results waiting, plus the one being taken
        consumed.append(result)
    assert consumed == [i * i for i in range(100)]
    assert list(in_order_on_threads(work, range(5), threads=1)) == [0, 1, 4, 9, 16]


def test_a_set_written_on_threads_is_the_set_written_on_one(tmp_path, monkeypatch):
    from fresnet.data import synthetic

    files = {}
    for threads in (1, 3):
        monkeypatch.setattr(synthetic, "rendering_threads", lambda threads=threads: threads)
        paths = synthetic.write_synthetic_dataset(tmp_path / str(threads), num_identities=6, images_per_identity=50,
                                                  holdout_identities=4, pairs=300, size=32)
        files[threads] = [paths[key].read_bytes() for key in ("rec", "idx", "bin")]
    assert files[1] == files[3]
