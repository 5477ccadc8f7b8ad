"""Photos -> embeddings: fresnet's FaceAnalysis against InsightFace's FaceAnalysis path, same photos.

Both sides run the same SCRFD graph (the ``scrfd==0.3.0`` sdist's ``models/scrfd.onnx`` unless
``--detector`` names another) and the same r50 (settled random weights, or ``--model``):

* **insightface**: InsightFace 2.1's own ``model_zoo.scrfd.SCRFD`` and ``ArcFaceONNX`` on fresnet's
  ``export --insightface`` of the r50, as ``FaceAnalysis.get`` calls them: detect, then for each face
  ``face_align.norm_crop`` and one ``get_feat`` (one face per onnxruntime call);
* **fresnet**: ``fresnet.FaceAnalysis(detector=scrfd, recognizer=r50, dtype=...)``: the faces of the
  photos in batches (FaceAnalysis's default size, or ``--batch-size``), the recogniser on
  ``optimize_for_inference``'s fast path at each precision of
  ``--dtypes`` (float32, bfloat16, int8 calibrated on 64 aligned faces of other photos of the same
  portraits), timed side by side -- or ``--recognizer onnx``: the same export in onnxruntime,
  batched; ``--no-fast``: eager.

A precision's row counts only when every embedding agrees with InsightFace's to a cosine of at least
0.999. Each side makes one untimed warm-up call per face count first (the fast path's per-batch-size
work, if any, lands there; its time is printed), then the rounds are interleaved.

Photos are 1280x720 canvases with 1, 10 and 50 real faces pasted in (the six portraits of
``../shared/reference/faces``, cropped around their faces). Reported: photos/s, faces/s, the ratio,
where the time goes (detection, alignment, recognition on each side), and the embeddings' agreement
(min cosine).

    python benchmarks/bench_faces.py                      # CPU, 2 photos per count, 3 rounds
    python benchmarks/bench_faces.py --device cuda --rounds 5 --json out.json
"""
from __future__ import annotations

import argparse
import os
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


MIN_COSINE = 0.999  # a row counts only when every embedding agrees with InsightFace's to this cosine


