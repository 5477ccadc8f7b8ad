"""Real MXNet checkpoints (../shared/reference/fixtures): outputs, internals, training mode, round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fresnet import create_model
from fresnet.errors import FresnetError
from fresnet.interop.mxnet import load_mxnet, save_mxnet
from fresnet.interop.mxnet_params import read_ndarray_list, read_params, write_params
from fresnet.interop.names import fix_gamma_names, mxnet_name_map

ATOL = 2e-4
CHECKPOINTS = [
    ("fx01_r18_E_112", "model"),
    ("fx02_r18_unit1_se1_relu_FC", "model"),
    ("fx05_r18_GNAP_emb512_emb128", "model_emb512"),
    ("fx05_r18_GNAP_emb512_emb128", "model_emb128"),
    ("fx07_bottleneck_unit3_u1111", "model"),
]


def _run_with_internals(model, x):
    """Output plus the fixtures' internals: stem (relu0), the last unit of each stage, the trunk."""
    seen = {}
    hooks = [model.stem.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o))]
    for stage in model.stage_names:
        last = list(getattr(model, stage).children())[-1]
        hooks.append(last.register_forward_hook(lambda m, i, o, s=stage: seen.__setitem__(s, o)))
    try:
        trunk = model.forward_features(x)
        seen["trunk"] = trunk
        return model.forward_head(trunk), seen
    finally:
        for hook in hooks:
            hook.remove()


_LOADED = {}


def _load_eval(folder, prefix, input_size):
    """Loaded once per session for the inference-only tests (they never change the model)."""
    key = (str(folder), prefix)
    if key not in _LOADED:
        _LOADED[key] = load_mxnet(folder / prefix, input_size=input_size)
    return _LOADED[key]


@pytest.mark.parametrize("fixture_id,prefix", CHECKPOINTS)
def test_inference_matches_mxnet(mxnet_fixture, fixture_id, prefix):
    folder = mxnet_fixture(fixture_id)
    x = torch.from_numpy(np.load(folder / "input.npy"))
    model, config = _load_eval(folder, prefix, tuple(x.shape[2:]))
    assert not model.training
    with torch.no_grad():
        out, internals = _run_with_internals(model, x)
    compared = []
    for name, value in internals.items():  # internals first: they localise a mismatch
        path = folder / f"{prefix}_internal_{name}.npy"
        if path.exists():
            np.testing.assert_allclose(value.numpy(), np.load(path), rtol=0, atol=ATOL, err_msg=name)
            compared.append(name)
    assert "trunk" in compared
    np.testing.assert_allclose(out.numpy(), np.load(folder / f"{prefix}_output.npy"), rtol=0, atol=ATOL)
    np.testing.assert_allclose(out.numpy(), np.load(folder / f"{prefix}_output_f64.npy"), rtol=0, atol=ATOL)


def test_inference_needs_no_input_size_when_the_fc_tells(mxnet_fixture):
    folder = mxnet_fixture("fx02_r18_unit1_se1_relu_FC")
    _, config = load_mxnet(folder / "model")
    assert config.input_size == (32, 32)
    assert (config.net_unit, config.net_se, config.net_act, config.net_output) == (1, 1, "relu", "FC")


def test_training_mode_output_and_moving_stats(mxnet_fixture):
    folder = mxnet_fixture("fx02_r18_unit1_se1_relu_FC")
    model, _ = load_mxnet(folder / "model")
    x = torch.from_numpy(np.load(folder / "train_input.npy"))
    model.train()
    out = model(x)
    out.sum().backward()  # MXNet updates the stats in backward; ours in forward; same values
    np.testing.assert_allclose(out.detach().numpy(), np.load(folder / "model_train_output.npy"), rtol=0, atol=ATOL)
    names, state = mxnet_name_map(model), model.state_dict()
    expected = np.load(folder / "model_train_aux_after_fwd_bwd.npz")
    assert len(expected.files) == 46
    for key in expected.files:
        name = key.split(":", 1)[-1]
        np.testing.assert_allclose(state[names[name]].numpy(), expected[key], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("prefix", ["model_emb512", "model_emb128"])
def test_gnap_couples_the_batch_like_mxnet(mxnet_fixture, prefix):
    folder = mxnet_fixture("fx05_r18_GNAP_emb512_emb128")
    model, _ = _load_eval(folder, prefix, (32, 32))
    x = torch.from_numpy(np.load(folder / "input.npy"))
    with torch.no_grad():
        alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))]).numpy()
        together = model(x).numpy()
    np.testing.assert_allclose(alone, np.load(folder / f"{prefix}_output_each_sample_alone.npy"), rtol=0, atol=ATOL)
    assert np.abs(alone - together).max() > 10 * ATOL  # the coupling is real, and reproduced


