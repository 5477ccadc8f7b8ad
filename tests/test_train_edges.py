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
    assert [c for c in columns if c.startswith("val_")] == ["val_mine", "val_sub/mine"]
    assert set(result.metrics) == {"mine", "sub/mine"} and rows[-1]["val_mine"] and rows[-1]["val_sub/mine"]


def test_training_and_eval_name_targets_by_one_rule():
    from fresnet.eval.targets import target_names

    assert target_names(["mine.bin", "sub/mine.bin"]) == ["mine", "sub/mine"]
    assert target_names(["lfw.bin", "lfw.bin", "synthetic"]) == ["lfw", "lfw#2", "synthetic"]


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


def test_build_components_makes_every_part_in_one_call(tmp_path):
    from fresnet.train.components import build_components
    from fresnet.train.config import load_config
    from fresnet.train.distributed import DistInfo
    from fresnet.train.partial_fc import PartialFC

    parts = build_components(load_config(tiny(tmp_path, sample_rate=0.5)), DistInfo())
    assert parts.forward is parts.model and isinstance(parts.classifier, PartialFC)
    assert parts.num_classes == SYNTHETIC["num_identities"] and parts.classifier.num_sample == 6
    assert parts.step.optimizer is parts.optimizer and parts.scaler is None  # no GradScaler off CUDA
    names = parts.named_params()
    assert "fc.weight" in names and any(k.startswith("backbone.") for k in names)
    images, labels = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8), torch.arange(16) % 12
    assert torch.isfinite(parts.step(images, labels, 0.01))


def test_throughput_leaves_out_warm_up_and_pauses(monkeypatch):
    from fresnet import timing
    from fresnet.train.callbacks import Every, Throughput

    now = [0.0]
    monkeypatch.setattr(timing, "WALL_CLOCK", lambda: now[0])
    meter = Throughput(global_batch=10, step=0, elapsed=5.0)
    now[0] = 4.0  # the first interval holds the compile: 1 step in 4 s
    assert meter.tick(1) == pytest.approx(2.5)
    meter.resume(1)
    now[0] = 5.0  # then 4 steps in 1 s
    meter.tick(5)
    meter.resume(5)
    assert meter.steady == pytest.approx(40.0) and meter.elapsed == pytest.approx(10.0)
    now[0] = 50.0  # a verification: not training time
    meter.pause(5)
    meter.resume(5)
    now[0] = 51.0
    assert meter.tick(9) == pytest.approx(40.0) and meter.elapsed == pytest.approx(11.0)
    every = Every(3)
    assert [s for s in range(1, 10) if every.due(s, last=s == 8)] == [3, 6, 8, 9]
    assert not Every(0).due(5, last=False) and Every(0).due(5, last=True) and not Every(3, enabled=False).due(3, True)


@pytest.mark.parametrize("override,match", [
    ("emb_size=-3", r"^override: network: emb_size = -3"),
    ("net={emb_size: 0}", r"^override: network: emb_size = 0"),
    ("network=r9", r"^override: network: unknown model 'r9'"),
    ("loss=foo", r"^override: unknown loss 'foo'"),
])
def test_a_bad_override_is_blamed_on_the_override(override, match):
    from fresnet.train.config import load_config

    with pytest.raises(FresnetError, match=match):
        load_config("synthetic-r18", [override])


def test_bad_values_in_the_file_are_still_blamed_on_the_file(tmp_path):
    from fresnet.train.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("network: r9\n")
    with pytest.raises(FresnetError, match=f"^{path}: network: unknown model 'r9'"):
        load_config(str(path), ["emb_size=64"])  # an override of another network key is not blamed


def test_hints_name_keys_train_has(tmp_path):
    from fresnet.train.config import load_config

    assert load_config(tiny(tmp_path, on_error="skip")).on_error == "skip"
    with pytest.raises(FresnetError, match="unknown on_error 'maybe'"):
        load_config(tiny(tmp_path, on_error="maybe"))
    # too few pairs for the 10 folds: refused at the start with a key train has (not --nfolds)
    with pytest.raises(FresnetError, match=r"synthetic has 4 pairs.*val_pairs=") as info:
        fresnet.train.run(tiny(tmp_path / "run", val_targets=["synthetic"], val_pairs=4))
    assert "--nfolds" not in str(info.value)


def test_only_rank_0_prints_the_summary(tmp_path, monkeypatch, capsys):
    from fresnet.train.loop import TrainResult

    def fake_train(cfg):
        return TrainResult(tmp_path, tmp_path / "m", tmp_path / "c", tmp_path / "l", 3, 1.0)

    monkeypatch.setattr("fresnet.train.loop.train", fake_train)
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert cli_main(["train", "synthetic-r18", f"output={tmp_path}"]) == 0
        assert ("trained 3 steps" in capsys.readouterr().out) is printed


def test_no_progress_help_says_what_it_does(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-progress no progress display (neither the bar nor the periodic progress lines)" in text
