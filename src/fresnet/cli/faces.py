"""``fresnet detect``, ``fresnet embed`` and ``fresnet compare``: photos in, faces and identities out.

A photo goes through detect -> align -> embed (:class:`fresnet.faces.analysis.FaceAnalysis`); an
image that already is an aligned crop of the model's input size (a 112x112 face from a training set,
a ``.rec`` dataset or a ``.bin`` pack) is embedded as it is; ``--landmarks`` aligns images with given
five points instead of detecting. Nothing is silently resized: an image that is neither is detected.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fresnet.cli import args as A
from fresnet.cli.common import add_overwrite, refuse_existing
from fresnet.errors import FresnetError

DEFAULT_THRESHOLD = 0.3
THRESHOLD_SOURCE = ("fresnet's default for ArcFace-trained models; `fresnet eval` reports a tuned one as "
                    "best_threshold_cosine")
OUTPUT_FORMATS = (".npy", ".npz", ".parquet")


def threshold(text: str) -> float:
    value = A.finite_float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity threshold lies in [-1, 1], got {text}")
    return value


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detection (photos)")
    g.add_argument("--detector", default="mtcnn",
                   help="mtcnn (default, embedded), yunet, or an SCRFD/RetinaFace/YuNet .onnx file")
    g.add_argument("--det-size", type=_size, default=None, metavar="WxH",
                   help="an ONNX detector's input size (default 640x640; MTCNN searches the whole photo)")
    g.add_argument("--det-thresh", type=A.nonnegative_float, default=None, help="detector score threshold")


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x640, got {text!r}")
    return A.positive_int(parts[0]), A.positive_int(parts[1])


def register(sub: argparse._SubParsersAction) -> None:
    from fresnet.cli.evaluate import _add_flip, _add_model_args

    p = sub.add_parser(
        "detect", help="faces in photos: JSON lines of file, box, score and five landmarks",
        description="Prints one JSON line per face found (file, face, box [x1, y1, x2, y2], score, landmarks "
        "[[x, y] x5]: left eye, right eye, nose, left and right mouth corners as seen in the image); "
        "--draw writes each photo with its detections.",
    )
    p.add_argument("inputs", nargs="+", metavar="PHOTO", help="photo file or folder (searched recursively)")
    _add_detector_args(p)
    p.add_argument("--max-num", type=A.nonnegative_int, default=0,
                   help="keep the N largest, most central faces per photo (InsightFace's max_num; 0: all)")
    p.add_argument("--draw", metavar="OUTDIR", help="write each photo with boxes and landmarks into OUTDIR")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    add_overwrite(p)
    p.set_defaults(func=run_detect)

    p = sub.add_parser(
        "embed", help="embeddings of the faces in photos (or of aligned crops) -> .npy, .npz or .parquet",
        description="Photos are detected and aligned (every face gives a row); aligned crops of the model's input "
        "size, .rec datasets and .bin packs are embedded as they are. Rows are L2-normalised. .npy writes the "
        "embeddings and the row names, one per line, next to it (<stem>.names.txt: FILE for a crop, FILE#k for "
        "face k of a photo); .npz and .parquet hold embeddings, files, face indices, boxes, scores and landmarks.",
    )
    _add_model_args(p, faces=True)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="photo, aligned crop, folder, train.rec / its folder, or .bin (the old form `embed MODEL "
                   "INPUT...` still works)")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the model (instead of the first argument)")
    p.add_argument("-o", "--out", "--output", dest="output", default="embeddings.npy",
                   help="output .npy, .npz or .parquet (default embeddings.npy)")
    p.add_argument("--landmarks", default=None, metavar="FILE",
                   help="5-point landmarks (.json or .txt) to align each image with, instead of detecting")
    p.add_argument("--max-num", type=A.nonnegative_int, default=0, help="faces kept per photo (0: all)")
    _add_detector_args(p)
    _add_flip(p)
    add_overwrite(p)
    p.set_defaults(func=run_embed, intermixed_inputs="inputs")

    p = sub.add_parser("compare", help="cosine similarity of the faces of two photos and a same/different verdict")
    _add_model_args(p, faces=True)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="A B (photos or aligned crops); `compare MODEL A B` "
                   "still works")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the model (instead of the first argument)")
    p.add_argument("--threshold", type=threshold, default=None,
                   help=f"cosine similarity in [-1, 1] at or above which the faces count as the same person "
                   f"(default {DEFAULT_THRESHOLD}: {THRESHOLD_SOURCE})")
    p.add_argument("--landmarks", default=None, metavar="FILE", help="5-point landmarks for both images (.json/.txt)")
    _add_detector_args(p)
    _add_flip(p)
    p.set_defaults(func=run_compare, intermixed_inputs="images")


# --------------------------------------------------------------------------------------------------
# shared: the model, the pipeline, one input's faces

def _split_model(args: argparse.Namespace, items: list[str], needed: int) -> tuple[str, list[str]]:
    """``MODEL INPUT...`` or ``--model MODEL INPUT...`` (then the first positional is an input)."""
    if args.model_option is not None:
        return args.model_option, [args.model, *items]
    if len(items) < needed:
        raise FresnetError(f"{args.model!r} is taken as the model and {needed} input(s) must follow it; give "
                           "--model MODEL (a preset, .safetensors, .pth, .onnx or an MXNet prefix), or name it first")
    return args.model, list(items)


def _device(name: str) -> str:
    from fresnet.cli.common import resolve_device

    return resolve_device(name)


def _pipeline(args: argparse.Namespace, model: str | None):
    """The FaceAnalysis (detector built lazily: aligned crops never need one) and the embedder."""
    from fresnet.faces.recognition import EmbedderRecognizer, create_recognizer
    from fresnet.interop.model_loader import load_any
    from fresnet.network.config import parse_assignments

    device = _device(args.device)
    embedder = None
    if model is None:
        recognizer = None
    elif model.lower().endswith(".onnx") and args.onnx_input == "auto" and not args.fast and not args.overrides:
        recognizer = create_recognizer(model, device=device)
    else:
        embedder = load_any(model, overrides=parse_assignments(args.overrides), device=device,
                            onnx_input=args.onnx_input, fast=args.fast)
        recognizer = EmbedderRecognizer(embedder)
    return _LazyPipeline(args, recognizer, device), embedder


class _LazyPipeline:
    def __init__(self, args, recognizer, device):
        self.args, self.recognizer, self.device = args, recognizer, device
        self._app = None
        self.input_size = None if recognizer is None else tuple(int(v) for v in recognizer.input_size)

    @property
    def batch_size(self) -> int:
        """Faces per recogniser call: ``--batch-size``, else the device's default."""
        from fresnet.faces.analysis import default_batch_size

        return getattr(self.args, "batch_size", None) or default_batch_size(self.device)

    @property
    def crop_size(self) -> int:
        """The aligned crop's size; a recogniser that alignment cannot feed is refused here, when an
        image needs aligning (crops of its own input size do not)."""
        from fresnet.faces.recognition import check_input_size

        return check_input_size(self.recognizer)

    @property
    def app(self):
        if self._app is None:
            from fresnet.faces.analysis import FaceAnalysis

            self._app = FaceAnalysis(detector=self.args.detector, recognizer=self.recognizer,
                                     flip=getattr(self.args, "flip", False), det_size=self.args.det_size,
                                     det_thresh=self.args.det_thresh, device=self.device,
                                     batch_size=self.batch_size)
        return self._app

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        from fresnet.faces.analysis import embed_crops

        return embed_crops(self.recognizer, np.stack(crops), flip=self.args.flip, batch_size=self.batch_size)


