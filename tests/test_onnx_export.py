"""ONNX export: onnxruntime matches PyTorch (max abs diff <= 1e-4) for every head and every unit,
with a dynamic batch, TensorRT-friendly PReLU slopes, optional BN folding, and GNAP's batch coupling."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import fresnet
from fresnet.errors import FresnetError
from fresnet.interop.onnx_export import reshape_prelu_slopes, verify_onnx
from fresnet.network.config import HEADS
from fresnet.network.layers import MXBatchNorm

# 28 -> 14 -> 7: a 7x7 trunk, so GDC works too, at a fraction of 112x112's cost
TINY = dict(units=[1, 1], filter_list=[16, 16, 32], input_size=28, emb_size=16)
TOLERANCE = 1e-4


@torch.no_grad()
def randomized(model, seed=0):
    """Random BN statistics and affine parameters and PReLU slopes, so that each one matters, at the
    scale of a trained network: FC weights ~ 1/sqrt(fan_in) (embeddings of magnitude ~1-10, where a
    1e-4 absolute tolerance is meaningful) and ``bn_data`` statistics of raw pixels."""
    g = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if name == "stem.bn_data":
            module.running_mean.copy_(127.5 + 5 * torch.randn(3, generator=g))
            module.running_var.copy_(4000 + 500 * torch.rand(3, generator=g))
            module.bias.zero_()
        elif isinstance(module, torch.nn.Linear):
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) / module.in_features**0.5)
        if isinstance(module, MXBatchNorm) and name != "stem.bn_data":
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.copy_(0.1 * torch.randn(n, generator=g))
            if module.weight is not None:
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
        elif isinstance(module, torch.nn.PReLU):
            module.weight.copy_(torch.rand(module.weight.shape, generator=g) * 0.5)
        elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
    return model.eval()


def export_and_check(model, path, **options) -> onnx.ModelProto:
    fresnet.export_onnx(model, path, **options)
    batches = (1, 7) if options.get("dynamic_batch", True) else (1,)
    diff = verify_onnx(model, path, batch_sizes=batches)
    assert diff <= TOLERANCE, f"onnxruntime differs from PyTorch by {diff}"
    return onnx.load(str(path))


@pytest.mark.parametrize("head", HEADS)
def test_every_head_matches_pytorch_with_dynamic_batch(tmp_path, head):
    model = randomized(fresnet.create_model(**TINY, net_output=head))
    proto = export_and_check(model, tmp_path / f"{head}.onnx")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize(
    "options",
    [
        dict(net_unit=1),
        dict(net_unit=1, net_input=0),  # v1 (early stride) with the 7x7/2 stem
        dict(net_unit=2),
        dict(net_unit=3, net_se=1),
        dict(net_unit=3, net_input=2, net_act="relu"),
        dict(net_unit=1, bottle_neck=True, filter_list=[16, 64, 64]),
        dict(net_unit=2, bottle_neck=True, filter_list=[16, 64, 64]),
        dict(net_unit=3, bottle_neck=True, filter_list=[16, 64, 64]),
        dict(net_unit="3x", bottle_neck=True, filter_list=[32, 64, 64], net_se=1),
    ],
    ids=["v1_L", "v1-input0", "v2", "v3-se", "v3-bn_data-relu", "v1-bottleneck", "v2-bottleneck",
         "v3-bottleneck", "3x-se"],
)
def test_every_unit_matches_pytorch(tmp_path, options):
    model = randomized(fresnet.create_model(**{**TINY, **options}))
    export_and_check(model, tmp_path / "unit.onnx")


def test_gnap_batch_coupling_is_preserved(tmp_path):
    # both GNAP variants: emb > C adds convx; emb < C adds bn6w + pre_fc1
    for emb in (64, 16):
        model = randomized(fresnet.create_model(**{**TINY, "emb_size": emb}, net_output="GNAP"))
        path = tmp_path / f"gnap{emb}.onnx"
        export_and_check(model, path)
        x = torch.rand(7, 3, 28, 28, generator=torch.Generator().manual_seed(3)) * 255
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batched = session.run(None, {"input": x.numpy()})[0]
        alone = np.concatenate([session.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(7)])
        with torch.no_grad():
            np.testing.assert_allclose(batched, model(x).numpy(), atol=TOLERANCE, rtol=0)
        # the mean of norms spans the batch, so a sample's embedding depends on its batch-mates
        assert np.abs(batched - alone).max() > 1e-3


def test_prelu_slopes_are_c11_and_metadata_holds_the_config(tmp_path):
    model = randomized(fresnet.create_model(**TINY, net_output="GAP"))
    proto = export_and_check(model, tmp_path / "m.onnx", opset=18)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    slopes = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "PRelu"]
    assert slopes and all(s.ndim == 3 and s.shape[1:] == (1, 1) for s in slopes)
    assert {s.shape[0] for s in slopes} == {16, 32}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    meta = {p.key: p.value for p in proto.metadata_props}
    assert fresnet.NetConfig.from_json(meta["fresnet_config"]) == model.config


@pytest.mark.parametrize("head", ["GDC", "SFC"])
def test_fold_bn_matches_and_removes_batchnorms(tmp_path, head):
    model = randomized(fresnet.create_model(**TINY, net_output=head))
    plain = export_and_check(model, tmp_path / "plain.onnx")
    folded = export_and_check(model, tmp_path / "folded.onnx", fold_bn=True)
    count = lambda proto: sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert count(folded) < count(plain)
    meta = {p.key: p.value for p in folded.metadata_props}
    assert meta["fresnet_bn_folded"] == "true"


def test_static_batch_and_opset_limits(tmp_path):
    model = randomized(fresnet.create_model(**TINY))
    proto = export_and_check(model, tmp_path / "static.onnx", dynamic_batch=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    with pytest.raises(FresnetError, match="opset 16 is too old"):
        fresnet.export_onnx(model, tmp_path / "old.onnx", opset=16)
    with pytest.raises(FresnetError, match="unknown exporter"):
        fresnet.export_onnx(model, tmp_path / "x.onnx", exporter="tf")
    assert not (tmp_path / "old.onnx").exists()


def test_export_leaves_the_model_untouched(tmp_path):
    model = fresnet.create_model(**TINY).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresnet.export_onnx(model, tmp_path / "m.onnx", fold_bn=True)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dynamo_exporter_also_matches(tmp_path):
    model = randomized(fresnet.create_model(**TINY, net_output="GNAP"))
    proto = export_and_check(model, tmp_path / "dynamo.onnx", exporter="dynamo")
    slopes = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "PRelu":
            assert len(slopes[node.input[1]].dims) == 3


@pytest.mark.parametrize("shape", [(4,), (1, 4, 1, 1)])
def test_reshape_prelu_slopes_rewrites_other_layouts(shape):
    slope = np.linspace(0.1, 0.4, 4).astype(np.float32).reshape(shape)
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slope"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4, 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4, 3, 3])],
        [numpy_helper.from_array(slope, "slope")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    expected = np.where(x > 0, x, x * slope.reshape(1, 4, 1, 1))
    assert reshape_prelu_slopes(proto) == 1
    assert list(proto.graph.initializer[0].dims) == [4, 1, 1]
    onnx.checker.check_model(proto)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_the_export_check_is_relative_to_the_outputs_it_measured(tmp_path, capsys):
    """Issue 24 item 11: the limit was scaled by the output of a grey image (~1.3) while the
    difference is measured on random images, whose outputs reach ~180 for random-weight presets:
    a relative error near 1e-6 was reported as FAILED."""
    import fresnet
    from fresnet.cli import main
    from fresnet.interop.onnx_export import compare_onnx, export_onnx

    torch.manual_seed(0)
    model = fresnet.create_model("r18", units=[1, 1, 1, 1], filter_list=[8, 8, 8, 8, 8], emb_size=16).eval()
    src, probe = tmp_path / "m.safetensors", tmp_path / "probe.onnx"
    fresnet.save(model, src)
    export_onnx(model, probe)
    difference = compare_onnx(model, probe)
    assert difference.output_scale > 20  # random weights: large outputs
    assert difference.max_abs_diff > 0
    with torch.no_grad():
        grey = float(model(torch.full((1, 3, 112, 112), 127.0)).abs().max())
    assert grey < difference.output_scale / 10
    tolerance = 2 * difference.max_abs_diff / difference.output_scale  # a relative error well within it
    assert main(["export", str(src), str(tmp_path / "m.onnx"), "--tolerance", f"{tolerance:.6g}"]) == 0
    assert "(ok," in capsys.readouterr().out
    assert main(["export", str(src), str(tmp_path / "m2.onnx"), "--tolerance", f"{tolerance / 4:.6g}"]) == 1


def test_an_asked_for_opset_is_written_or_refused(tmp_path, capsys):
    """Issue 24 item 12 (dynamo --opset 17 wrote opset 18 and said ok) and the hostile --opset 99999
    (a raw RuntimeError from the exporter)."""
    from fresnet.cli import main

    model = randomized(fresnet.create_model(**TINY))
    with pytest.raises(FresnetError, match="dynamo exporter writes opset 18 or newer"):
        fresnet.export_onnx(model, tmp_path / "d17.onnx", exporter="dynamo", opset=17)
    assert not (tmp_path / "d17.onnx").exists()
    proto = export_and_check(model, tmp_path / "d.onnx", exporter="dynamo")  # no opset asked: its own default
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    src = tmp_path / "m.safetensors"
    fresnet.save(model, src)
    for argv in (["convert", str(src), str(tmp_path / "x.onnx"), "--opset", "99999"],
                 ["export", str(src), str(tmp_path / "y.onnx"), "--exporter", "dynamo", "--opset", "17"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "opset" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
