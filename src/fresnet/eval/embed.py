"""Embeddings in batches, with InsightFace's flip-sum test-time augmentation, and the ``.bin`` evaluation.

``embed_images`` runs the network on each image and, with ``flip=True``, on its horizontal mirror,
and returns the *sum* (``embeddings_list[0] + embeddings_list[1]`` in InsightFace's ``test``). Callers
normalise afterwards (:func:`normalize`), as the original does.

``collect_inputs`` turns what a user names on the command line (image files, folders, RecordIO
datasets, verification packs) into a list of named images, decoded lazily.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from fresnet.errors import FresnetError
from fresnet.eval.verification import VerificationResult, l2_normalize, pair_distances, verify

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
Progress = Optional[Callable[[int], None]]  # called with the number of images just finished


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalise rows (zero rows stay zero), returned as float32."""
    return l2_normalize(embeddings).astype(np.float32)


def to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W); NCHW input passes through."""
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4 and x.shape[1] == 3:
        return x
    raise FresnetError(f"expected images of shape (N, H, W, 3) or (N, 3, H, W), got {x.shape}")


def embed_images(
    embedder,
    images: np.ndarray,
    batch_size: int = 64,
    flip: bool = True,
    progress: Progress = None,
) -> np.ndarray:
    """Embeddings of ``images`` ((N, H, W, 3) or (N, 3, H, W), 0..255), flip-summed when ``flip``.

    Not normalised: ``normalize(embed_images(...))`` is InsightFace's final embedding.
    """
    if batch_size < 1:
        raise FresnetError(f"batch size must be >= 1, got {batch_size}")
    x = to_nchw(images)
    out = None
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size].astype(np.float32)
        emb = embedder.embed(batch)
        if flip:
            # InsightFace: flip(axis=2) on CHW -- the width axis, a horizontal mirror
            emb = emb + embedder.embed(np.ascontiguousarray(batch[:, :, :, ::-1]))
        if out is None:
            out = np.zeros((x.shape[0], emb.shape[1]), dtype=np.float32)
        out[start:start + emb.shape[0]] = emb
        if progress is not None:
            progress(emb.shape[0])
    if out is None:
        raise FresnetError("no images to embed")
    return out


@dataclass
class BinEvaluation:
    """One verification pack evaluated with one model."""

    name: str
    path: str
    result: VerificationResult
    distances: np.ndarray
    issame: np.ndarray
    embed_seconds: float
    num_images: int


def evaluate_images(
    embedder,
    images: np.ndarray,
    issame: Sequence[bool],
    name: str = "pairs",
    batch_size: int = 64,
    flip: bool = True,
    nfolds: int = 10,
    progress: Progress = None,
    path: str = "",
) -> BinEvaluation:
    """Embed a verification set held in memory ((2P, H, W, 3) uint8) and run :func:`verify`."""
    start = time.perf_counter()
    emb = embed_images(embedder, images, batch_size=batch_size, flip=flip, progress=progress)
    seconds = time.perf_counter() - start
    result = verify(emb, issame, nfolds=nfolds)
    return BinEvaluation(
        name=name,
        path=path,
        result=result,
        distances=pair_distances(emb),
        issame=np.asarray(issame, dtype=bool),
        embed_seconds=seconds,
        num_images=len(images),
    )


def evaluate_bin(
    embedder,
    path: Union[str, os.PathLike],
    batch_size: int = 64,
    flip: bool = True,
    nfolds: int = 10,
    progress: Progress = None,
) -> BinEvaluation:
    """Load a ``.bin`` pack (resized to the model's input size, as ``load_bin`` does) and evaluate it."""
    from fresnet.data.verification_bin import load_bin

    images, issame = load_bin(path, image_size=tuple(embedder.input_size))
    name = Path(path).stem
    return evaluate_images(
        embedder, images, issame, name=name, batch_size=batch_size, flip=flip, nfolds=nfolds, progress=progress,
        path=os.fspath(path),
    )


# --------------------------------------------------------------------------------------------------
# inputs for `fresnet embed` / `fresnet compare`


@dataclass(frozen=True)
class InputImage:
    """A named image whose pixels are read on demand (uint8 HWC RGB); ``photo``: a file of its own
    (a photograph or an aligned crop), not a face of a dataset."""

    name: str
    load: Callable[[], np.ndarray]
    photo: bool = False


def _file_image(path: Path) -> InputImage:
    from fresnet.faces.photo import read_photo

    return InputImage(str(path), lambda: read_photo(path), photo=True)


def _is_recordio(path: Path) -> bool:
    if path.suffix == ".rec":
        return True
    return path.is_dir() and (path / "train.rec").is_file()


def _recordio_images(path: Path) -> list[InputImage]:
    from fresnet.data.recordio.dataset import RecordIODataset

    dataset = RecordIODataset(path)

    def loader(index: int) -> Callable[[], np.ndarray]:
        return lambda: dataset[index][0].numpy().transpose(1, 2, 0)

    return [InputImage(f"{path}#{int(key)}", loader(i)) for i, key in enumerate(dataset.keys)]


def _bin_images(path: Path) -> list[InputImage]:
    from fresnet.data.decode import decode_image
    from fresnet.data.verification_bin import read_bin

    encoded, _ = read_bin(path)

    def loader(index: int) -> Callable[[], np.ndarray]:
        return lambda: decode_image(encoded[index], f"{path}: image {index}")

    return [InputImage(f"{path}#{i}", loader(i)) for i in range(len(encoded))]


def collect_inputs(paths: Iterable[Union[str, os.PathLike]]) -> list[InputImage]:
    """Image files, folders (searched recursively, sorted), RecordIO datasets (``.rec`` or a folder
    holding ``train.rec``) and ``.bin`` verification packs, in the order given."""
    items: list[InputImage] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FresnetError(f"{path}: no such file or folder")
        if _is_recordio(path):
            items.extend(_recordio_images(path))
        elif path.suffix == ".bin":
            items.extend(_bin_images(path))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FresnetError(f"{path}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            items.extend(_file_image(p) for p in found)
        else:
            items.append(_file_image(path))
    if not items:
        raise FresnetError("no input images given")
    return items


def prepare_image(image: np.ndarray, input_size: tuple[int, int], landmarks: Optional[np.ndarray] = None,
                  name: str = "image") -> np.ndarray:
    """The model's input, HWC uint8: the face aligned with ``landmarks`` at the model's size, or the
    image as it is when it already is a crop of that size. Never resized: a resized photo is not a
    face the network was trained on (photos go through ``fresnet.FaceAnalysis`` instead)."""
    h, w = int(input_size[0]), int(input_size[1])
    if landmarks is not None:
        from fresnet.faces.align import norm_crop

        if h != w:
            raise FresnetError(f"{name}: alignment makes square crops; the model takes {h}x{w} input")
        return norm_crop(image, landmarks, image_size=h)
    if image.shape[:2] != (h, w):
        raise FresnetError(
            f"{name}: a {image.shape[1]}x{image.shape[0]} image is not an aligned crop of the model's {w}x{h} input; "
            "give landmarks to align it, or detect its faces (fresnet.FaceAnalysis, `fresnet embed`)"
        )
    return image


def embed_inputs(
    embedder,
    inputs: Sequence[InputImage],
    landmarks=None,
    batch_size: int = 64,
    flip: bool = True,
    progress: Progress = None,
) -> np.ndarray:
    """Normalised embeddings of named inputs, decoded, aligned/resized and embedded a batch at a time."""
    from fresnet.faces.align import landmarks_for

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FresnetError(f"batch size must be an integer >= 1, got {batch_size!r}")
    chunks = []
    for start in range(0, len(inputs), batch_size):
        batch = []
        for offset, item in enumerate(inputs[start:start + batch_size]):
            points = landmarks_for(landmarks, item.name, start + offset) if landmarks is not None else None
            batch.append(prepare_image(item.load(), embedder.input_size, points, item.name))
        chunks.append(embed_images(embedder, np.stack(batch), batch_size=batch_size, flip=flip))
        if progress is not None:
            progress(len(batch))
    return normalize(np.concatenate(chunks))
