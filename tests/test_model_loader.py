"""``load_any``: every way to name a model gives an embedder with the same numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fresnet
from fresnet.errors import FresnetError
from fresnet.interop.model_loader import detect_kind, load_any

TINY = {"units": [1, 1, 1, 1], "input_size": (32, 32), "emb_size": 16}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = fresnet.create_model("r18", **TINY).eval()
    # non-trivial BN statistics, so a loader that drops them would show
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32)).astype(np.uint8)


def _reference(model, batch):
    with torch.no_grad():
        return model(torch.from_numpy(batch.astype(np.float32))).numpy()


def test_preset_is_reproducible_and_takes_overrides(batch):
    a = load_any("r18", overrides=TINY)
    b = load_any("r18", overrides=TINY)
    assert a.kind == "preset" and a.input_size == (32, 32)
    out = a.embed(batch)
    assert out.shape == (3, 16) and out.dtype == np.float32
    np.testing.assert_array_equal(out, b.embed(batch))  # same seed, same random weights
    assert not np.array_equal(out, load_any("r18", overrides=TINY, seed=1).embed(batch))


def test_safetensors_roundtrip(tmp_path, tiny_model, batch):
    path = tmp_path / "tiny.safetensors"
    fresnet.save(tiny_model, path)
    emb = load_any(str(path))
    assert emb.kind == "safetensors" == detect_kind(str(path))
    np.testing.assert_allclose(emb.embed(batch), _reference(tiny_model, batch), rtol=0, atol=1e-5)


def test_arcface_torch_pth(tmp_path, tiny_model, batch):
    path = tmp_path / "backbone.pth"
    fresnet.export_arcface_torch(tiny_model, path)
    emb = load_any(str(path))
    assert emb.kind == "arcface_torch" and emb.input_size == (32, 32)
    np.testing.assert_allclose(emb.embed(batch), _reference(tiny_model, batch), rtol=1e-4, atol=1e-3)


def test_mxnet_prefix_and_prefix_comma_epoch(tmp_path, tiny_model, batch):
    prefix = tmp_path / "model"
    fresnet.save_mxnet(tiny_model, prefix, epoch=3)
    expected = _reference(tiny_model, batch)
    for spec in (f"{prefix},3", f"{prefix}-0003.params", str(prefix)):
        emb = load_any(spec)
        assert emb.kind == "mxnet", spec
        np.testing.assert_allclose(emb.embed(batch), expected, rtol=0, atol=1e-4)


def test_onnx_through_onnxruntime(tmp_path, tiny_model, batch):
    # exported with a fixed batch of 1 (the dynamic-batch graph is covered by the demo test): the
    # embedder still takes a batch of 3, one run per image
    path = tmp_path / "tiny.onnx"
    fresnet.export_onnx(tiny_model, path, dynamic_batch=False)
    emb = load_any(str(path))
    assert emb.kind == "onnx" and emb.input_size == (32, 32) and emb.fixed_batch == 1
    assert emb.input_range == "raw"  # fresnet metadata: the graph normalises 0..255 itself
    np.testing.assert_allclose(emb.embed(batch), _reference(tiny_model, batch), rtol=0, atol=1e-3)
    # a graph without fresnet metadata is taken to expect arcface_torch's (x - 127.5) / 127.5
    assert load_any(str(path), onnx_input="arcface").input_range == "arcface"


def test_module_is_wrapped_as_is(tiny_model, batch):
    emb = load_any(tiny_model)
    np.testing.assert_array_equal(emb.embed(batch), _reference(tiny_model, batch))


def test_errors_name_the_problem(tmp_path, batch):
    with pytest.raises(FresnetError, match="neither a preset"):
        load_any("r17")
    with pytest.raises(FresnetError, match="no such file"):
        load_any(str(tmp_path / "missing.safetensors"))
    weird = tmp_path / "weights.bin"
    weird.write_bytes(b"\0" * 16)
    with pytest.raises(FresnetError, match="cannot tell the format"):
        load_any(str(weird))
    path = tmp_path / "m.safetensors"
    fresnet.save(fresnet.create_model("r18", **TINY), path)
    with pytest.raises(FresnetError, match="preset names only"):
        load_any(str(path), overrides={"emb_size": 8})
    with pytest.raises(FresnetError, match="32x32"):
        load_any(str(path)).embed(np.zeros((1, 3, 112, 112), np.uint8))
