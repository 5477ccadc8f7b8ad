"""``fresnet plot``: the drawn graph follows the real dataflow, and works with or without ``dot``."""
from __future__ import annotations

import html
import re
import shutil

import pytest

import fresnet.inspection.viz as viz
from fresnet.errors import FresnetError
from fresnet.inspection.layout import layout
from fresnet.inspection.viz import build_graph, plot_network, trace_layers
from fresnet.network.model import create_model

TINY = dict(units=[1, 2, 1, 1], input_size=32, emb_size=32)


def _by_name(layers):
    return {layer.name: layer for layer in layers}, {layer.id: layer for layer in layers}


def test_layers_follow_the_real_dataflow_with_shapes():
    # pre-activation unit with SE: the projection shortcut leaves from act1, not from the unit input
    layers, by_id = _by_name(trace_layers(create_model(**TINY, net_unit=2, net_se=1)))
    assert [by_id[i].name for i in layers["stage1_unit1_sc"].inputs] == ["stage1_unit1_relu1"]
    # an identity unit's add joins its body and its input, the previous unit's add
    add = layers["stage2_unit2_add"]
    assert add.kind == "add" and len(add.inputs) == 2
    assert "stage2_unit1_add" in {by_id[i].name for i in add.inputs}
    # the SE branch: pool -> conv1 -> act -> conv2 -> sigmoid, multiplied back onto the body
    gate = layers["stage2_unit2_se_broadcast_mul"]
    assert {by_id[i].name for i in gate.inputs} == {"stage2_unit2_conv2", "stage2_unit2_se_activation"}
    assert layers["stage2_unit2_se_pooling"].shape == (128, 1, 1)
    # shapes per sample: 3x3/1 stem at 32x32, each stage halves
    assert layers["conv0"].shape == (64, 32, 32)
    assert layers["conv0"].label == "Convolution 3x3/1, 64"
    assert layers["stage1_unit1_conv1"].label == "Convolution 3x3/2, 64"
    assert layers["stage4_unit1_add"].shape == (512, 2, 2)
    assert layers["pre_fc1"].label == "FullyConnected 32" and layers["pre_fc1"].group == "head"


def test_ir_unit_shortcut_and_groups():
    layers, by_id = _by_name(trace_layers(create_model(**TINY)))
    # v3 projection: conv1sc -> BN 'sc' -> add; the body ends in bn3
    add = layers["stage1_unit1_add"]
    assert {by_id[i].name for i in add.inputs} == {"stage1_unit1_bn3", "stage1_unit1_sc"}
    assert [by_id[i].name for i in layers["stage1_unit1_conv1sc"].inputs] == ["relu0"]
    assert layers["relu0"].group == "stem" and layers["stage3_unit1_bn1"].group == "stage3.unit1"


def test_dot_source_always_and_a_picture_when_dot_is_installed(tmp_path, monkeypatch):
    model = create_model(**TINY)
    result = plot_network(model, tmp_path / "net.dot")
    source = (tmp_path / "net.dot").read_text()
    assert result.path == tmp_path / "net.dot" and not result.rendered and not result.collapsed
    assert "cluster_stage2_unit2" in source
    assert "Convolution 3x3/1, 64" in source and "64x32x32" in source
    assert viz.COLORS["conv"] in source and viz.COLORS["bn"] in source
    assert "style=bold" in source  # the identity shortcut of stage2.unit2

    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    drawn = plot_network(model, tmp_path / "a.svg")  # no `dot`: matplotlib draws it, no .dot left behind
    assert drawn.path == tmp_path / "a.svg" and drawn.rendered and drawn.renderer == "matplotlib"
    assert not (tmp_path / "a.dot").exists()
    monkeypatch.undo()

    if shutil.which("dot"):
        picture = plot_network(model, tmp_path / "b.svg")
        assert picture.rendered and picture.renderer == "dot" and "<svg" in (tmp_path / "b.svg").read_text()

    with pytest.raises(FresnetError, match="suffix|format"):
        plot_network(model, tmp_path / "net.jpg")