def test_round_trip_is_exact(mxnet_fixture, tmp_path):
    folder = mxnet_fixture("fx07_bottleneck_unit3_u1111")
    model, config = load_mxnet(folder / "model-symbol.json", input_size=32)  # a file path works too
    symbol, params = save_mxnet(model, tmp_path / "copy")
    assert symbol.name == "copy-symbol.json" and params.name == "copy-0000.params"
    assert symbol.read_bytes() == (folder / "model-symbol.json").read_bytes()
    original_arrays, original_names = read_ndarray_list(folder / "model-0000.params")
    arrays, names = read_ndarray_list(params)
    assert names == original_names  # same arrays, same order, same arg:/aux: split
    ignored = {f"arg:{n}" for n in fix_gamma_names(model)}
    assert ignored == {"arg:fc1_gamma"}
    for name, ours, theirs in zip(names, arrays, original_arrays):
        assert ours.dtype == theirs.dtype
        if name in ignored:
            assert np.all(ours == 1) and not np.all(theirs == 1)  # written as ones; MXNet ignores them
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
    again, config_again = load_mxnet(params)
    assert config_again == config
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def _tiny(**options):
    return create_model(num_layers=None, units=[1, 1, 1, 1], filter_list=[8, 16, 16, 32, 32], input_size=16, **options)


@pytest.mark.parametrize("options", [
    dict(net_unit=2, net_se=1),
    dict(net_unit=1, net_input=0, net_act="relu"),
    dict(net_input=2, net_output="GNAP", emb_size=16),
    dict(net_output="SFC", emb_size=8),
    dict(net_output="F", net_act="tanh"),
])
def test_save_load_round_trip_on_tiny_networks(tmp_path, options):
    torch.manual_seed(0)
    model = _tiny(**options).eval()
    with torch.no_grad():
        for buffer in model.buffers():
            buffer.uniform_(0.5, 1.5)
    save_mxnet(model, tmp_path / "tiny", epoch=3)
    loaded, config = load_mxnet(tmp_path / "tiny", epoch=3, input_size=16)
    assert config.to_dict() == model.config.to_dict()
    x = torch.rand(2, 3, 16, 16) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_strict_loading_names_the_key_and_the_file(tmp_path):
    model = _tiny()
    _, params = save_mxnet(model, tmp_path / "m")
    arrays = read_params(params)

    def broken(mutate):
        changed = dict(arrays)
        mutate(changed)
        write_params(params, changed)
        with pytest.raises(FresnetError) as info:
            load_mxnet(tmp_path / "m")
        assert str(params) in str(info.value)
        return str(info.value)

    assert "missing arg:stage1_unit1_conv1_weight" in broken(lambda a: a.pop("arg:stage1_unit1_conv1_weight"))
    assert "unexpected arrays ['arg:extra_weight']" in broken(lambda a: a.__setitem__("arg:extra_weight", np.ones(1)))
    message = broken(lambda a: a.__setitem__("aux:bn0_moving_var", np.ones(3, np.float32)))
    assert "aux:bn0_moving_var has shape (3,), the model expects (8,)" in message
    # the ignored fix_gamma gamma may be anything, or absent
    fine = dict(arrays)
    fine.pop("arg:fc1_gamma")
    write_params(params, fine)
    load_mxnet(tmp_path / "m")


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(FresnetError, match="model-symbol.json: no such file"):
        load_mxnet(tmp_path / "model")
    save_mxnet(_tiny(), tmp_path / "model")
    with pytest.raises(FresnetError, match="model-0007.params: no such file.*files there: model-symbol.json"):
        load_mxnet(tmp_path / "model", epoch=7)
    with pytest.raises(FresnetError, match="<prefix>-<epoch>.params"):
        load_mxnet(tmp_path / "weights.params")
