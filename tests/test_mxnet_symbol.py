"""Symbol JSON: byte-identical to the original for every reference configuration; config inference."""
from __future__ import annotations

import hashlib
import json
import warnings

import pytest

from conftest import load_reference_rows
from fresnet.errors import FresnetError
from fresnet.interop.mxnet_symbol import parse_symbol, read_symbol
from fresnet.interop.mxnet_symbol_build import build_graph, config_to_json
from fresnet.interop.mxnet_symbol_infer import check_fresnet_graph, graph_signature, infer_config
from fresnet.network.config import NetConfig
from test_names import row_config

ROWS = [row for row in load_reference_rows() if row.get("symbol_json_sha1") and not row["config"].get("fp16")]


def _config(row):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # net_unit 0 / net_input 3 rows warn by design
        return row_config(row)


def test_every_reference_symbol_is_reproduced_byte_for_byte():
    if not ROWS:
        pytest.skip("reference data not available")
    wrong = [row["id"] for row in ROWS
             if hashlib.sha1(config_to_json(_config(row)).encode()).hexdigest() != row["symbol_json_sha1"]]
    assert len(ROWS) >= 100 and wrong == []


def test_inference_recovers_every_reference_config():
    if not ROWS:
        pytest.skip("reference data not available")
    for row in ROWS:
        config = _config(row)
        graph = parse_symbol(config_to_json(config), row["id"])
        inferred = infer_config(graph, input_size=config.input_size)
        expected = config
        if config.net_output == "I":
            expected = config.replace(net_output="FC")  # I and FC build identical graphs
        if config.net_output == "Z":
            expected = expected.replace(emb_size=inferred.emb_size)  # Z has no embedding layer
        # the depth is a name for the units table: 49 and 50 (and the blog's 90 and 99) build the same net
        assert inferred.units == expected.units
        expected = expected.replace(num_layers=inferred.num_layers)
        assert inferred.to_dict() == expected.to_dict(), row["id"]
        check_fresnet_graph(graph, inferred)


FIXTURE_SYMBOLS = [
    ("fx01_r18_E_112", "model", dict(num_layers=18)),
    ("fx02_r18_unit1_se1_relu_FC", "model", dict(num_layers=18, net_unit=1, net_se=1, net_act="relu",
                                                 net_output="FC", input_size=32)),
    ("fx05_r18_GNAP_emb512_emb128", "model_emb512", dict(num_layers=18, net_output="GNAP", input_size=32)),
    ("fx05_r18_GNAP_emb512_emb128", "model_emb128", dict(num_layers=18, net_output="GNAP", emb_size=128,
                                                         input_size=32)),
    ("fx07_bottleneck_unit3_u1111", "model", dict(num_layers=None, units=[1, 1, 1, 1], bottle_neck=True,
                                                  filter_list=[64, 256, 512, 1024, 2048], input_size=32)),
]


@pytest.mark.parametrize("fixture_id,prefix,options", FIXTURE_SYMBOLS)
def test_fixture_symbols(mxnet_fixture, fixture_id, prefix, options):
    path = mxnet_fixture(fixture_id) / f"{prefix}-symbol.json"
    graph = read_symbol(path)
    config = infer_config(graph, input_size=options.get("input_size"))
    assert config == NetConfig(**options)
    generated = build_graph(config)
    # structurally: same op sequence, names, key attrs and wiring ...
    assert graph_signature(generated) == graph_signature(graph)
    assert [n.name for n in generated.nodes] == [n.name for n in graph.nodes]
    # ... and in fact the same text
    assert config_to_json(config) == path.read_text()
    original = json.loads(path.read_text())
    assert original["attrs"] == {"mxnet_version": ["int", 10901]}


def test_input_size_comes_from_the_fc_width():
    config = NetConfig(num_layers=18, net_output="E", input_size=48)  # trunk 3x3
    graph = parse_symbol(config_to_json(config))
    shapes = {"pre_fc1_weight": (512, 512 * 9)}
    assert infer_config(graph, shapes).input_size == (48, 48)
    assert infer_config(graph).input_size == (112, 112)  # nothing to go on: the default
    with pytest.raises(FresnetError, match="input size explicitly"):
        infer_config(graph, {"pre_fc1_weight": (512, 512 * 42)})  # 7x6: 112x96
    assert infer_config(graph, {"pre_fc1_weight": (512, 512 * 42)}, (112, 96)).input_size == (112, 96)


def test_a_graph_that_is_not_fresnet_is_refused():
    tiny = {"nodes": [{"op": "null", "name": "data", "inputs": []},
                      {"op": "null", "name": "fc_weight", "inputs": []},
                      {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "10"},
                       "inputs": [[0, 0, 0], [1, 0, 0]]}],
            "arg_nodes": [0, 1], "heads": [[2, 0, 0]]}
    with pytest.raises(FresnetError, match="not a fresnet graph"):
        infer_config(parse_symbol(json.dumps(tiny), "tiny-symbol.json"))


def test_a_tampered_fresnet_graph_is_refused_at_the_first_difference():
    config = NetConfig(units=[1, 1, 1, 1], num_layers=None, input_size=32)
    text = config_to_json(config).replace('"stride": "(2, 2)"', '"stride": "(1, 1)"', 2)
    graph = parse_symbol(text, "tampered-symbol.json")
    with pytest.raises(FresnetError, match="tampered-symbol.json.*stage1_unit1_conv2.*stride=\\(1, 1\\)"):
        check_fresnet_graph(graph, infer_config(graph, input_size=32))


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(FresnetError, match="not valid JSON"):
        parse_symbol("{", "x-symbol.json")
    with pytest.raises(FresnetError, match="no such file"):
        read_symbol(tmp_path / "none-symbol.json")


def test_round_trip_of_a_custom_width_r18_keeps_its_depth(tmp_path):
    from fresnet.interop.mxnet import load_mxnet, save_mxnet
    from fresnet.network.model import create_model

    model = create_model("r18", filter_list=[16, 16, 32, 64, 128], emb_size=64, input_size=32)
    save_mxnet(model, tmp_path / "model", 0)
    loaded, config = load_mxnet(tmp_path / "model", 0)
    assert config.num_layers == 18 and config == model.config
    assert config.short_name() == "r18-u3-E64"
