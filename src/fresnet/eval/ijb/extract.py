"""Per-face features from an IJB release's pictures, as InsightFace's scripts compute them, fast.

Each ``loose_crop`` picture is decoded (Pillow; libjpeg-turbo, the decoder OpenCV uses too), aligned
to the ArcFace 112x112 template with its landmarks exactly as ``eval_ijbc.py`` does (see
:func:`fresnet.faces.align.align_ijb_face`), and embedded with its mirror image. Row i of the output
is ``[embedding(face i), embedding(mirror of face i)]``, float32, in the order of the landmarks file,
the layout :func:`fresnet.eval.ijb.evaluate` reads.

DataLoader workers decode the pictures and estimate the transforms in parallel; the warp runs in
the workers on CPU and on the GPU (batched, the same integer arithmetic, the same bits) when the
model is there. The features stream into a memory-mapped ``.npy``; a small sidecar
``<name>.npy.progress.json`` (written atomically after the rows it counts are flushed) records how
many rows are done, so an interrupted extraction resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from fresnet.errors import FresnetError
from fresnet.eval.ijb.layout import FaceTable, IJBPaths

PathLike = Union[str, os.PathLike]
Progress = Optional[Callable[[int], None]]
CHECKPOINT_SECONDS = 2.0
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# pictures -> aligned faces


class LooseCropBatches:
    """Batch k holds faces ``first + k*batch_size ...``: decoded pictures and alignment matrices
    (``align=False``, for a warp on the GPU) or the aligned 112x112 faces (``align=True``).

    Indexable, so a ``torch.utils.data.DataLoader`` with ``batch_size=None`` runs it in workers. A
    bad picture comes back as ``{"error": message}``, so the main process can raise a clean error.
    """

    def __init__(self, paths: IJBPaths, faces: FaceTable, batch_size: int, first: int = 0, align: bool = True):
        self.folder, self.faces, self.batch_size = paths.images, faces, int(batch_size)
        self.first, self.align = int(first), align

    def __len__(self) -> int:
        return -(-(len(self.faces) - self.first) // self.batch_size)

    def _picture(self, face: int) -> np.ndarray:
        from fresnet.data.decode import decode_image, read_file_bytes

        name = str(self.faces.names[face])
        where = f"{self.folder / name} (line {face + 1} of {self.faces.landmarks_path.name})"
        try:
            data = read_file_bytes(self.folder / name)
        except FresnetError as exc:
            raise FresnetError(f"{where}: cannot read the picture: {exc}") from None
        return decode_image(data, where)

    def __getitem__(self, k: int) -> dict[str, Any]:
        import torch

        from fresnet.faces.align import IJB_CROP_SIZE, ijb_alignment_matrix, pixel_batch, warp_affine_opencv

        start = self.first + k * self.batch_size
        stop = min(len(self.faces), start + self.batch_size)
        try:
            pictures = [self._picture(face) for face in range(start, stop)]
            matrices = torch.from_numpy(np.stack([ijb_alignment_matrix(self.faces.landmarks[f]) for f in range(start, stop)]))
        except FresnetError as exc:
            return {"error": str(exc)}
        batch = {"start": start, "count": stop - start}
        if self.align:  # on the CPU, OpenCV itself (the torch copy is 37x slower there; it serves the GPU)
            size = (IJB_CROP_SIZE, IJB_CROP_SIZE)
            batch["faces"] = torch.from_numpy(np.stack([warp_affine_opencv(p, m, size) for p, m in zip(pictures, matrices.numpy())]))
        else:
            pixels, offsets, shapes = pixel_batch(pictures)
            batch.update(pixels=pixels, offsets=offsets, shapes=shapes, matrices=matrices)
        return batch


def aligned_faces(batch: dict[str, Any], device) -> "torch.Tensor":
    """The batch's (B, 112, 112, 3) uint8 faces on ``device`` (warped there if the worker did not)."""
    from fresnet.faces.align import IJB_CROP_SIZE, warp_affine_opencv_batch

    if "faces" in batch:
        return batch["faces"].to(device, non_blocking=True)
    moved = {k: batch[k].to(device, non_blocking=True) for k in ("pixels", "offsets", "shapes", "matrices")}
    return warp_affine_opencv_batch(moved["pixels"], moved["offsets"], moved["shapes"], moved["matrices"],
                                    (IJB_CROP_SIZE, IJB_CROP_SIZE))


