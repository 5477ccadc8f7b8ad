"""fresnet's native format: safetensors with the config in the metadata; self-describing, safe, strict."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import fresnet
from fresnet.errors import FresnetError
from fresnet.interop.native import FORMAT_VERSION, read_config, read_metadata

TINY = dict(units=[1, 1], filter_list=[16, 16, 32], input_size=28, emb_size=16)


def randomized(model):
    """Random parameters and BN statistics, so a round trip that dropped anything would show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            values = torch.rand(tensor.shape, generator=g)
            tensor.copy_(values + 0.5 if name.endswith("running_var") else values - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "options",
    [
        dict(TINY),
        dict(TINY, net_se=1, net_output="GNAP", emb_size=64),
        dict(TINY, net_unit="3x", bottle_neck=True, filter_list=[32, 64, 64], net_output="GDC"),
        dict(TINY, net_unit=1, net_input=2, net_act="relu", net_output="Z", input_size=[28, 24]),
    ],
    ids=["E", "se-gnap", "resnext-gdc", "v1-bn_data-Z"],
)
def test_save_load_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path, options):
    model = randomized(fresnet.create_model(**options))
    path = tmp_path / "model.safetensors"
    fresnet.save(model, path)
    loaded = fresnet.load(path)
    assert loaded.config == model.config
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(2, 3, *model.config.input_size) * 255
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_metadata_holds_format_version_config_and_user_entries(tmp_path):
    model = fresnet.create_model(**TINY)
    path = tmp_path / "m.safetensors"
    fresnet.save(model, path, metadata={"source": "unit test", "epoch": 3})
    meta = read_metadata(path)
    assert meta["format"] == "fresnet" and meta["format_version"] == str(FORMAT_VERSION)
    assert json.loads(meta["config"]) == model.config.to_dict()
    assert meta["source"] == "unit test" and meta["epoch"] == "3"
    assert read_config(path) == model.config
    with pytest.raises(FresnetError, match="'config' is reserved"):
        fresnet.save(model, path, metadata={"config": "x"})


def test_save_refuses_a_non_fresnet_model_and_writes_nothing(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(FresnetError, match="needs a fresnet model"):
        fresnet.save(torch.nn.Linear(2, 2), path)
    assert list(tmp_path.iterdir()) == []


def test_load_dispatches_arcface_pth_by_name(tmp_path):
    from arcface_iresnet_ref import IResNet, randomize

    ref = randomize(IResNet((1, 1, 1, 1), num_features=16, input_size=(32, 32), widths=(8, 8, 16, 16, 32))).eval()
    path = tmp_path / "backbone.pth"
    torch.save(ref.state_dict(), path)
    model = fresnet.load(path)
    assert model.config.units == (1, 1, 1, 1) and not model.training


# ---- corrupt or foreign files --------------------------------------------------------------------
def test_truncated_and_garbage_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    fresnet.save(fresnet.create_model(**TINY), good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(FresnetError, match="truncated.safetensors: not a readable safetensors file"):
        fresnet.load(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(FresnetError, match="garbage.safetensors: not a readable safetensors file"):
        fresnet.load(garbage)

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(FresnetError, match="empty.safetensors"):
        fresnet.load(empty)

    with pytest.raises(FileNotFoundError):
        fresnet.load(tmp_path / "missing.safetensors")
    with pytest.raises(FresnetError, match="export-only"):
        fresnet.load(tmp_path / "model.onnx")


def test_foreign_safetensors_and_bad_metadata_are_explained(tmp_path):
    state = {k: v.contiguous() for k, v in fresnet.create_model(**TINY).state_dict().items()}
    config = fresnet.create_model(**TINY).config.to_json()

    foreign = tmp_path / "foreign.safetensors"
    save_file(state, foreign, metadata={"format": "pt"})
    with pytest.raises(FresnetError, match="not a fresnet one"):
        fresnet.load(foreign)

    newer = tmp_path / "newer.safetensors"
    save_file(state, newer, metadata={"format": "fresnet", "format_version": "99", "config": config})
    with pytest.raises(FresnetError, match="version 99 is newer"):
        fresnet.load(newer)

    bad_json = tmp_path / "bad_json.safetensors"
    save_file(state, bad_json, metadata={"format": "fresnet", "format_version": "1", "config": "{oops"})
    with pytest.raises(FresnetError, match="not valid NetConfig JSON"):
        fresnet.load(bad_json)

    bad_config = tmp_path / "bad_config.safetensors"
    save_file(state, bad_config, metadata={"format": "fresnet", "format_version": "1",
                                           "config": json.dumps({"net_output": "X"})})
    with pytest.raises(FresnetError, match="stored config is invalid: unknown head 'X'"):
        fresnet.load(bad_config)


def test_tensors_that_do_not_match_the_config_are_listed(tmp_path):
    model = fresnet.create_model(**TINY)
    meta = {"format": "fresnet", "format_version": "1", "config": model.config.to_json()}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    missing = dict(state)
    del missing["stage2.unit1.bn3.running_var"]
    path = tmp_path / "missing.safetensors"
    save_file(missing, path, metadata=meta)
    with pytest.raises(FresnetError, match=r"missing \['stage2.unit1.bn3.running_var'\]"):
        fresnet.load(path)

    reshaped = dict(state, **{"head.pre_fc1.bias": torch.zeros(3)})
    path = tmp_path / "reshaped.safetensors"
    save_file(reshaped, path, metadata=meta)
    with pytest.raises(FresnetError, match=r"wrong shape \['head.pre_fc1.bias \[3\] \(needs \[16\]\)'\]"):
        fresnet.load(path)

    extra = dict(state, **{"head.extra": torch.zeros(1)})
    path = tmp_path / "extra.safetensors"
    save_file(extra, path, metadata=meta)
    with pytest.raises(FresnetError, match=r"unexpected \['head.extra'\]"):
        fresnet.load(path)


def test_a_load_parses_the_safetensors_header_once(tmp_path, monkeypatch):
    """Issue 24 leftovers: metadata, tensor index and tensors came from three parses of the header."""
    import safetensors
    import safetensors.torch

    model = fresnet.create_model(units=[1, 1], filter_list=[8, 16, 32], input_size=28, emb_size=16).eval()
    fresnet.save(model, tmp_path / "m.safetensors")
    opened = []
    real_open, real_load = safetensors.safe_open, safetensors.torch.load_file
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: (opened.append("safe_open"), real_open(*a, **k))[1])
    monkeypatch.setattr(
        safetensors.torch, "load_file", lambda *a, **k: (opened.append("load_file"), real_load(*a, **k))[1]
    )
    loaded = fresnet.load(tmp_path / "m.safetensors")
    assert opened == ["safe_open"]
    x = torch.rand(1, 3, 28, 28) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