def test_without_dot_the_picture_is_drawn_by_matplotlib_from_the_real_dataflow(tmp_path, monkeypatch):
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)  # no graphviz `dot` program on PATH
    model = create_model(**TINY, net_se=1)
    result = plot_network(model, tmp_path / "net.svg", title="tiny")
    assert result.rendered and result.renderer == "matplotlib" and result.path == tmp_path / "net.svg"
    svg = (tmp_path / "net.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # the text is kept as text: every layer of the traced graph is in the picture, with its shapes
    for text in ("tiny", "stage2.unit2", "conv0", "Convolution 3x3/1, 64", "64x32x32", "conv1sc",
                 "Pooling global avg", "broadcast_mul", "elemwise add", "FullyConnected 32", "output"):
        assert text in svg, text
    assert svg.count(">conv2<") == len(list(model.iter_units()))  # one per unit (tspan lines)
    assert viz.COLORS["conv"] in svg and viz.COLORS["bn"] in svg and viz.COLORS["add"] in svg

    png = plot_network(model, tmp_path / "net.png")
    data = (tmp_path / "net.png").read_bytes()
    assert png.renderer == "matplotlib" and data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert height > 4 * width > 1000  # a tall chain: one row per layer
    assert plot_network(model, tmp_path / "net.pdf").path.read_bytes()[:5] == b"%PDF-"

    units = plot_network(create_model(**TINY), tmp_path / "units.svg", collapse=True)
    text = html.unescape((tmp_path / "units.svg").read_text())
    assert units.collapsed and "stage2.unit1: UnitV3 64->128 /2, projection shortcut" in text
    assert "stage2 (2 units)" in text


def test_pictures_need_neither_dot_nor_the_graphviz_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "graphviz", None)  # `import graphviz` raises ImportError
    monkeypatch.setattr(viz.shutil, "which", lambda name: "/usr/bin/" + name)  # even with a `dot`
    model = create_model(**TINY)
    assert plot_network(model, tmp_path / "a.svg").renderer == "matplotlib"
    with pytest.raises(FresnetError, match="pip install graphviz"):
        plot_network(model, tmp_path / "a.dot")
    with pytest.raises(FresnetError, match="renderer='matplotlib'"):
        plot_network(model, tmp_path / "b.svg", renderer="dot")


def test_layout_keeps_the_chain_straight_and_branches_beside_it():
    diagram = viz.build_diagram(create_model(**TINY, net_se=1))
    where = layout(diagram)
    ids = {
        node.label.split("\n")[0] if node.cluster is None else f"{node.cluster}.{node.label.split(chr(10))[0]}": node.id
        for node in diagram.nodes
    }
    rank, column = where.rank, where.column
    assert all(rank[e.source] < rank[e.target] for e in diagram.edges)  # every arrow points down
    assert len({(rank[i], column[i]) for i in rank}) == len(rank)  # no two boxes in one place
    # the body of a projection unit is the chain; its shortcut conv + BN sit beside the body's end
    conv, sc, add = (ids[f"stage1_unit1.{n}"] for n in ("conv1sc", "sc", "elemwise add"))
    assert column[ids["stage1_unit1.conv1"]] == column[add] == 0 and column[conv] == column[sc] == 1
    assert (rank[conv], rank[sc]) == (rank[add] - 2, rank[add] - 1)
    # an identity unit with SE: the gate's ungated input (bn3) runs in lane 1, the shortcut outside it
    mul, unit_add = ids["stage2_unit2.broadcast_mul"], ids["stage2_unit2.elemwise add"]
    gate = next(e for e in diagram.edges if e.target == mul and e.source == ids["stage2_unit2.bn3"])
    shortcut = next(e for e in diagram.edges if e.target == unit_add and e.bold)
    assert where.detours[(gate.source, gate.target)] == 1
    assert where.detours[(shortcut.source, shortcut.target)] == 2
    assert column[shortcut.source] == 0 and column[mul] == 0


def test_deep_networks_collapse_to_one_node_per_unit(tmp_path):
    model = create_model(units=[1, 1, 15, 1], input_size=32, emb_size=32, filter_list=[8, 8, 16, 32, 64])
    source = build_graph(model).source  # 18 units: collapsed by default
    units = re.findall(r"^\s*(stage\d_unit\d+) \[", source, re.M)
    assert len(units) == 18 and "stage3_unit15" in units
    assert "stage3.unit1: UnitV3 16->32 /2, projection shortcut" in source
    assert "stage3_unit15_conv1" not in source
    assert re.search(r"stage3_unit14 -> stage3_unit15 \[label=\" 32x4x4\"\]", source)
    expanded = build_graph(model, collapse=False).source
    assert "cluster_stage3_unit15" in expanded


def test_plot_command(tmp_path, capsys):
    from fresnet.cli import main

    out = tmp_path / "r18.dot"
    code = main(["plot", "r18", "--set", "units=[1,1,1,1]", "--set", "input_size=32", "-o", str(out), "--collapse"])
    assert code == 0 and out.exists()
    assert "wrote" in capsys.readouterr().out
    assert "stage4_unit1" in out.read_text()


def test_plot_command_draws_a_picture_without_dot(tmp_path, capsys, monkeypatch):
    from fresnet.cli import main

    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    out = tmp_path / "r18.svg"
    assert main(["plot", "r18", "--set", "units=[1,1,1,1]", "--set", "input_size=32", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "matplotlib" in printed
    assert "stage4.unit1" in out.read_text()


def test_plot_command_reads_a_model_file_and_names_the_output_after_it(tmp_path, capsys, monkeypatch):
    import fresnet
    from fresnet.cli import main

    fresnet.save(create_model("r18", **TINY), tmp_path / "mine.safetensors")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    assert main(["plot", "mine.safetensors", "--collapse", "-o", "mine.dot"]) == 0
    assert "stage2_unit2" in (tmp_path / "mine.dot").read_text()
    assert main(["plot", "mine", "--collapse"]) == 2  # neither a preset nor a file
    assert "'mine' is neither a preset" in capsys.readouterr().err
