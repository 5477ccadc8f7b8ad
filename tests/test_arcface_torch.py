"""arcface_torch iresnet <-> fresnet: names both ways, exact parity both ways, and clear errors."""
from __future__ import annotations

import pathlib
import pickle

import pytest
import torch

import fresnet
from arcface_iresnet_ref import ARCFACE_LAYERS, IResNet, preprocess, randomize
from fresnet.errors import FresnetError
from fresnet.interop.arcface_torch import (
    STEM_WEIGHT_FACTOR,
    arcface_to_fresnet_key,
    config_from_state_dict,
    fresnet_to_arcface_key,
)

TINY = dict(num_features=16, input_size=(32, 32), widths=(8, 8, 16, 16, 32))


def tiny_iresnet(layers=(1, 2, 1, 1), seed=0, **overrides) -> IResNet:
    return randomize(IResNet(layers, **{**TINY, **overrides}), seed).eval()


def images(n=3, size=(32, 32), seed=1) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed)) * 255


def assert_same_output(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, scale))


# ---- names -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arcface, fres",
    [
        ("conv1.weight", "stem.conv0.weight"),
        ("bn1.running_var", "stem.bn0.running_var"),
        ("prelu.weight", "stem.relu0.weight"),
        ("layer1.0.conv1.weight", "stage1.unit1.conv1.weight"),
        ("layer1.0.bn1.bias", "stage1.unit1.bn1.bias"),
        ("layer3.1.prelu.weight", "stage3.unit2.relu1.weight"),
        ("layer2.0.bn3.running_mean", "stage2.unit1.bn3.running_mean"),
        ("layer2.0.downsample.0.weight", "stage2.unit1.conv1sc.weight"),
        ("layer4.0.downsample.1.weight", "stage4.unit1.sc.weight"),
        ("layer3.29.conv2.weight", "stage3.unit30.conv2.weight"),
        ("bn2.weight", "head.bn1.weight"),
        ("fc.bias", "head.pre_fc1.bias"),
        ("features.running_mean", "head.fc1.running_mean"),
    ],
)
def test_key_mapping_examples_both_ways(arcface, fres):
    assert arcface_to_fresnet_key(arcface) == fres
    assert fresnet_to_arcface_key(fres) == arcface


def test_key_mapping_covers_every_parameter_of_both_networks():
    ref = tiny_iresnet()
    model = fresnet.load_arcface_torch(ref.state_dict())
    arcface_keys = [k for k in ref.state_dict() if not k.endswith("num_batches_tracked") and k != "features.weight"]
    assert [arcface_to_fresnet_key(k) for k in arcface_keys] == list(model.state_dict())
    assert [fresnet_to_arcface_key(k) for k in model.state_dict()] == arcface_keys


def test_unknown_names_are_refused():
    with pytest.raises(FresnetError, match="not an arcface_torch iresnet parameter"):
        arcface_to_fresnet_key("layer1.0.se.fc1.weight")
    with pytest.raises(FresnetError, match="no arcface_torch counterpart"):
        fresnet_to_arcface_key("stage1.unit1.se.conv1.weight")


# ---- import: iresnet -> fresnet ------------------------------------------------------------------
def test_import_reproduces_iresnet_on_its_own_preprocessing():
    ref = tiny_iresnet()
    model = fresnet.load_arcface_torch(ref.state_dict())
    assert not model.training
    cfg = model.config
    assert (cfg.net_unit, cfg.net_output, cfg.net_input, cfg.net_act, cfg.net_se) == (3, "E", 1, "prelu", 0)
    assert cfg.units == (1, 2, 1, 1) and cfg.filter_list == (8, 8, 16, 16, 32)
    assert cfg.emb_size == 16 and cfg.input_size == (32, 32)
    x = images()
    with torch.no_grad():
        assert_same_output(model(x), ref(preprocess(x)))