def embed_faces(embedder, faces, flip: bool) -> np.ndarray:
    """Rows ``[emb(face), emb(mirror)]`` (or ``emb(face)`` without ``flip``) of uint8 NHWC faces.

    A PyTorch model gets face and mirror in one batch on its device; other embedders (ONNX) get
    float NCHW arrays through their ``embed``.
    """
    import torch

    model = getattr(embedder, "model", None)
    if isinstance(model, torch.nn.Module):
        x = faces.to(embedder.device).permute(0, 3, 1, 2).float()
        n = x.shape[0]
        if flip:
            x = torch.cat([x, x.flip(3)])
        with torch.inference_mode():
            out = model(x)
        if out.ndim != 2:
            raise FresnetError(f"{embedder.name}: the network outputs shape {tuple(out.shape)}, not (N, D) embeddings")
        out = out.float()
        if flip:
            out = torch.cat([out[:n], out[n:]], 1)
        return out.cpu().numpy()
    x = faces.cpu().numpy().transpose(0, 3, 1, 2).astype(np.float32)
    out = np.asarray(embedder.embed(x), dtype=np.float32)
    if flip:
        out = np.concatenate([out, np.asarray(embedder.embed(np.ascontiguousarray(x[..., ::-1])), dtype=np.float32)], 1)
    return out


# --------------------------------------------------------------------------------------------------
# the resumable output


def landmarks_fingerprint(faces: FaceTable) -> str:
    digest = hashlib.sha1()
    with open(faces.landmarks_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_progress(sidecar: Path, features: Optional[Path] = None) -> dict[str, Any]:
    """An extraction's progress file (``F.npy.progress.json``), checked to be a JSON object."""
    from fresnet.ioutil import read_text
    from fresnet.validate import as_mapping, load_json

    features = features or sidecar.with_name(sidecar.name[: -len(".progress.json")])
    fix = f"delete it and {features.name}, then extract again"
    try:
        state = load_json(read_text(sidecar, "progress file"), str(sidecar), "progress file")
    except FresnetError as exc:
        raise FresnetError(f"{exc}; {fix}") from None
    return as_mapping(state, "progress", str(sidecar), fix=fix)


@dataclass
class FeatureStore:
    """A (faces, width) float32 ``.npy`` written front to back, and its progress sidecar."""

    path: Path
    faces: int
    identity: dict[str, Any]  # what the rows are: model, flip, face list; must match to resume

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.array: Optional[np.ndarray] = None
        self.done = 0
        self.width: Optional[int] = None

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".progress.json")

    def _write_sidecar(self, complete: bool = False) -> None:
        from fresnet.ioutil import atomic_write_text

        state = {"version": FORMAT_VERSION, **self.identity, "faces": self.faces, "width": self.width,
                 "done": self.done, "complete": complete}
        atomic_write_text(self.sidecar, json.dumps(state, indent=1) + "\n")

    def resume(self) -> int:
        """Open what an earlier run left; returns the number of rows already done (0: fresh)."""
        if not self.sidecar.exists():
            if self.path.exists():
                raise FresnetError(
                    f"{self.path} exists but is not a resumable extraction (no {self.sidecar.name}); "
                    f"evaluate it with --features {self.path}, or delete it to extract again"
                )
            return 0
        state = read_progress(self.sidecar, self.path)
        mine = {"version": FORMAT_VERSION, **self.identity, "faces": self.faces}
        different = [k for k, v in mine.items() if state.get(k) != v]
        if different:
            key = different[0]
            raise FresnetError(
                f"{self.sidecar}: these features were extracted with {key} = {state.get(key)!r}, this run has "
                f"{mine[key]!r}; choose another --features-out, or delete {self.path.name} and its progress file"
            )
        if not self.path.exists():
            return 0  # stopped between writing the progress file and creating the array
        try:
            array = np.load(self.path, mmap_mode="r+", allow_pickle=False)
        except ValueError as exc:
            raise FresnetError(f"{self.path}: damaged ({exc}); delete it and {self.sidecar.name}") from None
        if array.shape != (self.faces, state.get("width")):
            raise FresnetError(f"{self.path}: shape {array.shape} does not match {self.sidecar.name}; delete both")
        from fresnet.validate import as_int

        done = as_int(state.get("done"), "done", str(self.sidecar), minimum=0, maximum=self.faces,
                      fix=f"delete it and {self.path.name}")
        self.array, self.width, self.done = array, int(array.shape[1]), done
        return self.done

    @property
    def complete(self) -> bool:
        return self.array is not None and self.done >= self.faces

    def write(self, start: int, rows: np.ndarray) -> None:
        if start != self.done:
            raise RuntimeError(f"rows must arrive in order: expected {self.done}, got {start}")
        if self.array is None:
            self.width = int(rows.shape[1])
            self._write_sidecar()  # first the sidecar, so an array on disk always has one
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32,
                                                   shape=(self.faces, self.width))
        self.array[start:start + len(rows)] = rows
        self.done = start + len(rows)

    def checkpoint(self) -> None:
        """Flush the rows, then record them as done (the order makes the count trustworthy)."""
        if self.array is None:
            return
        self.array.flush()
        self._write_sidecar(complete=self.done >= self.faces)