def stage_times(theirs_det, theirs_rec, face_align, ours, photo: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Best seconds of each stage on one photo: detection, alignment, recognition, both sides."""
    bgr = np.ascontiguousarray(photo[:, :, ::-1])

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    _, kpss = theirs_det.detect(bgr, max_num=0, metric="default")
    crops_if = [face_align.norm_crop(bgr, landmark=k, image_size=112) for k in kpss]
    faces, crops = ours.align(photo)
    stacked = np.stack(crops) if crops else None
    return {
        "insightface_detect": best(lambda: theirs_det.detect(bgr, max_num=0, metric="default")),
        "insightface_align": best(lambda: [face_align.norm_crop(bgr, landmark=k, image_size=112) for k in kpss]),
        "insightface_recognise": best(lambda: [theirs_rec.get_feat(c) for c in crops_if]),
        "fresnet_detect": best(lambda: ours.detect(photo)),
        "fresnet_align": max(0.0, best(lambda: ours.align(photo)) - best(lambda: ours.detect(photo))),
        "fresnet_recognise": best(lambda: ours.embed_crops(stacked)) if stacked is not None else 0.0,
    }


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
    p.add_argument("--dtypes", default="float32,bfloat16,int8",
                   help="fast-path precisions timed side by side ('auto' too); bfloat16 is skipped on a CPU "
                        "without native bf16, int8 off the CPU; int8 calibrates on 64 aligned faces of other "
                        "photos made the same way")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None,
                   help="fresnet's faces per recogniser call (default: FaceAnalysis's, 8 on the CPU, 64 on a GPU)")
    p.add_argument("--input-size", type=int, default=112, help="(dry runs: a smaller network is faster)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    threads = set_threads(args.threads)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    import fresnet
    from fresnet.faces.analysis import FaceAnalysis
    from fresnet.faces.detectors import onnx_providers
    from fresnet.faces.scrfd import SCRFD
    from fresnet.inference.fast import cpu_has_native_bf16

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

    detector = SCRFD(args.detector, det_size=(640, 640), providers=providers)  # one session, shared by fresnet's sides
    aligner = FaceAnalysis(detector=detector, recognizer=None, device=args.device)
    tiles = face_tiles(detector)
    counts = [int(c) for c in args.faces.split(",")]
    photos_by_count = {count: [canvas(tiles, count, seed) for seed in range(args.photos)] for count in counts}

    # fresnet's sides: one FaceAnalysis per precision (or the ONNX export, or eager without --fast)
    if args.recognizer == "onnx":
        variants = {"onnx": {"recognizer": str(onnx_path)}}
    elif not args.fast:
        variants = {"eager": {"recognizer": model, "fast": False}}
    else:
        cpu = not args.device.startswith("cuda")
        variants = {}
        for dtype in args.dtypes.split(","):
            if dtype in ("bfloat16", "bf16") and cpu and not cpu_has_native_bf16():
                print("bfloat16 skipped: this CPU has no native bf16 (AVX512-BF16/AMX)")
                continue
            if dtype == "int8" and not cpu:
                continue
            options = {"recognizer": model, "dtype": dtype}
            if dtype == "int8":  # activation ranges from real faces: 64 aligned crops of 10-face photos
                crops = [c for seed in range(100, 107) for c in aligner.align(canvas(tiles, 10, seed))[1]]
                options["calibration"] = np.stack(crops[:64])
            variants[dtype] = options
    ours: dict[str, FaceAnalysis] = {}
    for name, options in variants.items():
        t0 = time.perf_counter()
        ours[name] = FaceAnalysis(detector=detector, device=args.device, batch_size=args.batch_size, **options)
        print(f"fresnet {name}: built in {time.perf_counter() - t0:.1f} s (untimed)")

    def fresnet_path(analysis, photos_rgb):
        return np.array([f.embedding for faces in analysis.get_many(photos_rgb) for f in faces])

    print(f"threads: PyTorch {threads}, onnxruntime sessions its default (one per physical core), "
          f"{os.cpu_count()} logical CPUs; load average at start {os.getloadavg()[0]:.2f}")
    rows, stage_rows = [], []
    results = {"machine": machine_info(args.device), "model": args.model, "recognizer": args.recognizer,
               "fast": args.fast, "threads": threads, "counts": {}}
    for count in counts:
        photos = photos_by_count[count]
        bgr = [np.ascontiguousarray(p[:, :, ::-1]) for p in photos]
        # warm-up, untimed: the fast path's choice/compilation for this batch size happens here
        t0 = time.perf_counter()
        theirs = insightface_path(bgr)
        warm = {"insightface": time.perf_counter() - t0}
        mine = {}
        for name, analysis in ours.items():
            t0 = time.perf_counter()
            mine[name] = fresnet_path(analysis, photos)
            warm[name] = time.perf_counter() - t0
        found = len(theirs) // len(photos)
        cosines = {}
        for name, emb in mine.items():
            cosines[name] = float(np.min(np.sum(theirs * emb, 1) / (np.linalg.norm(theirs, axis=1)
                                                                    * np.linalg.norm(emb, axis=1)))) \
                if theirs.shape == emb.shape else float("nan")
        calls = {"insightface": lambda bgr=bgr: insightface_path(bgr)}
        calls.update({name: (lambda a=a, photos=photos: fresnet_path(a, photos)) for name, a in ours.items()})
        timings = interleaved_timing(calls, rounds=args.rounds, warmup=0)
        t_if = timings["insightface"].median / len(photos)
        entry = {"faces_found_per_photo": found, "insightface_s_per_photo": t_if,
                 "warmup_s": warm, "variants": {}}
        for name, analysis in ours.items():
            t_fr = timings[name].median / len(photos)
            ok = cosines[name] >= MIN_COSINE
            choice = getattr(analysis.recognizer, "fast_choice", lambda: None)()
            entry["variants"][name] = {"fresnet_s_per_photo": t_fr, "ratio": t_if / t_fr,
                                       "min_cosine": cosines[name], "counted": ok, "fast_path": choice}
            rows.append([count, found, name, f"{1 / t_if:.2f}", f"{found / t_if:.1f}", f"{1 / t_fr:.2f}",
                         f"{found / t_fr:.1f}", f"{t_if / t_fr:.2f}x", f"{cosines[name]:.6f}",
                         "yes" if ok else f"no (< {MIN_COSINE})"])
        best = max((n for n in ours if entry["variants"][n]["counted"]),
                   key=lambda n: entry["variants"][n]["ratio"], default=None)
        if best is not None:
            stages = stage_times(theirs_det, theirs_rec, face_align, ours[best], photos[0])
            entry["stages_s_per_photo"] = {"fresnet_variant": best, **stages}
            stage_rows.append([count, best] + [f"{1e3 * stages[k]:.0f}" for k in (
                "insightface_detect", "insightface_align", "insightface_recognise",
                "fresnet_detect", "fresnet_align", "fresnet_recognise")])
        results["counts"][count] = entry
        print(f"{count} faces: warm-up calls (untimed) " + ", ".join(f"{k} {v:.1f} s" for k, v in warm.items()))
    print_table(f"photos -> embeddings, 1280x720, {args.model}, fresnet recogniser: {args.recognizer}, "
                f"device {args.device}, median of {args.rounds} interleaved rounds after a warm-up call",
                ["faces", "found", "fresnet", "IF photos/s", "IF faces/s", "fresnet photos/s", "fresnet faces/s",
                 "ratio", "min cosine to IF", "counted"], rows)
    print_table("where the time goes, ms per photo (best of 3, first photo; fresnet's fastest counted precision)",
                ["faces", "fresnet", "IF detect", "IF align", "IF recognise", "fresnet detect", "fresnet align",
                 "fresnet recognise"], stage_rows)
    for name, analysis in ours.items():
        choice = getattr(analysis.recognizer, "fast_choice", lambda: None)()
        if choice:
            print(f"fast path {name}: {choice}")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
