"""Parity with the original MXNet code: every row of ../shared/reference/reference.json.

``ok: true`` rows must give exactly the MXNet argument count, aux count and output shape;
``ok: false`` rows must fail at build time with a clear FresnetError.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from conftest import load_reference_rows
from fresnet.errors import FresnetError
from fresnet.inspection.summary import summarize
from fresnet.network.config import NetConfig
from fresnet.network.model import FResNet

ROWS = load_reference_rows()

# what each failing row's error must mention, so the message names the bad value
EXPECTED_ERROR_WORDS = {
    "crash_net_unit4": "residual_unit_v4",
    "crash_num_layers_19": "19",
    "crash_num_layers_500": "500",
    "crash_head_unknown_X": "'X'",
    "crash_net_input_-1": "net_input",
    "resnext_v3_x_basic_filters_crash": "bottleneck",
}


def config_from_row(row: dict) -> NetConfig:
    c = row["config"]
    options = dict(
        num_layers=c["num_layers"],
        net_unit="3x" if c["builder"] == "resnet+residual_unit_v3_x" else c["net_unit"],
        net_se=c["net_se"],
        net_act=c["net_act"],
        net_input=c["net_input"],
        net_output=c["net_output"],
        emb_size=c["emb_size"],
        bn_mom=c["bn_mom"],
        input_size=tuple(c["input_hw"]),
        filter_list=c["filter_list"],
        bottle_neck=c["bottle_neck"],
    )
    if c["builder"] != "get_symbol":  # rows that called fresnet.resnet(units, ...) directly
        options["units"] = c["units"]
    # c["fp16"] only inserts Cast ops in the MXNet graph; mixed precision is the training loop's job here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # net_unit 0 / net_input 3 warn that they behave as 3 / 1
        return NetConfig(**options)


@pytest.mark.skipif(not ROWS, reason="../shared/reference/reference.json not available")
@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_reference_row(row):
    if not row["ok"]:
        with pytest.raises(FresnetError) as info:
            config_from_row(row)
        expected = EXPECTED_ERROR_WORDS.get(row["id"], "7x7")  # the remaining failures are GDC rows
        assert expected in str(info.value)
        return
    config = config_from_row(row)
    with torch.device("meta"):
        model = FResNet(config)
    summary = summarize(model)
    assert summary.mxnet_args == row["trainable_params"]
    assert summary.mxnet_aux == row["aux_params"]
    assert list(summary.output_shape) == row["output_shape_batch1"]
    assert list(summary.trunk_shape) == row["trunk_output_shape_batch1"]


@pytest.mark.skipif(not ROWS, reason="../shared/reference/reference.json not available")
@pytest.mark.parametrize("row", [r for r in ROWS if "arg_names_shapes" in r], ids=lambda r: r["id"])
def test_parameter_shapes_match_mxnet_names(row):
    """Each MXNet argument (``stage1_unit1_conv1_weight`` ...) has a parameter of the same shape.

    The fix_gamma gammas have no parameter (they are fixed at 1), so they must be exactly the
    arguments this model does not have.
    """
    with torch.device("meta"):
        model = FResNet(config_from_row(row))
    ours = {}
    for key, tensor in model.state_dict().items():
        ours[mxnet_name(key, model)] = list(tensor.shape)
    fixed = {f"{n}_gamma" for n, m in named_fix_gamma_bns(model)}
    for name, shape in row["arg_names_shapes"]:
        if name == "data":
            continue
        if name in fixed:
            continue
        assert name in ours, f"MXNet argument {name} has no counterpart"
        assert ours[name] == list(shape), name
    for name, shape in row["aux_names_shapes"]:
        assert ours[name] == list(shape), name


def named_fix_gamma_bns(model):
    from fresnet.network.layers import MXBatchNorm

    for name, module in model.named_modules():
        if isinstance(module, MXBatchNorm) and module.fix_gamma:
            yield _join(name), module


def _join(module_name: str) -> str:
    parts = module_name.split(".")
    if parts[0] in ("stem", "reduce", "head"):
        parts = parts[1:]
    return "_".join(parts)


def mxnet_name(key: str, model) -> str:
    """Minimal name mapping for this test (the interop module owns the full, tested one)."""
    module_name, param = key.rsplit(".", 1)
    module = model.get_submodule(module_name)
    suffix = {
        "running_mean": "moving_mean",
        "running_var": "moving_var",
    }.get(param, param)
    if type(module).__name__ in ("MXBatchNorm", "PReLU"):
        suffix = {"weight": "gamma", "bias": "beta"}.get(suffix, suffix)
    return f"{_join(module_name)}_{suffix}"
