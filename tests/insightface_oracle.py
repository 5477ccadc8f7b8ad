"""InsightFace's own model-zoo classes, loaded from the installed ``insightface==2.1`` wheel as test oracles.

The wheel is installed with ``--no-deps``: its package ``__init__`` imports modules whose requirements
(tqdm, scikit-image, ...) are absent. The model-zoo files themselves need only numpy, OpenCV, onnx and
onnxruntime, so they are loaded by file path under a private package name (``_insightface_oracle``)
whose ``__init__`` files are never run; ``utils.face_align`` (scikit-image) is a stub, as the tests
call ``get_feat``/``detect`` and never InsightFace's own alignment.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
from pathlib import Path

import pytest

ALIAS = "_insightface_oracle"
VERSION = "2.1"


def wheel_root() -> Path:
    try:
        dist = importlib.metadata.distribution("insightface")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"insightface=={VERSION} is not installed (pip install --no-deps insightface=={VERSION})")
    root = Path(str(dist.locate_file("insightface")))
    if not (root / "model_zoo" / "scrfd.py").is_file():
        pytest.skip(f"the installed insightface {dist.version} has no model_zoo/scrfd.py")
    return root


def _package(name: str, path: Path) -> None:
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


def model_zoo(module: str):
    """``insightface.model_zoo.<module>`` (e.g. 'scrfd', 'arcface_onnx', or 'model_zoo', whose
    ``ModelRouter`` is how ``FaceAnalysis`` picks the class for each graph), loaded from the wheel's file."""
    root = wheel_root()
    _package(ALIAS, root)
    _package(f"{ALIAS}.model_zoo", root / "model_zoo")
    _package(f"{ALIAS}.utils", root / "utils")
    sys.modules.setdefault(f"{ALIAS}.utils.face_align", types.ModuleType(f"{ALIAS}.utils.face_align"))
    utils = sys.modules[f"{ALIAS}.utils"]
    if not hasattr(utils, "download_onnx"):  # model_zoo.py imports it; the tests never download
        utils.download_onnx = None
    return importlib.import_module(f"{ALIAS}.model_zoo.{module}")