def extract_features(
    embedder,
    paths: IJBPaths,
    faces: FaceTable,
    out: PathLike,
    *,
    model: str,
    flip: bool = True,
    batch_size: int = 64,
    workers: Optional[int] = None,
    progress: Progress = None,
    on_start: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """Embed every face into ``out`` (a ``.npy``), resuming an earlier run; returns the array
    (memory-mapped). ``model`` names the model in the progress file (a resume must use the same).
    ``on_start(done)`` is told how many rows were already there. ``workers``: decoding processes
    (default: 1 when the model runs on CPU, every core but one for a GPU)."""
    import torch

    size = tuple(getattr(embedder, "input_size", (112, 112)))
    if size != (112, 112):
        raise FresnetError(f"{embedder.name} takes {size[0]}x{size[1]} images; IJB alignment makes 112x112 faces")
    if batch_size < 1:
        raise FresnetError(f"batch size must be >= 1, got {batch_size}")
    device = torch.device(getattr(embedder, "device", "cpu") if isinstance(getattr(embedder, "model", None), torch.nn.Module) else "cpu")
    identity = {"model": model, "flip": bool(flip), "landmarks_file": faces.landmarks_path.name,
                "landmarks_sha1": landmarks_fingerprint(faces)}
    store = FeatureStore(Path(out), len(faces), identity)
    done = store.resume()
    if on_start is not None:
        on_start(done)
    if store.complete:
        return store.array
    if workers is None:
        workers = max(1, (os.cpu_count() or 2) - 1) if device.type == "cuda" else 1
    dataset = LooseCropBatches(paths, faces, batch_size, first=done, align=device.type != "cuda")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    last_checkpoint = time.monotonic()
    try:
        for batch in loader:
            if "error" in batch:
                raise FresnetError(batch["error"])
            rows = embed_faces(embedder, aligned_faces(batch, device), flip)
            store.write(int(batch["start"]), rows)
            if progress is not None:
                progress(int(batch["count"]))
            if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                store.checkpoint()
                last_checkpoint = time.monotonic()
    finally:
        store.checkpoint()  # also on Ctrl-C: what is written and flushed is kept
    return store.array
