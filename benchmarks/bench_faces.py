"""Photos -> embeddings: fresnet's FaceAnalysis against InsightFace's FaceAnalysis path, same photos.

Both sides run the same SCRFD graph (the ``scrfd==0.3.0`` sdist's ``models/scrfd.onnx`` unless
``--detector`` names another) and the same r50 (settled random weights, or ``--model``):

* **insightface**: InsightFace 2.1's own ``model_zoo.scrfd.SCRFD`` and ``ArcFaceONNX`` on fresnet's
  ``export --insightface`` of the r50, as ``FaceAnalysis.get`` calls them: detect, then for each face
  ``face_align.norm_crop`` and one ``get_feat`` (one face per onnxruntime call);
* **fresnet**: ``fresnet.FaceAnalysis(detector=scrfd, recognizer=r50)``: every face of the photo in
  one batch, the recogniser on ``optimize_for_inference``'s fast path (``--fast``, default on; bf16 or
  int8 where its calibration picks them) -- or ``--recognizer onnx``: the same export in onnxruntime,
  batched.

Photos are 1280x720 canvases with 1, 10 and 50 real faces pasted in (the six portraits of
``../shared/reference/faces``, cropped around their faces). Reported: photos/s, faces/s, the ratio,
where the time goes (detection vs recognition), and the embeddings' agreement (min cosine).

    python benchmarks/bench_faces.py                      # CPU, 2 photos per count, 3 rounds
    python benchmarks/bench_faces.py --device cuda --rounds 5 --json out.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    interleaved_timing,
    machine_info,
    print_table,
    realistic_model,
    set_threads,
    write_json,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "faces" / "photos"
CANVAS = (720, 1280)  # height, width
GRIDS = {1: (1, 1), 10: (2, 5), 50: (5, 10)}


def insightface_module(module: str):
    """``insightface.<module>`` loaded from the installed wheel's files (its package ``__init__``
    imports requirements that are not installed); ``utils.face_align`` is the real one (scikit-image)."""
    import importlib.metadata

    root = Path(str(importlib.metadata.distribution("insightface").locate_file("insightface")))
    for name, path in (("_if", root), ("_if.model_zoo", root / "model_zoo"), ("_if.utils", root / "utils")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    return importlib.import_module(f"_if.{module}")


def face_tiles(detector) -> list[np.ndarray]:
    """The six portraits cropped to a square around their face (1.6x the box), RGB."""
    from fresnet.faces.photo import read_photo

    tiles = []
    for path in sorted(REFERENCE.glob("*.jpg")):
        rgb = read_photo(path)
        box = detector.detect(rgb).boxes[0]
        cx, cy, side = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.6 * max(box[2] - box[0], box[3] - box[1])
        x1, y1 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        tiles.append(rgb[y1:int(min(rgb.shape[0], y1 + side)), x1:int(min(rgb.shape[1], x1 + side))])
    return tiles


def canvas(tiles: list[np.ndarray], faces: int, seed: int) -> np.ndarray:
    import cv2

    rows, cols = GRIDS[faces]
    h, w = CANVAS
    cell_h, cell_w = h // rows, w // cols
    side = int(min(cell_h, cell_w) * 0.9)
    out = np.full((h, w, 3), 200, np.uint8)
    rng = np.random.default_rng(seed)
    for k in range(faces):
        r, c = divmod(k, cols)
        tile = cv2.resize(tiles[rng.integers(len(tiles))], (side, side), interpolation=cv2.INTER_AREA)
        y, x = r * cell_h + (cell_h - side) // 2, c * cell_w + (cell_w - side) // 2
        out[y:y + side, x:x + side] = tile
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", default=str(Path(sys.prefix) / "oracles" / "scrfd.onnx"))
    p.add_argument("--model", default="r50", help="preset (settled random weights) or a model file")
    p.add_argument("--faces", default="1,10,50")
    p.add_argument("--photos", type=int, default=2, help="photos per face count (one call embeds them all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--recognizer", choices=("torch", "onnx"), default="torch", help="fresnet's recogniser runtime")
    p.add_argument("--no-fast", dest="fast", action="store_false")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--input-size", type=int, default=112, help="(dry runs: a smaller network is faster)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    set_threads(args.threads)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    import fresnet
    from fresnet.faces.analysis import FaceAnalysis
    from fresnet.faces.detectors import onnx_providers
    from fresnet.faces.scrfd import SCRFD

    if not Path(args.detector).is_file():
        print(f"no detector graph at {args.detector}; install the oracles (make venv) or pass --detector")
        return 2
    model = realistic_model(args.model) if args.model in fresnet.list_models() else fresnet.load(args.model).eval()
    work = Path(tempfile.mkdtemp())
    onnx_path = work / "r50.onnx"
    from fresnet.interop.insightface_onnx import export_insightface

    export_insightface(model, onnx_path)  # `fresnet export --insightface`: ArcFaceONNX reads it as raw input
    providers = onnx_providers(args.device)

    # InsightFace's side, as FaceAnalysis.get runs it (BGR photos, as cv2.imread gives them)
    face_align = insightface_module("utils.face_align")
    theirs_det = insightface_module("model_zoo.scrfd").SCRFD(model_file=args.detector)
    theirs_det.prepare(0 if args.device.startswith("cuda") else -1, input_size=(640, 640), det_thresh=0.5)
    theirs_rec = insightface_module("model_zoo.arcface_onnx").ArcFaceONNX(model_file=str(onnx_path))
    assert theirs_rec.input_mean == 0.0 and theirs_rec.input_std == 1.0, "ArcFaceONNX misread the export"
    theirs_rec.session.set_providers(providers)

    def insightface_path(photos_bgr):
        out = []
        for img in photos_bgr:
            _, kpss = theirs_det.detect(img, max_num=0, metric="default")
            for kps in kpss:
                aimg = face_align.norm_crop(img, landmark=kps, image_size=112)
                out.append(theirs_rec.get_feat(aimg).flatten())
        return np.array(out)

    recognizer = str(onnx_path) if args.recognizer == "onnx" else model
    ours = FaceAnalysis(detector=SCRFD(args.detector, det_size=(640, 640), providers=providers), recognizer=recognizer,
                        device=args.device, fast=args.fast, batch_size=64)

    def fresnet_path(photos_rgb):
        return np.array([f.embedding for faces in ours.get_many(photos_rgb) for f in faces])

    tiles = face_tiles(ours.detector)
    rows, results = [], {"machine": machine_info(args.device), "model": args.model, "recognizer": args.recognizer,
                         "fast": args.fast, "counts": {}}
    for count in [int(c) for c in args.faces.split(",")]:
        photos = [canvas(tiles, count, seed) for seed in range(args.photos)]
        bgr = [np.ascontiguousarray(p[:, :, ::-1]) for p in photos]
        theirs, mine = insightface_path(bgr), fresnet_path(photos)
        found = len(mine) // len(photos)
        cos = np.sum(theirs * mine, 1) / (np.linalg.norm(theirs, axis=1) * np.linalg.norm(mine, axis=1)) \
            if theirs.shape == mine.shape else np.array([np.nan])
        timings = interleaved_timing({"insightface": lambda bgr=bgr: insightface_path(bgr),
                                      "fresnet": lambda photos=photos: fresnet_path(photos)},
                                     rounds=args.rounds, warmup=1)
        t0 = time.perf_counter()
        for p in photos:
            ours.detect(p)
        detect_s = (time.perf_counter() - t0) / len(photos)
        t_if, t_fr = timings["insightface"].median / len(photos), timings["fresnet"].median / len(photos)
        choice = getattr(getattr(ours.recognizer, "embedder", None), "fast_choice", lambda: None)()
        results["counts"][count] = {
            "faces_found_per_photo": found, "insightface_s_per_photo": t_if, "fresnet_s_per_photo": t_fr,
            "ratio": t_if / t_fr, "detect_s_per_photo": detect_s, "min_cosine": float(np.min(cos)),
            "fast_path": choice,
        }
        rows.append([count, found, f"{1 / t_if:.2f}", f"{found / t_if:.1f}", f"{1 / t_fr:.2f}", f"{found / t_fr:.1f}",
                     f"{t_if / t_fr:.2f}x", f"{detect_s / t_fr:.0%}", f"{np.min(cos):.6f}"])
    print_table(f"photos -> embeddings, 1280x720, {args.model}, fresnet recogniser: {args.recognizer}"
                f"{' (fast path)' if args.fast and args.recognizer == 'torch' else ''}, device {args.device}",
                ["faces", "found", "IF photos/s", "IF faces/s", "fresnet photos/s", "fresnet faces/s", "ratio",
                 "detection share (fresnet)", "min cosine"], rows)
    choice = results["counts"][max(results["counts"])]["fast_path"]
    if choice:
        print(f"fast path: {choice}")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
