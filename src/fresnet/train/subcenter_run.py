"""Sub-center ArcFace's drop step on a finished run (``fresnet drop-subcenters``).

:func:`drop_subcenters` loads a run trained with ``loss=subcenter_arcface`` (its ``checkpoint.pt``:
the backbone, the (C*K, D) class-major sub-centres, the config), embeds every training sample with
the trained backbone (eval mode, the image as stored, no mirror), runs
:func:`fresnet.train.subcenter_drop.subcenter_drop` and writes into ``out``, each file atomically:

* ``samples.csv``: ``index,label,angle_deg,kept`` for every training sample (dataset order), the
  angle to its class's dominant sub-centre;
* ``kept.txt``: the dataset indices of the kept samples, one per line;
* ``kept.lst`` (image-folder training sets): ``path<TAB>label`` of the kept images, the list file
  ``fresnet pack`` turns into the K = 1 run's training set;
* ``kept/train.rec``, ``.idx``, ``property`` (RecordIO training sets): the kept records, copied as
  stored, with their labels: the K = 1 run's ``dataset=OUT/kept``;
* ``centres.safetensors``: ``weight``, the (C, D) dominant sub-centres: the K = 1 run's initial
  class centres, in the checkpoint's row order;
* ``drop.json``: the summary (classes, K, threshold, samples kept and dropped, classes left empty,
  the source checkpoint).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from fresnet.errors import FresnetError
from fresnet.train.subcenter_drop import SubcenterDrop, subcenter_drop

OUTPUT_FILES = ("samples.csv", "kept.txt", "kept.lst", "kept/train.rec", "centres.safetensors", "drop.json")
LOSS = "subcenter_arcface"


@dataclass(frozen=True)
class DropSummary:
    """What the drop step found and wrote (``drop.json`` holds the same keys)."""

    source: str
    classes: int
    K: int
    threshold_degrees: float
    samples: int
    kept: int
    dropped: int
    empty_classes: int  # classes none of whose samples was kept
    out: str

    def describe(self) -> str:
        share = 100.0 * self.kept / self.samples if self.samples else 0.0
        empty = f"; {self.empty_classes} classes keep no sample" if self.empty_classes else ""
        return (f"{self.classes} classes x {self.K} sub-centres -> 1: kept {self.kept} of {self.samples} samples "
                f"({share:.1f}%), dropped {self.dropped} more than {self.threshold_degrees:g} degrees from their "
                f"class's dominant sub-centre{empty}")


def checkpoint_of(source: Union[str, Path]) -> Path:
    """``RUN/checkpoint.pt`` for a run folder, or the checkpoint file itself."""
    from fresnet.train.checkpoint import CHECKPOINT_NAME

    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FresnetError(f"{path}: no training checkpoint here; give a run folder (with {CHECKPOINT_NAME}) "
                           "or the checkpoint file of a run trained with loss=subcenter_arcface")
    return path


def load_run(checkpoint: Path, dataset: Optional[str] = None) -> tuple[Any, torch.nn.Module, torch.Tensor, int]:
    """(config, backbone, full (C*K, D) weight, K) of a sub-center ArcFace checkpoint."""
    from fresnet.interop.native import load_checked
    from fresnet.network.model import FResNet
    from fresnet.train.checkpoint import load_checkpoint
    from fresnet.train.config import load_config

    state = load_checkpoint(checkpoint)
    saved = dict(state.get("config") or {})
    for key in ("resume", "overwrite"):
        saved.pop(key, None)
    try:
        cfg = load_config(saved, {"dataset": dataset} if dataset else None)
    except FresnetError as exc:
        raise FresnetError(f"{checkpoint}: its stored config does not load ({exc})") from None
    name, options = cfg.margin_options()
    if name != LOSS:
        raise FresnetError(f"{checkpoint}: the run was trained with loss {cfg.loss}; the drop step needs a run "
                           f"trained with loss={LOSS} (K sub-centres per class)")
    K = int(cfg.margin(num_classes=2).K)
    weight = state["fc"]["weight"]
    if weight.shape[0] % K:
        raise FresnetError(f"{checkpoint}: the classifier has {weight.shape[0]} rows, not a multiple of K={K}; "
                           "the checkpoint is damaged")
    model = FResNet(cfg.net_config())
    load_checked(model, state["model"], str(checkpoint))
    return cfg, model, weight.float(), K


@torch.no_grad()
def embed_dataset(model: torch.nn.Module, data: Any, input_size: tuple[int, int], device: torch.device,
                  batch_size: int = 128, advance: Optional[Callable[[int], None]] = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (N, D) float32, labels (N,)) of every sample of ``data`` in order, in eval mode."""
    from fresnet.data.transforms import Resize

    resize = Resize(tuple(input_size))
    model.to(device).eval()
    embeddings, labels = [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        images = torch.stack([resize(image).float() for image, _ in items]).to(device)
        embeddings.append(model(images).float().cpu())
        labels += [int(label) for _, label in items]
        if advance is not None:
            advance(len(items))
    if not embeddings:
        raise FresnetError("the training set is empty: nothing to drop")
    return torch.cat(embeddings), torch.tensor(labels, dtype=torch.long)


def write_outputs(out: Path, drop: SubcenterDrop, labels: torch.Tensor, summary: DropSummary,
                  paths: Optional[list] = None) -> None:
    from safetensors.torch import save

    from fresnet.ioutil import atomic_write_bytes, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["index", "label", "angle_deg", "kept"])
    for index, (label, angle, kept) in enumerate(zip(labels.tolist(), drop.angle_deg.tolist(), drop.keep.tolist())):
        writer.writerow([index, label, f"{angle:.4f}", int(kept)])
    atomic_write_text(out / "samples.csv", table.getvalue())
    kept = drop.keep.nonzero().flatten().tolist()
    atomic_write_text(out / "kept.txt", "".join(f"{i}\n" for i in kept))
    if paths is not None:
        atomic_write_text(out / "kept.lst", "".join(f"{Path(paths[i]).resolve()}\t{int(labels[i])}\n" for i in kept))
    elif (out / "kept.lst").exists():  # --overwrite of an image-folder run's outputs: not this run's list
        (out / "kept.lst").unlink()
    metadata = {"source": summary.source, "format": "fresnet sub-center drop: K=1 class centres (C, D)"}
    atomic_write_bytes(out / "centres.safetensors",
                       save({"weight": drop.centres.float().contiguous()}, metadata=metadata))
    atomic_write_text(out / "drop.json", json.dumps(asdict(summary), indent=1) + "\n")  # last: the run is complete


