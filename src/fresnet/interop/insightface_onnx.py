"""ONNX recognisers as InsightFace's model zoo reads them, and fresnet exports that it reads right.

InsightFace's ``ArcFaceONNX`` (``insightface/model_zoo/arcface_onnx.py``) never asks a graph how its
input is scaled; it guesses from the *names* of the graph's first 8 nodes. When it finds a node
named ``Sub...`` or ``_minus...`` and one named ``Mul...`` or ``_mul...`` there (MXNet's
``_minusscalar0`` / ``_mulscalar0`` input normalisation, kept by the MXNet-to-ONNX converter), it
feeds raw RGB pixels 0..255; otherwise it feeds ``(x - 127.5) / 127.5``.

* :func:`reads_raw_pixels` applies that rule. With ``data_path=True`` it looks at the first 8 nodes
  *the image flows through* instead of the first 8 of the file: weight-quantised graphs such as
  OpenCV's SFace int8 list dozens of weight ``DequantizeLinear`` nodes first, so InsightFace's window
  misses their ``_minusscalar0`` (node 56 of 145) and it normalises the pixels twice.
* :func:`mark_raw_input` edits a graph that takes raw RGB 0..255 so that InsightFace sees it so:
  fresnet's normalisation ``(x - 127.5) * 0.0078125``, which torch.onnx names ``/stem/norm/Sub`` and
  ``/stem/norm/Mul`` and places after dozens of weight nodes, becomes the file's first two nodes,
  ``_minusscalar0`` and ``_mulscalar0``, as in the original MXNet graph. A graph without that
  normalisation (``net_input=2``'s ``bn_data`` on raw pixels) gets an exact no-op pair, ``- 0`` and
  ``* 1``, under those names.
* :func:`export_insightface` writes a fresnet model so: ``ArcFaceONNX`` (and so ``FaceAnalysis``,
  whose model router takes any square input of at least 112 px, a multiple of 16, with one output)
  then computes fresnet's own embeddings.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from fresnet.errors import FresnetError
from fresnet.interop.onnx_export import set_metadata

WINDOW = 8  # ArcFaceONNX looks at graph.node[:8]
SUB_PREFIXES = ("Sub", "_minus")
MUL_PREFIXES = ("Mul", "_mul")
SUB_NAME = "_minusscalar0"  # the original MXNet fresnet's node names
MUL_NAME = "_mulscalar0"
RAW_INPUT = "raw RGB 0..255 NCHW float32 (InsightFace ArcFaceONNX: input_mean 0, input_std 1)"


def image_input_name(proto) -> str:
    """The graph's image input: its first input that is not an initializer (MXNet-converted graphs
    list their weights as inputs too)."""
    weights = {init.name for init in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name not in weights:
            return value.name
    raise FresnetError("the ONNX graph has no input that is not a weight")


def data_path_nodes(proto) -> list:
    """The graph's nodes that the image input flows into, in file order."""
    reached = {image_input_name(proto)}
    nodes = []
    for node in proto.graph.node:
        if any(name in reached for name in node.input):
            nodes.append(node)
            reached.update(node.output)
    return nodes


def reads_raw_pixels(proto, data_path: bool = False) -> bool:
    """Whether InsightFace's ``ArcFaceONNX`` rule finds the input normalisation inside the graph (so it
    feeds raw pixels): a ``Sub``/``_minus`` and a ``Mul``/``_mul`` named node among the first 8 nodes
    of the file, or of the image's path through it with ``data_path=True``."""
    nodes = (data_path_nodes(proto) if data_path else list(proto.graph.node))[:WINDOW]
    return any(n.name.startswith(SUB_PREFIXES) for n in nodes) and any(n.name.startswith(MUL_PREFIXES) for n in nodes)


def mark_raw_input(proto) -> str:
    """Edit ``proto`` (a graph taking raw RGB 0..255) in place so that InsightFace feeds it raw pixels;
    returns what was done: 'moved' (its own Sub and Mul renamed and put first) or 'added' (a no-op
    pair put first)."""
    graph = proto.graph
    image = image_input_name(proto)
    pair = _leading_normalisation(proto, image)
    taken = {node.name for node in graph.node}
    ours = pair is not None and {pair[0].name, pair[1].name} == {SUB_NAME, MUL_NAME}
    if (SUB_NAME in taken or MUL_NAME in taken) and not ours:
        raise FresnetError(f"the graph already has a node named {SUB_NAME} or {MUL_NAME} elsewhere")
    if pair is not None:
        sub, mul = pair
        operands = {sub.input[1], *mul.input}
        nodes = [_copy(n) for n in graph.node]
        constants = [i for i, n in enumerate(nodes) if n.op_type == "Constant" and set(n.output) & operands]
        first = constants + [_index_of(nodes, sub), _index_of(nodes, mul)]
        moved = set(first)
        ordered = [nodes[i] for i in first] + [n for i, n in enumerate(nodes) if i not in moved]
        ordered[len(constants)].name, ordered[len(constants) + 1].name = SUB_NAME, MUL_NAME
        action = "moved"
    else:
        from onnx import helper, numpy_helper

        zero, one = _unique(graph, "insightface_zero"), _unique(graph, "insightface_one")
        graph.initializer.extend([numpy_helper.from_array(np.zeros(1, np.float32), zero),
                                  numpy_helper.from_array(np.ones(1, np.float32), one)])
        centred, scaled = _unique(graph, "_minusscalar0_output"), _unique(graph, "_mulscalar0_output")
        rest = [_copy(n) for n in graph.node]
        for node in rest:
            for index, name in enumerate(node.input):
                if name == image:
                    node.input[index] = scaled
        ordered = [helper.make_node("Sub", [image, zero], [centred], name=SUB_NAME),
                   helper.make_node("Mul", [centred, one], [scaled], name=MUL_NAME)] + rest
        action = "added"
    del graph.node[:]
    graph.node.extend(ordered)
    if not reads_raw_pixels(proto):
        raise FresnetError("internal: the edited graph still does not read as raw-pixel input to InsightFace")
    return action


