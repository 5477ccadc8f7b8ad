"""Open an ONNX graph in onnxruntime for a face model, with errors that name the file.

The detectors and recognisers of InsightFace's model zoo are plain ONNX files; this module is the one
place that turns a path into an ``InferenceSession`` (quietly: int8 graphs exported by old
converters list their initializers as inputs, and onnxruntime warns about each) and finds the image
input among the graph's inputs.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fresnet.errors import FresnetError

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def open_session(path: str | os.PathLike, providers: Sequence | None = None, what: str = "ONNX model",
                 graph=None):
    """An ``onnxruntime.InferenceSession`` for ``path`` (CPU unless ``providers`` says otherwise).

    ``graph``, an ``onnx.ModelProto`` read from ``path`` and edited (e.g. its input size fixed), is
    run instead of the file's bytes; ``path`` then names it in errors.
    """
    import onnxruntime as ort

    file = Path(path)
    if graph is None and not file.is_file():
        raise FresnetError(f"no such {what}: {file}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # onnxruntime's worker threads spin-wait after each run by default, holding the cores while the
    # pipeline's next stage (alignment, a PyTorch recogniser) wants them: measured on 2 cores, a
    # PyTorch r50 right after an SCRFD run took twice its time. Idle workers sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        source = os.fspath(file) if graph is None else graph.SerializeToString()
        return ort.InferenceSession(source, options, providers=list(providers or DEFAULT_PROVIDERS))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FresnetError(f"{file}: onnxruntime cannot load this {what}: {first}") from None


def drop_unused_inputs(proto) -> list[str]:
    """Remove graph inputs that no node reads and no initializer backs; returns their names.

    OpenCV zoo's int8 SFace still declares the float weights its converter replaced with
    ``DequantizeLinear`` nodes as graph inputs: nothing reads them, but onnxruntime would demand a
    value for each.
    """
    graph = proto.graph
    read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    backed = {init.name for init in graph.initializer}
    unused = [value for value in graph.input if value.name not in read and value.name not in backed]
    for value in unused:
        graph.input.remove(value)
    return [value.name for value in unused]


def image_input(session, path: str | os.PathLike, what: str = "ONNX model"):
    """The graph's image input: the first input that is not also an initializer.

    Graphs converted from MXNet (SFace) list every weight as an input too; onnxruntime reports those
    after the data input, so the first input is the image, but only a 4-D one is accepted.
    """
    inputs = session.get_inputs()
    if not inputs:
        raise FresnetError(f"{path}: the {what} has no input")
    first = inputs[0]
    if len(first.shape) != 4:
        raise FresnetError(f"{path}: the {what}'s input {first.name!r} has shape {list(first.shape)}; "
                           "expected an NCHW image batch (N, 3, H, W)")
    return first


def fixed(dim) -> int | None:
    """A dimension of an onnxruntime shape as an int, or None when it is symbolic or unknown."""
    return int(dim) if isinstance(dim, int) and dim > 0 else None