@dataclass
class Row:
    file: str
    face: int  # -1: the image itself is the aligned face
    crop: np.ndarray
    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def name(self) -> str:
        return self.file if self.face < 0 else f"{self.file}#{self.face}"


def _rows_of(item, pipeline: _LazyPipeline, landmarks, index: int, max_num: int) -> list[Row]:
    """The rows one input gives: itself (an aligned crop), its landmark-aligned face, or its detected faces."""
    from fresnet.faces.align import landmarks_for, norm_crop

    image = item.load()
    h, w = image.shape[:2]
    whole = np.array([0, 0, w, h], np.float32)
    nowhere = np.full((5, 2), np.nan, np.float32)
    points = landmarks_for(landmarks, item.name, index) if landmarks is not None else None
    if points is not None:
        crop = norm_crop(image, np.asarray(points), pipeline.crop_size)
        return [Row(item.name, -1, crop, whole, float("nan"), np.asarray(points, np.float32))]
    if (h, w) == pipeline.input_size:
        return [Row(item.name, -1, image, whole, float("nan"), nowhere)]
    if not item.photo:
        mh, mw = pipeline.input_size
        raise FresnetError(f"{item.name}: a {w}x{h} face is not an aligned crop of the model's {mw}x{mh} input, and a "
                           "dataset's faces are not photos to detect faces in; use a model of that input size")
    faces, crops = pipeline.app.align(image, max_num=max_num)
    return [
        Row(item.name, k, crop, face.bbox, face.det_score, face.kps) for k, (face, crop) in enumerate(zip(faces, crops))
    ]