def test_import_applies_the_input_scale_and_eps_corrections():
    ref = tiny_iresnet()
    state = ref.state_dict()
    model = fresnet.load_arcface_torch(state)
    ours = model.state_dict()
    torch.testing.assert_close(ours["stem.conv0.weight"], state["conv1.weight"] * (128 / 127.5))
    assert STEM_WEIGHT_FACTOR == pytest.approx(128 / 127.5)
    # var + 1e-5 (iresnet) == var' + 2e-5 (fresnet); the features BN has variances below 1e-5
    torch.testing.assert_close(ours["stage2.unit1.bn2.running_var"] + 2e-5, state["layer2.0.bn2.running_var"] + 1e-5)
    torch.testing.assert_close(ours["head.fc1.running_var"] + 2e-5, state["features.running_var"] + 1e-5)
    assert (ours["head.fc1.running_var"] < 0).any(), "test data should include variances below 1e-5"
    assert model.head.fc1.weight is None  # fix_gamma, like features.weight


def test_without_the_corrections_the_outputs_would_differ():
    """Guards the test data itself: the eps and scale differences must be visible."""
    ref = tiny_iresnet()
    model = fresnet.load_arcface_torch(ref.state_dict())
    x = images()
    with torch.no_grad():
        expected = ref(preprocess(x))
        model.head.fc1.eps = 1e-5  # undo only the eps handling of the last BN
        wrong = model(x)
    assert (wrong - expected).abs().max() > 1e-3 * expected.abs().max()


def test_features_weight_other_than_one_is_folded_exactly():
    ref = tiny_iresnet()
    with torch.no_grad():
        ref.features.weight.copy_(torch.linspace(-2.0, 3.0, 16))
    model = fresnet.load_arcface_torch(ref.state_dict())
    x = images()
    with torch.no_grad():
        assert_same_output(model(x), ref(preprocess(x)))


def test_full_width_iresnet18_at_112_infers_depth_and_input_size():
    ref = randomize(IResNet(ARCFACE_LAYERS[18], num_features=64), seed=3).eval()
    model = fresnet.load_arcface_torch(ref.state_dict())
    assert model.config.num_layers == 18 and model.config.input_size == (112, 112)
    assert model.config.filter_list == (64, 64, 128, 256, 512)
    x = images(2, (112, 112))
    with torch.no_grad():
        assert_same_output(model(x), ref(preprocess(x)))


@pytest.mark.parametrize("depth", sorted(ARCFACE_LAYERS))
def test_depth_is_inferred_from_block_counts(depth):
    ref = IResNet(ARCFACE_LAYERS[depth], num_features=8, input_size=(16, 16), widths=(4, 4, 4, 4, 4))
    config = config_from_state_dict(ref.state_dict())
    assert config.num_layers == depth
    assert config.units == ARCFACE_LAYERS[depth]  # iresnet200 differs from fresnet's r200 table
    assert config.input_size == (16, 16)


def test_wrong_num_layers_and_input_size_are_reported():
    state = tiny_iresnet().state_dict()
    with pytest.raises(FresnetError, match="num_layers=50 means blocks"):
        fresnet.load_arcface_torch(state, num_layers=50)
    with pytest.raises(FresnetError, match="fix input_size"):
        fresnet.load_arcface_torch(state, input_size=(64, 64))
    model = fresnet.load_arcface_torch(state, input_size=(29, 30))  # also a 2x2 trunk
    assert model.config.input_size == (29, 30)


def test_training_checkpoint_and_ddp_prefix_are_unwrapped(tmp_path):
    ref = tiny_iresnet()
    wrapped = {"epoch": torch.tensor(3), "state_dict_backbone": {f"module.{k}": v for k, v in ref.state_dict().items()}}
    path = tmp_path / "checkpoint_gpu_0.pt"
    torch.save(wrapped, path)
    model = fresnet.load_arcface_torch(path)
    x = images()
    with torch.no_grad():
        assert_same_output(model(x), ref(preprocess(x)))


