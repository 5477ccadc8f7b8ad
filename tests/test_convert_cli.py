"""``fresnet convert`` / ``fresnet export``: formats from file names, what is printed, clear failures."""
from __future__ import annotations

import sys
import types

import pytest
import torch

import fresnet
from arcface_iresnet_ref import IResNet, preprocess, randomize
from fresnet.cli import main
from fresnet.errors import FresnetError
from fresnet.interop.formats import Kind, detect_destination, detect_source

TINY = dict(num_features=16, input_size=(32, 32), widths=(8, 8, 16, 16, 32))


@pytest.fixture
def pth(tmp_path):
    ref = randomize(IResNet((1, 1, 1, 1), **TINY), seed=2).eval()
    path = tmp_path / "backbone.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


# ---- format detection ----------------------------------------------------------------------------
def test_destination_formats_follow_the_name(tmp_path):
    assert detect_destination("a/model.safetensors").kind is Kind.SAFETENSORS
    assert detect_destination("model.pth").kind is Kind.ARCFACE_TORCH
    assert detect_destination("model.PT").kind is Kind.ARCFACE_TORCH
    assert detect_destination("model.onnx").kind is Kind.ONNX
    mx = detect_destination("out/model-symbol.json")
    assert (mx.kind, mx.path, mx.epoch) == (Kind.MXNET, "out/model", 0)
    mx = detect_destination("out/model-0012.params")
    assert (mx.kind, mx.path, mx.epoch) == (Kind.MXNET, "out/model", 12)
    mx = detect_destination("out/model", epoch=3)
    assert (mx.kind, mx.path, mx.epoch) == (Kind.MXNET, "out/model", 3)
    for bad in ("model.bin", "model.h5", str(tmp_path)):
        with pytest.raises(FresnetError, match="cannot tell which format"):
            detect_destination(bad)


def test_source_formats_follow_the_name(tmp_path):
    prefix = tmp_path / "r100.v2"  # a prefix with a dot is still a prefix
    (tmp_path / "r100.v2-symbol.json").write_text("{}")
    (tmp_path / "r100.v2-0001.params").write_bytes(b"")
    for name in (str(prefix), f"{prefix}-symbol.json"):
        spec = detect_source(name)
        assert (spec.kind, spec.path, spec.epoch) == (Kind.MXNET, str(prefix), 1)
    assert detect_source(f"{prefix}-0007.params").epoch == 7
    (tmp_path / "r100.v2-0002.params").write_bytes(b"")
    with pytest.raises(FresnetError, match=r"several epochs: choose one \(0001, 0002\) by naming its file"):
        detect_source(str(prefix))
    assert detect_source(str(prefix), epoch=2).epoch == 2
    with pytest.raises(FresnetError, match="export-only"):
        detect_source(tmp_path / "m.onnx")
    with pytest.raises(FresnetError, match="cannot tell the format"):
        detect_source(tmp_path / "weights.bin")
    with pytest.raises(FileNotFoundError):
        detect_source(tmp_path / "missing.safetensors")


# ---- conversions -------------------------------------------------------------------------------
def test_pth_to_safetensors_to_pth_round_trip(tmp_path, pth, capsys):
    ref, src = pth
    native = tmp_path / "model.safetensors"
    assert main(["convert", str(src), str(native)]) == 0
    out = capsys.readouterr().out
    assert "source:      arcface_torch iresnet state dict (.pth)" in out
    assert "destination: fresnet safetensors" in out
    model = fresnet.load(native)
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), ref(preprocess(x)), rtol=1e-5, atol=1e-5 * ref(preprocess(x)).abs().max().item()
        )

    back = tmp_path / "back.pth"
    assert main(["convert", str(native), str(back)]) == 0
    restored = torch.load(back, weights_only=True)
    for key, value in ref.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(restored[key], value, rtol=1e-6, atol=1e-7)


def test_convert_and_export_to_onnx_check_onnxruntime(tmp_path, pth, capsys):
    _, src = pth
    assert main(["convert", str(src), str(tmp_path / "a.onnx"), "--fold-bn"]) == 0
    out = capsys.readouterr().out
    assert "destination: ONNX" in out and "onnxruntime: max abs diff" in out and "(ok," in out
    assert main(["export", str(src)]) == 0  # default destination: backbone.onnx next to it
    assert (tmp_path / "backbone.onnx").exists()
    assert "over batch sizes [1, 7]" in capsys.readouterr().out