def _inputs(paths: list[str]):
    from fresnet.eval.embed import collect_inputs

    return collect_inputs(paths)


def _progress(total: int):
    from fresnet.progress import Progress

    return Progress("faces", total, unit="images", stream=sys.stderr, transient=True)


# --------------------------------------------------------------------------------------------------
# fresnet detect

def run_detect(args: argparse.Namespace) -> int:
    from fresnet.faces.analysis import FaceAnalysis
    from fresnet.faces.drawing import draw_detections
    from fresnet.faces.face import Face
    from fresnet.faces.photo import read_photo

    inputs = _inputs(args.inputs)
    datasets = [item.name for item in inputs if not item.photo]
    if datasets:
        raise FresnetError(f"{datasets[0]}: detect takes photo files and folders, not dataset images")
    draw = Path(args.draw) if args.draw else None
    targets = {}
    if draw is not None:
        targets = _drawing_targets([item.name for item in inputs], draw)
        refuse_existing(targets.values(), args.overwrite)
        draw.mkdir(parents=True, exist_ok=True)
    app = FaceAnalysis(detector=args.detector, det_size=args.det_size, det_thresh=args.det_thresh,
                       device=_device(args.device))
    total = 0
    with _progress(len(inputs)) as progress:
        for item in inputs:
            rgb = read_photo(item.name)
            found = app.detect(rgb, max_num=args.max_num)
            for k in range(len(found)):
                face = Face(found.boxes[k], found.landmarks[k], float(found.scores[k]))
                print(json.dumps({"file": item.name, "face": k, **face.to_dict()}), flush=True)
            total += len(found)
            if draw is not None:
                _write_image(targets[item.name], draw_detections(rgb, found.boxes, found.landmarks, found.scores))
            progress.advance()
    print(f"{total} face(s) in {len(inputs)} photo(s)" + (f"; drawn into {draw}" if draw else ""), file=sys.stderr)
    return 0


def _drawing_targets(names: list[str], folder: Path) -> dict[str, Path]:
    targets, used = {}, set()
    for name in names:
        stem = Path(name).stem
        candidate, n = folder / f"{stem}.jpg", 1
        while candidate in used:
            candidate, n = folder / f"{stem}-{n}.jpg", n + 1
        used.add(candidate)
        targets[name] = candidate
    return targets


def _write_image(path: Path, rgb: np.ndarray) -> None:
    import io

    from PIL import Image

    from fresnet.ioutil import atomic_write_bytes

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
    atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# fresnet embed