def _leading_normalisation(proto, image: str):
    """``(sub, mul)`` when the image goes first and only through ``Sub(image, c)`` then ``Mul(., c')``
    with constant ``c``, ``c'``; else None."""
    constants = {init.name for init in proto.graph.initializer}
    constants |= {out for n in proto.graph.node if n.op_type == "Constant" for out in n.output}
    users = [n for n in proto.graph.node if image in n.input]
    if len(users) != 1 or users[0].op_type != "Sub" or list(users[0].input[:1]) != [image]:
        return None
    sub = users[0]
    if sub.input[1] not in constants:
        return None
    users = [n for n in proto.graph.node if sub.output[0] in n.input]
    if len(users) != 1 or users[0].op_type != "Mul":
        return None
    mul = users[0]
    other = [name for name in mul.input if name != sub.output[0]]
    if len(other) != 1 or other[0] not in constants:
        return None
    return sub, mul


def _index_of(nodes: list, node) -> int:
    """Position of ``node`` (by its outputs, which are unique in a graph) in ``nodes``."""
    return next(i for i, n in enumerate(nodes) if list(n.output) == list(node.output))


def _copy(node):
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    return copy


def _unique(graph, name: str) -> str:
    used = {i.name for i in graph.initializer} | {v.name for v in graph.input}
    used |= {out for n in graph.node for out in n.output}
    candidate, k = name, 0
    while candidate in used:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def check_insightface_shape(input_size, where: str) -> None:
    """InsightFace's model router hands a graph to ``ArcFaceONNX`` only for a square input of at least
    112 px, a multiple of 16 (``norm_crop`` makes square crops); anything else it drops."""
    h, w = (int(v) for v in input_size)
    if h != w or h < 112 or h % 16:
        raise FresnetError(
            f"{where}: input {h}x{w} cannot be used by InsightFace: its FaceAnalysis loads a recogniser only "
            "with a square input of at least 112 px, a multiple of 16 (e.g. 112x112); export a model of such a size"
        )


def export_insightface(model, path: str | os.PathLike, *, opset: int = 17, dynamic_batch: bool = True,
                       fold_bn: bool = False, exporter: str = "torchscript") -> str:
    """Export ``model`` to ONNX for InsightFace: raw RGB 0..255 in (the graph normalises, with its first
    two nodes named as InsightFace expects), one ``(N, D)`` embedding out. Written atomically; returns
    the path. The embeddings are the plain export's (:func:`fresnet.interop.onnx_export.export_onnx`)."""
    import onnx

    from fresnet.interop.onnx_export import export_onnx
    from fresnet.ioutil import atomic_write_bytes

    config = getattr(model, "config", None)
    if config is not None:
        check_insightface_shape(config.input_size, f"model {config.short_name()}")
    with tempfile.TemporaryDirectory(prefix="fresnet-insightface-") as folder:
        plain = Path(folder) / "plain.onnx"
        export_onnx(model, plain, dynamic_batch=dynamic_batch, opset=opset, fold_bn=fold_bn, exporter=exporter)
        proto = onnx.load(str(plain))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    check_insightface_shape((dims[2].dim_value, dims[3].dim_value), os.fspath(path))
    if len(proto.graph.output) != 1 or len(proto.graph.output[0].type.tensor_type.shape.dim) != 2:
        raise FresnetError(f"{os.fspath(path)}: InsightFace takes one (N, D) embedding output; this model's head gives "
                           f"{[len(o.type.tensor_type.shape.dim) for o in proto.graph.output]}-D outputs "
                           "(export a model with an embedding head, e.g. E, FC or GDC)")
    action = mark_raw_input(proto)
    set_metadata(proto, "fresnet_input", RAW_INPUT)
    set_metadata(proto, "fresnet_insightface", f"input normalisation nodes {SUB_NAME}/{MUL_NAME} ({action})")
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    return os.fspath(path)


def verify_insightface(model, path: str | os.PathLike, batch: int = 4, seed: int = 0) -> float:
    """Check ``path`` as InsightFace's ``ArcFaceONNX`` would use it: its rule must read the graph as
    taking raw pixels, and the graph fed raw RGB 0..255 must give ``model``'s embeddings. Returns the
    lowest cosine between the two over a batch of random images."""
    import copy

    import onnx
    import onnxruntime as ort
    import torch

    proto = onnx.load(os.fspath(path), load_external_data=False)
    if not reads_raw_pixels(proto):
        raise FresnetError(f"{os.fspath(path)}: InsightFace would normalise the pixels before this graph: no "
                           f"Sub/_minus and Mul/_mul named node among its first {WINDOW} nodes")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    fixed_batch = shape[0] if isinstance(shape[0], int) else batch
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (fixed_batch, 3, int(shape[2]), int(shape[3]))).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: pixels})[0].reshape(fixed_batch, -1)
    with torch.no_grad():
        expected = copy.deepcopy(model).float().cpu().eval()(torch.from_numpy(pixels)).numpy().reshape(fixed_batch, -1)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    return float(((got * expected).sum(1) / np.maximum(norms, 1e-30)).min())


__all__ = [
    "check_insightface_shape",
    "data_path_nodes",
    "export_insightface",
    "image_input_name",
    "mark_raw_input",
    "reads_raw_pixels",
    "verify_insightface",
]
