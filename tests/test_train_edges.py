"""What a user meets around a training run: resuming with other val_targets or another network, a
damaged log or random state, Ctrl-C, same-named packs (issue 24), on a tiny CPU network."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest
import torch

import fresnet.train
from fresnet.cli import main as cli_main
from fresnet.errors import FresnetError

TINY_NET = {"units": [1, 1, 1, 1], "filter_list": [8, 8, 16, 16, 32], "input_size": [16, 16], "emb_size": 32,
            "net_output": "E"}
SYNTHETIC = {"num_identities": 12, "images_per_identity": 6, "holdout_identities": 8, "seed": 3}


def tiny(output, **overrides):
    cfg = {"network": "r18", "net": dict(TINY_NET), "loss": "arcface", "loss_s": 16.0, "dataset": "synthetic",
           "synthetic": dict(SYNTHETIC), "output": str(output), "max_steps": 4, "batch_size": 16, "lr": 0.05,
           "log_every": 1, "progress": False, "seed": 5, "checkpoint_every": 2, "val_pairs": 20}
    cfg.update(overrides)
    return cfg


def read_log(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 4-step run that verified on the synthetic pairs (checkpoint at step 4)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train") / "run"
    fresnet.train.run(tiny(out, val_targets=["synthetic"], verbose=2))
    return out


def copy_of(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def test_resume_with_other_val_targets_keeps_every_logged_column(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    columns, rows = read_log(out / "log.csv")
    assert "val_synthetic" in columns and rows[1]["val_synthetic"] and rows[3]["val_synthetic"]
    fresnet.train.run(tiny(out, val_targets=[], max_steps=6), resume=True)
    after_columns, after = read_log(out / "log.csv")
    assert "val_synthetic" in after_columns  # was dropped with the earlier results
    assert [r["val_synthetic"] for r in after[:4]] == [r["val_synthetic"] for r in rows]
    assert [int(r["step"]) for r in after] == list(range(1, 7)) and after[5]["val_synthetic"] == ""


def test_a_binary_log_is_moved_aside_and_a_new_one_starts(finished, tmp_path, caplog):
    out = copy_of(finished, tmp_path)
    garbage = b"\x00\xff\xfe binary \x80\x81" * 20
    (out / "log.csv").write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="fresnet"):
        result = fresnet.train.run(tiny(out, val_targets=[], max_steps=6), resume=True)
    assert (out / "log.csv.damaged").read_bytes() == garbage  # kept, not overwritten
    assert [int(r["step"]) for r in result.history] == [5, 6]
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "log.csv" in message and "not UTF-8" in message and "log.csv.damaged" in message
    assert "new log starts at step 4" in message


def test_garbage_rng_state_starts_fresh_streams_with_a_warning(finished, tmp_path, caplog):
    out = copy_of(finished, tmp_path)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["rng"]["cpu"] = [torch.arange(100, dtype=torch.uint8)]  # right type, not a generator state
    torch.save(state, out / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="fresnet"):
        result = fresnet.train.run(tiny(out, val_targets=[], max_steps=6), resume=True)
    assert result.steps == 6
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "random-generator state is not valid" in message and "start fresh" in message
    assert "weights, optimiser and data position are exact" in message


def test_resume_with_another_network_says_the_config_changed(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    with pytest.raises(FresnetError, match="the config changed") as info:
        fresnet.train.run(tiny(out, net={**TINY_NET, "emb_size": 64}, max_steps=6), resume=True)
    assert "emb_size 32 -> 64" in str(info.value) and "tamper" not in str(info.value)
    assert "edited" not in str(info.value)


def test_same_named_packs_log_unique_columns(tmp_path):
    from fresnet.data.synthetic import synthetic_pairs
    from fresnet.data.verification_bin import save_bin

    images, issame = synthetic_pairs(10, 8, identity_offset=100, seed=1, size=16)
    (tmp_path / "sub").mkdir()
    save_bin(tmp_path / "mine.bin", images, issame)
    images2, issame2 = synthetic_pairs(10, 8, identity_offset=200, seed=2, size=16)
    save_bin(tmp_path / "sub" / "mine.bin", images2, issame2)
    targets = [str(tmp_path / "mine.bin"), str(tmp_path / "sub" / "mine.bin")]
    result = fresnet.train.run(tiny(tmp_path / "run", val_targets=targets, max_steps=2, checkpoint_every=0))
    columns, rows = read_log(tmp_path / "run" / "log.csv")
    assert [c for c in columns if c.startswith("val_")] == ["val_mine", "val_sub_mine"]
    assert set(result.metrics) == {"mine", "sub_mine"} and rows[-1]["val_mine"] and rows[-1]["val_sub_mine"]


def test_unique_pack_names():
    from fresnet.eval.verification import unique_pack_names

    assert unique_pack_names(["mine.bin", "sub/mine.bin"]) == ["mine", "sub_mine"]
    assert unique_pack_names(["a/x/lfw.bin", "b/x/lfw.bin", "cfp_fp.bin"]) == ["a_x_lfw", "b_x_lfw", "cfp_fp"]
    assert unique_pack_names(["lfw.bin", "lfw.bin", "synthetic"]) == ["lfw", "lfw_2", "synthetic"]


def test_ctrl_c_keeps_a_checkpoint_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """checkpoint_every=0 kept nothing on Ctrl-C; now the last finished step is kept, the message
    names it and the command that resumes, and the resumed run says where it starts."""
    from fresnet.train import loop

    real_launch = loop.Trainer._launch_step

    def launch(self, images, labels):
        if self.step == 3:
            raise KeyboardInterrupt
        return real_launch(self, images, labels)

    monkeypatch.setattr(loop.Trainer, "_launch_step", launch)
    out = tmp_path / "run"
    args = ["train", "synthetic-r18", f"output={out}", "max_steps=5", "batch_size=16", "checkpoint_every=0",
            f"net={TINY_NET}", f"synthetic={SYNTHETIC}", "--no-progress"]
    assert cli_main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 3" in err and f"{out / 'checkpoint.pt'} holds step 3" in err
    command = next(line for line in err.splitlines() if line.startswith("continue with: "))
    assert command.endswith("--resume") and f"output={out}" in command
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3

    monkeypatch.setattr(loop.Trainer, "_launch_step", real_launch)
    import shlex

    words = shlex.split(command[len("continue with: "):])
    assert words[:2] == ["fresnet", "train"]
    assert cli_main(words[1:]) == 0
    printed = capsys.readouterr().out
    assert "resuming from step 3" in printed and "trained 5 steps" in printed


def test_ctrl_c_right_after_a_nan_keeps_no_poisoned_checkpoint(tmp_path, monkeypatch):
    from fresnet.train import loop

    real_launch = loop.Trainer._launch_step
    monkeypatch.setattr(loop.Trainer, "sync_interval", lambda self: 10)

    def launch(self, images, labels):
        if self.step == 3:
            raise KeyboardInterrupt
        loss = real_launch(self, images, labels)
        return loss * float("nan") if self.step == 2 else loss

    monkeypatch.setattr(loop.Trainer, "_launch_step", launch)
    with pytest.raises(loop.TrainingDiverged, match="at step 2"):
        fresnet.train.run(tiny(tmp_path, checkpoint_every=0, log_every=10, max_steps=6))
    assert not (tmp_path / "checkpoint.pt").exists()