def test_export_a_preset_with_overrides(tmp_path, capsys):
    dst = tmp_path / "tiny.onnx"
    args = ["export", "r18", str(dst), "--set", "units=[1,1]", "--set", "filter_list=[8,16,32]",
            "--set", "input_size=28", "--set", "net_output=GDC", "--static-batch"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "preset r18 with random weights" in out and "over batch sizes [1]" in out


def test_mxnet_formats_call_the_mxnet_module(tmp_path, monkeypatch, capsys):
    calls = []
    model = fresnet.create_model(units=[1, 1], filter_list=[8, 16, 32], input_size=28, emb_size=16).eval()
    fake = types.ModuleType("fresnet.interop.mxnet")
    fake.load_mxnet = lambda prefix, epoch=0: (calls.append(("load", prefix, epoch)), (model, model.config))[1]
    fake.save_mxnet = lambda m, prefix, epoch=0, **options: calls.append(("save", prefix, epoch))
    monkeypatch.setitem(sys.modules, "fresnet.interop.mxnet", fake)

    params = tmp_path / "model-0003.params"
    params.write_bytes(b"")
    assert main(["convert", str(params), str(tmp_path / "m.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "out" / "model")]) == 0
    assert calls == [("load", str(tmp_path / "model"), 3), ("save", str(tmp_path / "out" / "model"), 0)]
    out = capsys.readouterr().out
    assert "MXNet checkpoint: prefix" in out and "epoch 3" in out


def test_round_trip_through_the_real_mxnet_format(tmp_path, capsys):
    pytest.importorskip("fresnet.interop.mxnet")
    model = fresnet.create_model(units=[1, 1], filter_list=[8, 16, 32], input_size=28, emb_size=16,
                                 net_output="GDC").eval()
    src, back = tmp_path / "m.safetensors", tmp_path / "back.safetensors"
    fresnet.save(model, src)
    assert main(["convert", str(src), str(tmp_path / "mx" / "model-symbol.json")]) == 0
    assert (tmp_path / "mx" / "model-0000.params").exists()
    assert main(["convert", str(tmp_path / "mx" / "model"), str(back)]) == 0
    loaded = fresnet.load(back)
    assert loaded.config.net_output == "GDC"
    x = torch.rand(2, 3, 28, 28) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


# ---- failures ----------------------------------------------------------------------------------
def test_failures_are_one_clear_line_without_traceback(tmp_path, pth, capsys):
    _, src = pth
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    cases = [
        (["convert", str(src), str(tmp_path / "x.bin")], "cannot tell which format to write"),
        (["convert", str(tmp_path / "m.onnx"), str(tmp_path / "y.safetensors")], "ONNX is an export-only format"),
        (["convert", str(corrupt), str(tmp_path / "y.pth")], "corrupt.safetensors: not a readable safetensors file"),
        (["convert", str(tmp_path / "missing.pth"), str(tmp_path / "y.safetensors")], "no such file"),
        (["export", str(src), str(tmp_path / "y.safetensors")], "fresnet export writes ONNX"),
        (["export", str(src), str(tmp_path / "y.onnx"), "--opset", "13"], "opset 13 is too old"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_converting_a_non_iresnet_model_to_pth_explains_why(tmp_path, capsys):
    model = fresnet.create_model(units=[1, 1], filter_list=[8, 16, 32], input_size=28, net_output="GDC")
    src = tmp_path / "gdc.safetensors"
    fresnet.save(model, src)
    assert main(["convert", str(src), str(tmp_path / "gdc.pth")]) == 2
    assert "no arcface_torch iresnet equivalent: net_output='GDC'" in capsys.readouterr().err
    assert not (tmp_path / "gdc.pth").exists()


# ---- the overwrite rule (issue 24 item 10 and the overwrite policy) -------------------------------
def test_convert_into_a_prefix_of_another_network_keeps_its_epochs(tmp_path, capsys):
    pytest.importorskip("fresnet.interop.mxnet")
    first = fresnet.create_model(units=[1, 1], filter_list=[8, 16, 32], input_size=28, emb_size=16).eval()
    other = fresnet.create_model(units=[1, 1], filter_list=[8, 16, 32], input_size=28, emb_size=8).eval()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    fresnet.save(first, a)
    fresnet.save(other, b)
    prefix = tmp_path / "mx" / "model"
    assert main(["convert", str(a), str(prefix)]) == 0
    symbol = (tmp_path / "mx" / "model-symbol.json").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["convert", str(b), str(prefix), "--dst-epoch", "1", *extra]) == 2
        err = capsys.readouterr().err
        assert "model-symbol.json" in err and "another network" in err and "0000" in err
    assert (tmp_path / "mx" / "model-symbol.json").read_bytes() == symbol
    assert not (tmp_path / "mx" / "model-0001.params").exists()
    assert main(["convert", str(prefix), str(tmp_path / "back.safetensors"), "--epoch", "0"]) == 0  # epoch 0 loads
    # the same network: a new epoch is added beside; an existing epoch needs --overwrite
    assert main(["convert", str(a), str(prefix), "--dst-epoch", "2"]) == 0
    assert main(["convert", str(a), str(prefix), "--dst-epoch", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(a), str(prefix), "--dst-epoch", "2", "--overwrite"]) == 0


def test_every_writing_command_refuses_an_existing_output_without_overwrite(tmp_path, pth, capsys):
    _, src = pth
    for name in ("x.safetensors", "x.onnx"):
        dst = tmp_path / name
        dst.write_bytes(b"keep")
        assert main(["convert", str(src), str(dst)]) == 2
        assert "already exists" in capsys.readouterr().err and dst.read_bytes() == b"keep"
    dst = tmp_path / "y.onnx"
    dst.write_bytes(b"keep")
    assert main(["export", str(src), str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err and dst.read_bytes() == b"keep"
    assert main(["export", str(src), str(dst), "--overwrite"]) == 0
    assert main(["convert", str(src), str(tmp_path / "x.safetensors"), "--overwrite"]) == 0
