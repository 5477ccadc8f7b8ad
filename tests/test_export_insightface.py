"""``fresnet export --insightface``: InsightFace's own ArcFaceONNX (and the model router FaceAnalysis
uses) loads the graph, feeds it raw pixels, and gets fresnet's embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from insightface_oracle import model_zoo

from fresnet.cli import main
from fresnet.errors import FresnetError
from fresnet.interop.insightface_onnx import (
    MUL_NAME,
    SUB_NAME,
    export_insightface,
    mark_raw_input,
    reads_raw_pixels,
)
from fresnet.interop.native import save
from fresnet.network.model import create_model

TINY = {"units": [1, 1, 1, 1], "filter_list": [16, 16, 32, 64, 128], "emb_size": 128}


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("r18", **{**TINY, **overrides}).eval()


def faces(count: int = 5, size: int = 112) -> list[np.ndarray]:
    """BGR uint8 'crops', as InsightFace's get_feat takes them."""
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def fresnet_embeddings(model, bgr_images) -> np.ndarray:
    rgb = np.stack([cv2.cvtColor(i, cv2.COLOR_BGR2RGB) for i in bgr_images])
    with torch.no_grad():
        return model(torch.from_numpy(rgb).permute(0, 3, 1, 2).float()).numpy()


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def check_with_insightface(model, path):
    arcface = model_zoo("arcface_onnx").ArcFaceONNX(str(path))
    assert (arcface.input_mean, arcface.input_std) == (0.0, 1.0)
    assert arcface.input_size == (112, 112)
    images = faces()
    got = arcface.get_feat(images)
    assert got.shape == (5, 128)
    assert cosine(got, fresnet_embeddings(model, images)).min() >= 0.99999
    routed = model_zoo("model_zoo").ModelRouter(str(path)).get_model(providers=["CPUExecutionProvider"])
    assert type(routed).__name__ == "ArcFaceONNX" and (routed.input_mean, routed.input_std) == (0.0, 1.0)


def test_cli_export_insightface(tmp_path, capsys):
    model = tiny()
    src = tmp_path / "tiny.safetensors"
    save(model, src)
    dst = tmp_path / "tiny-insightface.onnx"
    assert main(["export", str(src), str(dst), "--insightface"]) == 0
    out = capsys.readouterr().out
    assert "ArcFaceONNX feeds raw pixels; cosine to PyTorch min" in out and "(ok" in out
    proto = onnx.load(str(dst))
    assert [n.name for n in proto.graph.node if n.op_type in ("Sub", "Mul")][:2] == [SUB_NAME, MUL_NAME]
    assert reads_raw_pixels(proto)
    check_with_insightface(model, dst)


def test_plain_export_is_misread_by_insightface(tmp_path):
    """Why the flag exists: torch.onnx names fresnet's normalisation /stem/norm/Sub and puts it after the
    weight nodes, so InsightFace would normalise the pixels a second time."""
    dst = tmp_path / "plain.onnx"
    assert main(["export", "r18", str(dst), "--set", "units=[1,1,1,1]", "--set", "filter_list=[16,16,32,64,128]",
                 "--set", "emb_size=128", "--no-verify"]) == 0
    assert not reads_raw_pixels(onnx.load(str(dst)))
    arcface = model_zoo("arcface_onnx").ArcFaceONNX(str(dst))
    assert (arcface.input_mean, arcface.input_std) == (127.5, 127.5)


def test_raw_pixel_stem_gets_a_no_op_pair(tmp_path):
    """net_input=2 (bn_data on raw pixels) has no Sub/Mul of its own: an exact '- 0', '* 1' pair is put first."""
    model = tiny(net_input=2)
    with torch.no_grad():  # non-trivial bn_data statistics, so a wrong input scale would show
        model.stem.bn_data.running_mean.uniform_(100, 150)
        model.stem.bn_data.running_var.uniform_(3000, 5000)
    path = export_insightface(model, tmp_path / "raw.onnx", fold_bn=True)
    proto = onnx.load(path)
    assert [n.name for n in proto.graph.node[:2]] == [SUB_NAME, MUL_NAME]
    check_with_insightface(model, path)


def test_mark_raw_input_is_idempotent(tmp_path):
    path = export_insightface(tiny(), tmp_path / "m.onnx")
    proto = onnx.load(path)
    before = [n.name for n in proto.graph.node]
    assert mark_raw_input(proto) == "moved"
    assert [n.name for n in proto.graph.node] == before


def test_shapes_insightface_cannot_load(tmp_path):
    with pytest.raises(FresnetError, match="112x96 cannot be used by InsightFace"):
        export_insightface(tiny(input_size=(112, 96), net_output="GAP"), tmp_path / "rect.onnx")
    with pytest.raises(FresnetError, match="one \\(N, D\\) embedding output"):
        export_insightface(tiny(net_output="Z"), tmp_path / "z.onnx")
    with pytest.raises(SystemExit):  # argparse: the flag exists, the combination is refused below
        main(["export", "--help"])


def test_cli_refuses_int8_with_insightface(tmp_path, capsys):
    code = main(["export", "r18", str(tmp_path / "x.onnx"), "--insightface", "--int8", "--set", "units=[1,1,1,1]"])
    assert code != 0
    assert "--insightface writes a float32 graph" in capsys.readouterr().err
