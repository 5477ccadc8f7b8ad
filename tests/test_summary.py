"""summarize() and `fresnet summary`: true counts, the MXNet counts, FLOPs, the per-layer table."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fresnet import NetConfig, create_model, summarize


def test_r18_default_counts_and_print_summary_story():
    s = summarize("r18")
    assert s.mxnet_args == 24_025_600  # MXNet list_arguments(); print_summary says 11,440,704
    assert s.mxnet_aux == 14_720
    assert s.trainable_params == 24_025_600 - 512  # fc1 is fix_gamma: its gamma is not learnt
    pre_fc1 = next(r for r in s.layers if r.name == "head.pre_fc1")
    assert pre_fc1.params == 512 * 512 * 7 * 7 + 512  # print_summary counts (512 + 1) * 512 here
    prelu = sum(r.params for r in s.layers if r.type == "PReLU")
    assert prelu == 1984  # print_summary counts 0 here
    assert 11_440_704 + (pre_fc1.params - 262_656) + prelu == s.mxnet_args
    assert s.flops == pytest.approx(5.22e9, rel=0.002)
    assert s.macs * 2 == s.flops
    assert s.output_shape == (1, 512) and s.trunk_shape == (1, 512, 7, 7)


def test_summary_accepts_model_config_and_input_size():
    model = create_model("r18", input_size=(32, 32))
    assert summarize(model).output_shape == (1, 512)
    s = summarize(NetConfig(num_layers=18, net_output="Z"), input_size=(112, 112))
    assert s.output_shape == (1, 512, 7, 7)
    assert s.to_dict()["mxnet_args"] == 11_179_008


def test_cli_summary_json_and_errors():
    out = subprocess.run([sys.executable, "-m", "fresnet", "summary", "r18", "--set", "net_output=GAP", "--json"],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["mxnet_args"] == 11_443_200 and data["config"]["net_output"] == "GAP"
    bad = subprocess.run([sys.executable, "-m", "fresnet", "summary", "r18", "--set", "net_unit=4"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "residual_unit_v4" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_summary_reads_a_model_file(tmp_path, capsys):
    import fresnet
    from fresnet.cli import main

    model = create_model("r18", units=[1, 1, 1, 1], input_size=32, emb_size=32, net_output="GAP")
    fresnet.save(model, tmp_path / "model.safetensors")
    assert main(["summary", str(tmp_path / "model.safetensors"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["units"] == [1, 1, 1, 1] and data["config"]["net_output"] == "GAP"
    assert main(["summary", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such model file" in capsys.readouterr().err