# ---- export: fresnet -> iresnet ------------------------------------------------------------------
def test_round_trip_reproduces_the_original_state_dict():
    ref = tiny_iresnet()
    original = ref.state_dict()
    exported = fresnet.export_arcface_torch(fresnet.load_arcface_torch(original))
    assert list(exported) == list(original)  # same keys, same order
    for key, value in original.items():
        if key.endswith("num_batches_tracked"):
            assert exported[key].item() == 0 and exported[key].dtype == torch.long
        else:
            torch.testing.assert_close(exported[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_export_of_a_fresnet_model_runs_in_iresnet(tmp_path):
    model = fresnet.create_model(units=[1, 2, 1, 1], filter_list=[8, 8, 16, 16, 32], input_size=32, emb_size=16)
    with torch.no_grad():  # non-trivial statistics, so every correction matters
        g = torch.Generator().manual_seed(5)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + (1e-5 if name.startswith("head.fc1") else 0.5))
    model.eval()
    path = tmp_path / "backbone.pth"
    fresnet.export_arcface_torch(model, path)
    ref = IResNet((1, 2, 1, 1), **TINY).eval()
    ref.load_state_dict(torch.load(path, weights_only=True))  # strict: every key present
    assert torch.all(ref.features.weight == 1)
    x = images()
    with torch.no_grad():
        assert_same_output(ref(preprocess(x)), model(x))


@pytest.mark.parametrize(
    "options, problem",
    [
        (dict(net_unit=1), "net_unit=1"),
        (dict(net_output="GDC", input_size=112), "net_output='GDC'"),
        (dict(net_se=1), "net_se=1"),
        (dict(net_act="relu"), "net_act='relu'"),
        (dict(net_input=0), "net_input=0"),
    ],
)
def test_export_refuses_what_iresnet_cannot_represent(options, problem):
    model = fresnet.create_model(units=[1, 1, 1, 1], filter_list=[16, 16, 16, 32, 32], **{"input_size": 32, **options})
    with pytest.raises(FresnetError, match=problem.replace("(", r"\(")):
        fresnet.export_arcface_torch(model)


# ---- bad files ---------------------------------------------------------------------------------
def test_corrupt_and_foreign_files_give_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(FresnetError, match="garbage.pth: cannot read it as a PyTorch weights file"):
        fresnet.load_arcface_torch(garbage)

    good = tmp_path / "good.pth"
    torch.save(tiny_iresnet().state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(FresnetError, match="truncated.pth"):
        fresnet.load_arcface_torch(truncated)

    pickled = tmp_path / "pickled.pth"  # arbitrary objects are refused by weights_only=True
    pickled.write_bytes(pickle.dumps({"conv1.weight": pathlib.PurePosixPath("x")}, protocol=2))
    with pytest.raises(FresnetError, match="pickled Python object, pathlib.PurePosixPath"):
        fresnet.load_arcface_torch(pickled)

    with pytest.raises(FileNotFoundError):
        fresnet.load_arcface_torch(tmp_path / "missing.pth")


def test_incomplete_or_mismatched_state_dicts_name_the_key():
    state = tiny_iresnet().state_dict()
    with pytest.raises(FresnetError, match="not an arcface_torch iresnet state dict"):
        fresnet.load_arcface_torch({"backbone_conv.weight": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if k != "layer2.0.bn2.running_mean"}
    with pytest.raises(FresnetError, match=r"missing \['layer2.0.bn2.running_mean'\]"):
        fresnet.load_arcface_torch(missing)
    reshaped = dict(state, **{"layer3.0.prelu.weight": torch.zeros(5)})
    with pytest.raises(FresnetError, match="layer3.0.prelu.weight has shape"):
        fresnet.load_arcface_torch(reshaped)
    with pytest.raises(FresnetError, match="expected a state dict"):
        fresnet.load_arcface_torch([1, 2, 3])