def write_kept_recordio(out: Path, data: Any, kept: list[int], overwrite: bool = True) -> Path:
    """The kept records of a RecordIO training set as ``out/train.rec`` (+ ``.idx``, ``property``),
    each record's bytes and label as stored (the writer needs them grouped by ascending label, as
    InsightFace's sets and ``fresnet pack`` store them)."""
    from fresnet.data.recordio.writer import RecordIOWriter

    out.mkdir(parents=True, exist_ok=True)
    size = tuple(data.image_size) if getattr(data, "image_size", None) else (112, 112)
    with RecordIOWriter(out / "train", image_size=size, overwrite=overwrite) as writer:
        for index in kept:
            payload, label = data.read_raw(index)
            writer.add_image(payload, label)
    return out / "train.rec"


def drop_subcenters(source: Union[str, Path], out: Union[str, Path], threshold_degrees: float = 75.0,
                    device: Union[str, torch.device] = "cpu", batch_size: int = 128, dataset: Optional[str] = None,
                    advance: Optional[Callable[[int], None]] = None, on_total: Optional[Callable[[int], None]] = None
                    ) -> DropSummary:
    """The drop step on the run at ``source`` (a run folder or its checkpoint), written to ``out``.
    ``dataset`` replaces the run's training set path (the same images, moved); ``on_total`` hears
    the sample count before embedding starts and ``advance`` each batch's size (a progress display)."""
    from fresnet.train.data import build_dataset

    if not 0.0 < float(threshold_degrees) <= 180.0:
        raise FresnetError(f"the threshold must be an angle in (0, 180] degrees, got {threshold_degrees}")
    checkpoint = checkpoint_of(source)
    cfg, model, weight, K = load_run(checkpoint, dataset)
    net_config = cfg.net_config()
    data = build_dataset(cfg, net_config.input_size)
    classes = weight.shape[0] // K
    if int(data.num_classes) != classes:
        raise FresnetError(f"{checkpoint}: the classifier has {classes} classes, the training set {cfg.dataset} "
                           f"{data.num_classes}; give the run's own training set (--dataset)")
    if on_total is not None:
        on_total(len(data))
    embeddings, labels = embed_dataset(model, data, net_config.input_size, torch.device(device), batch_size, advance)
    drop = subcenter_drop(weight, embeddings, labels, K, max_angle_deg=float(threshold_degrees))
    counts = torch.zeros(classes, dtype=torch.long).index_add_(0, labels[drop.keep], torch.ones_like(labels[drop.keep]))
    kept = int(drop.keep.sum())
    summary = DropSummary(str(checkpoint), classes, K, float(threshold_degrees), len(labels), kept, len(labels) - kept,
                          int((counts == 0).sum()), str(out))
    if hasattr(data, "read_raw") and summary.kept:  # RecordIO: the K = 1 run's training set, written first
        write_kept_recordio(Path(out) / "kept", data, drop.keep.nonzero().flatten().tolist())
    image_paths = getattr(data, "paths", None)  # an image folder's files (a RecordIO set's .paths are its 3 files)
    write_outputs(Path(out), drop, labels, summary, image_paths if isinstance(image_paths, list) else None)
    return summary
