"""fresnet state_dict keys <-> MXNet names, checked against the original's list_arguments()."""
from __future__ import annotations

import pytest

from conftest import load_reference_rows
from fresnet import create_model
from fresnet.errors import FresnetError
from fresnet.interop.mxnet_symbol_build import build_graph
from fresnet.interop.names import (
    fix_gamma_names,
    from_mxnet_name,
    is_aux,
    layer_name,
    mxnet_name_map,
    state_dict_name_map,
    to_mxnet_name,
)
from fresnet.network.config import NetConfig

ROWS = {row["id"]: row for row in load_reference_rows()}


def row_config(row: dict) -> NetConfig:
    c = row["config"]
    keys = ("net_unit", "net_se", "net_act", "net_input", "net_output", "emb_size", "bn_mom", "units",
            "filter_list", "bottle_neck")
    options = {k: c[k] for k in keys if k in c}
    options["num_layers"] = c.get("num_layers")
    options["input_size"] = c.get("input_hw", (112, 112))
    if "v3_x" in c.get("builder", ""):
        options["net_unit"] = "3x"
    return NetConfig(**options)


@pytest.fixture(scope="module")
def se_model():
    return create_model(units=[1, 1, 1, 1], net_se=1, net_output="E", input_size=32)


def test_documented_examples(se_model):
    assert to_mxnet_name("stage1.unit1.se.conv1.bias", se_model) == "stage1_unit1_se_conv1_bias"
    assert to_mxnet_name("head.fc1.bias", se_model) == "fc1_beta"
    assert to_mxnet_name("stem.relu0.weight", se_model) == "relu0_gamma"
    assert to_mxnet_name("stage2.unit1.sc.running_var", se_model) == "stage2_unit1_sc_moving_var"
    assert to_mxnet_name("head.pre_fc1.weight", se_model) == "pre_fc1_weight"
    assert from_mxnet_name("stage1_unit1_conv1_weight", se_model) == "stage1.unit1.conv1.weight"
    assert from_mxnet_name("aux:bn0_moving_mean", se_model) == "stem.bn0.running_mean"
    assert layer_name("reduce.convd") == "convd"


def test_mapping_is_a_bijection_over_the_state_dict(se_model):
    names = mxnet_name_map(se_model)
    assert sorted(names.values()) == sorted(se_model.state_dict())
    inverse = state_dict_name_map(se_model)
    assert all(names[inverse[key]] == key for key in inverse)
    assert all(from_mxnet_name(to_mxnet_name(k, se_model), se_model) == k for k in se_model.state_dict())
    assert {n for n in names if is_aux(n)} == {n for n in names if n.endswith(("_moving_mean", "_moving_var"))}


def test_fix_gamma_names_and_errors():
    model = create_model(units=[1, 1, 1, 1], net_input=2, net_output="GNAP", emb_size=128, input_size=32)
    assert fix_gamma_names(model) == ["bn_data_gamma", "bn6f_gamma", "bn6w_gamma", "fc1_gamma"]
    with pytest.raises(FresnetError, match="fix_gamma"):
        from_mxnet_name("arg:fc1_gamma", model)
    with pytest.raises(FresnetError, match="not an array"):
        from_mxnet_name("conv9_weight", model)
    with pytest.raises(FresnetError, match="not a state_dict key"):
        to_mxnet_name("stem.conv0.bias", model)


@pytest.mark.parametrize("row_id", [r for r, row in ROWS.items() if row.get("arg_names_shapes")] or ["none"])
def test_graph_arrays_are_the_original_list_arguments_in_order(row_id):
    if row_id == "none":
        pytest.skip("reference data not available")
    row = ROWS[row_id]
    graph = build_graph(row_config(row))
    assert graph.arg_names == [name for name, _ in row["arg_names_shapes"]]
    assert graph.aux_names == [name for name, _ in row["aux_names_shapes"]]


MODEL_ROWS = ["r18_default", "r18_head_SFC", "r18_head_GNAP", "r18_unit2_se1_prelu", "r18_input2_unit3",
              "r18_input0_unit1", "r18_GNAP_emb1024", "r18_default_112x96", "r18_head_GDC"]


@pytest.mark.parametrize("row_id", MODEL_ROWS)
def test_model_names_and_shapes_equal_the_original(row_id):
    if row_id not in ROWS:
        pytest.skip("reference data not available")
    row = ROWS[row_id]
    from fresnet.network.model import FResNet

    model = FResNet(row_config(row))
    names, state = mxnet_name_map(model), model.state_dict()
    ours = {name: list(state[key].shape) for name, key in names.items()}
    ignored = set(fix_gamma_names(model))
    theirs = {name: shape for name, shape in row["arg_names_shapes"] + row["aux_names_shapes"]}
    assert set(theirs) - set(ours) == ignored
    assert {name: theirs[name] for name in ours} == ours
