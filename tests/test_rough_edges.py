"""Rough edges a newcomer hits (issue 24): each answer is one clear line that names something the
user can type, and model files are told apart by their content, not their names."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

import fresnet
from fresnet.cli import main
from fresnet.errors import FresnetError

TINY = ["--set", "units=[1,1,1,1]", "--set", "filter_list=[8,8,8,8,8]", "--set", "emb_size=16"]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return fresnet.create_model("r18", units=[1, 1, 1, 1], filter_list=[8, 8, 8, 8, 8], emb_size=16).eval()


@pytest.fixture
def pack(tmp_path):
    from fresnet.data.verification_bin import save_bin

    rng = np.random.default_rng(0)
    path = tmp_path / "p.bin"
    save_bin(path, rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), [True, False, True, False])
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ---- --device --------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there_is_one_line_everywhere(tmp_path, pack, capsys):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(image)
    commands = [
        ["eval", "r18", *TINY, "--bin", str(pack), "--out", str(tmp_path / "r")],
        ["embed", "r18", *TINY, str(image), "-o", str(tmp_path / "e.npy")],
        ["compare", "r18", *TINY, str(image), str(image)],
        ["eval", "r18", *TINY, "--ijb", str(tmp_path), "--out", str(tmp_path / "r")],
    ]
    for device, expected in (("cuda", "no CUDA"), ("gpu", "unknown device 'gpu'"), ("cuda:7", "no CUDA")):
        for argv in commands:
            assert main([*argv, "--device", device]) == 2, argv
            err = one_line_error(capsys)
            assert expected in err and "--device cpu" in err, err


def test_device_names_are_parsed_once():
    from fresnet.cli.common import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(FresnetError, match="unknown device 'tpu'"):
        resolve_device("tpu")


# ---- model files: by content, training checkpoints, plain state dicts, run folders ---------------


def test_a_safetensors_file_renamed_pt_is_read_by_its_content(tmp_path, capsys):
    model = tiny_model()
    fresnet.save(model, tmp_path / "m.safetensors")
    shutil.copy(tmp_path / "m.safetensors", tmp_path / "m.pt")
    loaded = fresnet.load(tmp_path / "m.pt")
    x = torch.rand(1, 3, 112, 112) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert main(["convert", str(tmp_path / "m.pt"), str(tmp_path / "back.safetensors")]) == 0
    assert "fresnet safetensors" in capsys.readouterr().out


def test_a_run_folder_loads_its_model_and_checkpoints_point_at_it(tmp_path, pack, capsys):
    from fresnet.train.checkpoint import FORMAT

    model = tiny_model()
    run = tmp_path / "run"
    run.mkdir()
    fresnet.save(model, run / "model.safetensors")
    torch.save({"format": FORMAT, "step": 3, "model": model.state_dict(), "fc": {}}, run / "checkpoint.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    loaded = fresnet.load(run)  # a run folder: its model.safetensors
    assert loaded.config == model.config
    with pytest.raises(FresnetError, match=r"checkpoint\.pt: .*training checkpoint.*run/model\.safetensors"):
        fresnet.load(run / "checkpoint.pt")
    with pytest.raises(FresnetError, match=r"plain\.pt: .*fresnet network's state dict.*fresnet\.save"):
        fresnet.load(tmp_path / "plain.pt")
    assert main(["eval", str(run / "checkpoint.pt"), "--bin", str(pack), "--out", str(tmp_path / "r")]) == 2
    assert "model.safetensors" in one_line_error(capsys)


def test_a_pickled_module_is_explained_without_terminal_codes(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(FresnetError) as info:
        fresnet.load_arcface_torch(tmp_path / "module.pth")
    text = str(info.value)
    assert "\x1b" not in text and "torch.nn.modules.linear.Linear" in text and "state_dict()" in text
    assert text.rstrip().endswith((".", ")"))


# ---- several MXNet epochs; hints that can be typed ------------------------------------------


def test_several_mxnet_epochs_say_choose_one_with_something_typeable(tmp_path, pack, capsys):
    model = tiny_model()
    prefix = tmp_path / "mx" / "model"
    fresnet.save_mxnet(model, prefix, epoch=1)
    fresnet.save_mxnet(model, prefix, epoch=2)
    with pytest.raises(FresnetError, match=r"several epochs: choose one \(0001, 0002\)"):
        fresnet.load(prefix)
    assert main(["eval", str(prefix), "--bin", str(pack), "--out", str(tmp_path / "r")]) == 2
    err = one_line_error(capsys)
    assert "--epoch" not in err and "model-0002.params" in err
    assert main(["eval", f"{prefix}-0002.params", "--bin", str(pack), "--nfolds", "2",
                 "--out", str(tmp_path / "r")]) == 0


def test_a_mistyped_option_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "r18", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fresnet eval") and "unrecognized arguments: --bogus" in err


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_bin_on_a_folder_or_fifo_uses_the_readers_message(tmp_path, capsys, kind):
    path = tmp_path / "x.bin"
    path.mkdir() if kind == "folder" else os.mkfifo(path)
    assert main(["eval", "r18", *TINY, "--bin", str(path), "--out", str(tmp_path / "r")]) == 2
    err = one_line_error(capsys)
    assert ("a directory" if kind == "folder" else "a FIFO") in err and "no such" not in err
