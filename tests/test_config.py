"""NetConfig: original key names, aliases, validation, round trips, presets."""
from __future__ import annotations

import dataclasses

import pytest

import fresnet
from fresnet import NetConfig, create_model, list_models
from fresnet.errors import FresnetError
from fresnet.network.config import parse_assignments


def test_original_keys_and_aliases_agree():
    a = NetConfig(num_layers=50, net_unit=1, net_se=1, net_act="relu", net_input=0, net_output="GDC",
                  emb_size=256, bn_mom=0.99, input_size=(224, 224))
    b = NetConfig.from_dict(dict(depth=50, unit=1, se=1, act="relu", stem=0, head="GDC", embedding_size=256,
                                 bn_momentum=0.99, image_size=224))
    assert a == b
    assert a.units == (3, 4, 14, 3) and a.filter_list == (64, 64, 128, 256, 512) and a.bottle_neck is False


@pytest.mark.parametrize("fmt", ["dict", "json", "yaml"])
def test_round_trip(fmt):
    config = NetConfig(num_layers=None, units=[1, 2, 3, 1], net_unit="3x", bottle_neck=True, input_size=(112, 96))
    if fmt == "dict":
        again = NetConfig.from_dict(config.to_dict())
    elif fmt == "json":
        again = NetConfig.from_json(config.to_json())
    else:
        again = NetConfig.from_yaml(config.to_yaml())
    assert again == config
    assert again.filter_list == (64, 256, 512, 1024, 2048)


def test_config_is_frozen_and_replace_validates():
    config = NetConfig(num_layers=18)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_layers = 50  # type: ignore[misc]
    assert config.replace(head="FC").net_output == "FC"
    with pytest.raises(FresnetError, match="unknown head 'Q'"):
        config.replace(net_output="Q")


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(num_layers=19), ["19", "18, 34"]),
        (dict(net_output="X"), ["'X'", "GDC"]),
        (dict(net_unit=4), ["residual_unit_v4", "'3x'"]),
        (dict(net_act="gelu"), ["gelu", "prelu"]),
        (dict(net_input=-1), ["net_input"]),
        (dict(num_layers=18, net_output="GDC", input_size=(112, 96)), ["7x7", "7x6"]),
        (dict(num_layers=18, net_output="GDC", net_input=0), ["7x7", "4x4"]),
        (dict(num_layers=None, units=[1, 1, 1, 1], net_unit="3x"), ["bottleneck"]),
        (dict(num_layers=18, filter_list=[64, 64]), ["filter_list"]),
        (dict(bogus=1), ["bogus", "num_layers"]),
    ],
)
def test_bad_configs_fail_early_with_clear_errors(options, words):
    with pytest.raises(FresnetError) as info:
        NetConfig.from_dict(options)
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, ValueError)


def test_original_fallbacks_warn():
    with pytest.warns(UserWarning, match="behaves as 3"):
        assert NetConfig(net_unit=0).net_unit == 3
    with pytest.warns(UserWarning, match="behaves as 1"):
        assert NetConfig(net_input=3).net_input == 1


def test_presets():
    names = list_models()
    for depth in (18, 34, 49, 50, 74, 90, 98, 99, 100, 101, 124, 134, 136, 140, 152, 160, 200, 269):
        assert f"r{depth}" in names
    assert "r100fc" in names and "r50v1" in names
    assert names[0] == "r18"
    # r90 follows the repository, not the blog copy's typo [3, 8, 35, 3]
    assert NetConfig(num_layers=90).units == (3, 8, 30, 3)
    m = create_model("r100fc", input_size=(32, 32))
    assert m.config.net_output == "FC" and m.config.num_layers == 100
    assert create_model("r50v1", input_size=(32, 32)).config.net_unit == 1
    with pytest.raises(FresnetError, match="r18"):
        create_model("resnet50")


def test_short_name_names_a_depth_only_for_its_units():
    assert NetConfig(num_layers=18).short_name() == "r18-u3-E512"
    assert NetConfig(num_layers=18, filter_list=[32, 32, 64, 128, 256]).short_name() == "r18-u3-E512"
    custom = NetConfig.from_dict(dict(num_layers=18, units=[1, 1, 1, 1], emb_size=64))  # --set units=[1,1,1,1]
    assert custom.short_name() == "r[1,1,1,1]-u3-E64"
    assert NetConfig(num_layers=None, units=[2, 2, 2, 2]).short_name() == "r[2,2,2,2]-u3-E512"


def test_bottleneck_rule_and_trunk_size():
    assert NetConfig(num_layers=None, units=[3, 4, 6, 3], bottle_neck=True).trunk_channels == 512
    assert NetConfig(num_layers=18, input_size=(112, 96)).trunk_hw == (7, 6)
    assert NetConfig(num_layers=18, net_input=0).trunk_hw == (4, 4)


def test_set_assignments_parse():
    assert parse_assignments(["input_size=112x96", "units=[1,2,3,4]", "net_output=GDC", "bn_mom=0.99"]) == {
        "input_size": [112, 96], "units": [1, 2, 3, 4], "net_output": "GDC", "bn_mom": 0.99}
    with pytest.raises(FresnetError):
        parse_assignments(["novalue"])


def test_public_api_names():
    for name in ("create_model", "NetConfig", "list_models", "summarize"):
        assert callable(getattr(fresnet, name))