def run_embed(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fresnet.cli.evaluate import _load_landmarks, _report_fast_path

    model, paths = _split_model(args, args.inputs, needed=1)
    output = Path(args.output)
    if output.suffix.lower() not in OUTPUT_FORMATS:
        output = output.with_name(output.name + ".npy")
    fmt = output.suffix.lower()
    if fmt == ".parquet":
        _pyarrow()
    names_path = output.with_suffix(".names.txt")
    refuse_existing([output] + ([names_path] if fmt == ".npy" else []), args.overwrite)
    inputs = _inputs(paths)
    landmarks = _load_landmarks(args, [item.name for item in inputs])
    pipeline, embedder = _pipeline(args, model)
    rows: list[Row] = []
    chunks: list[np.ndarray] = []
    pending: list[Row] = []

    def flush() -> None:  # faces of several inputs share a batch; memory stays one batch of crops
        if pending:
            chunks.append(pipeline.embed([r.crop for r in pending]))
            for row in pending:
                row.crop = None
            pending.clear()

    with _progress(len(inputs)) as progress:
        for index, item in enumerate(inputs):
            found = _rows_of(item, pipeline, landmarks, index, args.max_num)
            rows.extend(found)
            pending.extend(found)
            if len(pending) >= pipeline.batch_size:
                flush()
            progress.advance()
    flush()
    console = Console(stderr=True, soft_wrap=True)
    if not rows:
        raise FresnetError(f"no face found in the {len(inputs)} input(s); nothing written")
    from fresnet.eval.embed import normalize

    emb = normalize(np.concatenate(chunks))
    if embedder is not None:
        _report_fast_path(embedder, console)
    _write_embeddings(output, fmt, emb, rows, names_path)
    photos = sum(1 for item in inputs if item.photo)
    print(
        f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings of {len(inputs)} input(s) to {output}"
        + (f" (names: {names_path})" if fmt == ".npy" else "")
        + (f"; {photos - len({r.file for r in rows if r.face >= 0})} photo(s) without a face" if photos else ""),
        file=sys.stderr,
    )
    return 0


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise FresnetError("writing .parquet needs pyarrow, which is not installed: `pip install pyarrow`, "
                           "or write .npz (numpy) instead") from None
    return pyarrow


def _write_embeddings(output: Path, fmt: str, emb: np.ndarray, rows: list[Row], names_path: Path) -> None:
    from fresnet.ioutil import atomic_write, atomic_write_text

    if output.parent != Path(""):
        output.parent.mkdir(parents=True, exist_ok=True)
    columns = {
        "files": np.array([r.file for r in rows]),
        "face": np.array([r.face for r in rows], np.int32),
        "boxes": np.stack([np.asarray(r.box, np.float32) for r in rows]),
        "scores": np.array([r.score for r in rows], np.float32),
        "landmarks": np.stack([np.asarray(r.landmarks, np.float32) for r in rows]),
    }
    if fmt == ".npy":
        with atomic_write(output, "wb") as handle:
            np.save(handle, emb)
        atomic_write_text(names_path, "".join(f"{r.name}\n" for r in rows))
    elif fmt == ".npz":
        with atomic_write(output, "wb") as handle:
            np.savez(handle, embeddings=emb, **columns)
    else:
        pa = _pyarrow()
        table = pa.table(
            {
                "file": pa.array(columns["files"].tolist()),
                "face": pa.array(columns["face"]),
                "box": pa.array(columns["boxes"].tolist(), type=pa.list_(pa.float32(), 4)),
                "score": pa.array(columns["scores"]),
                "landmarks": pa.array(
                    columns["landmarks"].reshape(len(rows), 10).tolist(), type=pa.list_(pa.float32(), 10)
                ),
                "embedding": pa.array(emb.tolist(), type=pa.list_(pa.float32(), emb.shape[1])),
            }
        )
        with atomic_write(output, "wb") as handle:
            pa.parquet.write_table(table, handle)


# --------------------------------------------------------------------------------------------------
# fresnet compare

def run_compare(args: argparse.Namespace) -> int:
    from fresnet.cli.evaluate import _load_landmarks

    model, images = _split_model(args, args.images, needed=2)
    if len(images) != 2:
        raise FresnetError(f"compare takes exactly two images after the model, got {len(images)}: {images}")
    inputs = _inputs(images)
    if len(inputs) != 2:
        raise FresnetError(f"compare takes exactly two images; {images[0]!r} and {images[1]!r} hold {len(inputs)}")
    landmarks = _load_landmarks(args, [item.name for item in inputs])
    pipeline, embedder = _pipeline(args, model)
    rows = []
    for index, item in enumerate(inputs):
        found = _rows_of(item, pipeline, landmarks, index, max_num=0)
        if not found:
            raise FresnetError(f"{item.name}: no face found; give a photo with a face, or an aligned "
                               f"{pipeline.crop_size}x{pipeline.crop_size} crop")
        if len(found) > 1:
            best = pipeline.app.detect(item.load(), max_num=1)  # InsightFace's max_num=1: largest, most central
            keep = [r for r in found if np.array_equal(r.box, best.boxes[0])]
            print(f"{item.name}: {len(found)} faces; comparing the largest, most central one", file=sys.stderr)
            found = keep[:1] or found[:1]
        rows.append(found[0])
    from fresnet.eval.embed import normalize

    emb = normalize(pipeline.embed([r.crop for r in rows]))
    cosine = float(np.dot(emb[0], emb[1]))
    given = args.threshold is not None
    limit = args.threshold if given else DEFAULT_THRESHOLD
    source = "given with --threshold" if given else THRESHOLD_SOURCE
    for row in rows:
        if row.face < 0 and np.isnan(row.score) and np.isnan(row.landmarks).all():
            how = "an aligned crop, used as it is"
        elif row.face < 0:
            how = "aligned with the given landmarks"
        else:
            how = f"face detected (score {row.score:.3f}), aligned"
        print(f"{row.file}: {how}")
    print(f"cosine similarity: {cosine:.4f}")
    print(f"squared L2 distance: {2 - 2 * cosine:.4f}")
    verdict = "same person" if cosine >= limit else "different people"
    random = embedder is not None and getattr(embedder, "kind", "") == "preset"
    if random:
        verdict += " -- meaningless: the model has RANDOM weights (a preset name); give a trained model file"
    print(f"verdict: {verdict} (threshold {limit:g}: {source})")
    return 0
