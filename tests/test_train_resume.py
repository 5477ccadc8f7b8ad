"""Exact resume after SIGKILL, checkpoint contents, and NaN handling (CPU, a tiny network)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fresnet.errors import FresnetError

TINY_NET = {"units": [1, 1, 1, 1], "filter_list": [8, 8, 16, 16, 32], "input_size": [16, 16], "emb_size": 32,
            "net_output": "E"}  # E has dropout: the resumed run must restore the RNG too


def tiny_config(output, **overrides):
    cfg = {
        "network": "r18", "net": dict(TINY_NET), "loss": "arcface", "loss_s": 16.0, "dataset": "synthetic",
        "synthetic": {"num_identities": 12, "images_per_identity": 6, "holdout_identities": 8, "seed": 3},
        "output": str(output), "max_steps": 10, "batch_size": 16, "lr": 0.05, "log_every": 1,
        "progress": False, "seed": 5, "checkpoint_every": 4, "lr_schedule": "poly", "warmup_steps": 2,
    }
    cfg.update(overrides)
    return cfg


def _weights(output):
    from safetensors.torch import load_file

    ckpt = torch.load(Path(output) / "checkpoint.pt", weights_only=True)
    return load_file(str(Path(output) / "model.safetensors")), ckpt


KILLED_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import fresnet.train

    cfg = eval(sys.argv[1])
    marker = Path(sys.argv[2])

    def stall_after_checkpoint(event, trainer):
        # two steps past the step-4 checkpoint: the parent kills us here with SIGKILL
        if event == "step" and trainer.step == 6:
            marker.write_text("6")
            time.sleep(600)

    fresnet.train.run(cfg, callbacks=[stall_after_checkpoint])
""")


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path):
    torch.set_num_threads(1)
    import fresnet.train

    straight = fresnet.train.run(tiny_config(tmp_path / "straight"))
    assert straight.steps == 10

    killed = tmp_path / "killed"
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, repr(tiny_config(killed)), str(marker)])
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert child.poll() is None, "the child exited before reaching step 6"
            assert time.time() < deadline, "the child did not reach step 6"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    ckpt = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4
    # a fresh run must not silently overwrite the killed one
    with pytest.raises(FresnetError, match="--resume"):
        fresnet.train.run(tiny_config(killed))

    resumed = fresnet.train.run(tiny_config(killed), resume=True)
    assert resumed.steps == 10
    want, want_ckpt = _weights(tmp_path / "straight")
    got, got_ckpt = _weights(killed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert torch.equal(want_ckpt["fc"]["weight"], got_ckpt["fc"]["weight"])
    for key, buf in want_ckpt["momentum"].items():
        assert torch.equal(buf, got_ckpt["momentum"][key]), key
    # the log continues without the rows of the lost steps 5-6 twice
    steps = [row["step"] for row in resumed.history]
    assert [int(s) for s in steps] == list(range(1, 11))
    assert resumed.final_loss == pytest.approx(straight.final_loss, abs=0)


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    import fresnet
    import fresnet.train

    result = fresnet.train.run(tiny_config(tmp_path, max_steps=3, checkpoint_every=0, loss="softmax", loss_s=None))
    ckpt = torch.load(result.checkpoint_path, weights_only=True)
    assert ckpt["step"] == 3 and ckpt["world_size"] == 1
    assert ckpt["fc"]["weight"].shape == (12, 32) and ckpt["fc"]["bias"].shape == (12,)  # softmax: fc7 bias
    assert set(ckpt["rng"]) == {"cpu", "cuda"} and len(ckpt["rng"]["cpu"]) == 1
    assert "fc.weight" in ckpt["momentum"] and any(k.startswith("backbone.") for k in ckpt["momentum"])
    model = fresnet.load(result.model_path)  # the backbone, for inference
    assert model.config.emb_size == 32
    assert (tmp_path / "log.csv").read_text().startswith("step,epoch,samples,loss,lr")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    import fresnet.train
    from fresnet.train.loop import TrainingDiverged

    def poison(event, trainer):
        if event == "step" and trainer.step == 3:
            with torch.no_grad():
                trainer.model.stem.conv0.weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 4.*last good checkpoint") as info:
        fresnet.train.run(tiny_config(tmp_path, checkpoint_every=2), callbacks=[poison])
    assert "checkpoint.pt" in str(info.value)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
