"""MTCNN: fresnet's ``faces.MTCNN`` against ``facenet_pytorch.MTCNN.detect`` on the same photos.

Both detect every face of the same decoded RGB photos (the six real portraits of
``../shared/reference/faces``, a collage of them with six faces, matplotlib's ``grace_hopper.jpg``),
interleaved round-robin (one pass of each per round, the order alternating); the script prints the
median wall-clock and process CPU time per pass over all photos for each, their ratios, and checks
that both found the same faces (count, max box/landmark difference in pixels, max score difference).
On a machine shared with other jobs the wall clock of a 2-thread run swings with the load; the CPU
time of a 1-thread run (``--threads 1``) is the steadier measure of the work each does.

facenet-pytorch 2.6.0 (installed ``--no-deps``) imports ``torchvision.ops.batched_nms``, whose PyPI
wheels do not load against the CPU torch; it runs here with a stand-in torchvision whose
``batched_nms`` is fresnet's own vectorised NMS (``faces.nms.nms_iou``, torchvision's semantics), so
both sides pay the same for NMS and the ratio measures the rest.

    python benchmarks/bench_mtcnn.py [--threads 2] [--rounds 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from common import REPO_ROOT, open_device, set_threads, synchronize

sys.path.insert(0, str(REPO_ROOT / "tests"))
from face_photos import collage, grace_hopper, read_rgb
from facenet_oracle import facenet_detect, install_fake_torchvision

from fresnet.faces.mtcnn import MTCNN
from fresnet.faces.nms import nms_iou


def shared_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    """torchvision's ``batched_nms`` for one image (MTCNN calls it with a single index), vectorised."""
    if idxs.numel() and int(idxs.min()) != int(idxs.max()):
        raise ValueError("the benchmark's stand-in batched_nms handles one image at a time")
    keep = nms_iou(boxes.detach().cpu().numpy(), scores.detach().cpu().numpy(), threshold)
    return torch.from_numpy(keep).to(boxes.device)


def interleaved(candidates: dict, rounds: int, device: torch.device) -> tuple[dict, dict]:
    """Median wall-clock and process CPU seconds per call, one warm-up, rounds alternating the order."""
    names = list(candidates)
    for name in names:
        candidates[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            synchronize(device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            candidates[name]()
            synchronize(device)
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return ({n: statistics.median(v) for n, v in wall.items()}, {n: statistics.median(v) for n, v in cpu.items()})


def photos() -> dict[str, np.ndarray]:
    folder = REPO_ROOT.parent / "shared" / "reference" / "faces" / "photos"
    found = {path.stem: read_rgb(path) for path in sorted(folder.glob("*.jpg"))}
    if not found:
        sys.exit(f"no photos in {folder} (the shared reference folder)")
    found["collage"] = collage(list(found.values()))
    found["grace_hopper"] = grace_hopper()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    device = open_device(args.device)
    if device is None:
        sys.exit(2)
    install_fake_torchvision(shared_nms)
    from facenet_pytorch import MTCNN as FacenetMTCNN

    reference = FacenetMTCNN(keep_all=True, select_largest=False, device=device).eval()
    ours = MTCNN(device=device)
    images = photos()

    worst = {"count": 0, "pixels": 0.0, "score": 0.0}
    for name, rgb in images.items():
        found = ours.detect(rgb)
        boxes, scores, landmarks = facenet_detect(reference, rgb)
        if len(found) != len(scores):
            worst["count"] += 1
            print(f"{name}: {len(found)} faces, facenet-pytorch {len(scores)}")
            continue
        if len(found):
            worst["pixels"] = max(worst["pixels"], float(np.abs(found.boxes - boxes).max()),
                                  float(np.abs(found.landmarks - landmarks).max()))
            worst["score"] = max(worst["score"], float(np.abs(found.scores - scores).max()))

    wall, cpu = interleaved({
        "facenet_pytorch": lambda: [facenet_detect(reference, rgb) for rgb in images.values()],
        "fresnet": lambda: [ours.detect(rgb) for rgb in images.values()],
    }, args.rounds, device)
    sizes = ", ".join(f"{name} {rgb.shape[1]}x{rgb.shape[0]}" for name, rgb in images.items())
    print(f"MTCNN on {len(images)} photos ({sizes}); device {device}, {threads} threads, {args.rounds} rounds")
    print(f"same faces: {len(images) - worst['count']}/{len(images)} photos; max box/landmark difference "
          f"{worst['pixels']:.2e} px, max score difference {worst['score']:.2e}")
    for name, label in (("facenet_pytorch", "facenet_pytorch.MTCNN.detect"), ("fresnet", "fresnet faces.MTCNN.detect")):
        print(f"{label:30s} wall {wall[name] * 1000:8.1f} ms per pass   CPU {cpu[name] * 1000:8.1f} ms per pass")
    print(f"ratio (facenet-pytorch / fresnet): wall {wall['facenet_pytorch'] / wall['fresnet']:.2f}x, "
          f"CPU {cpu['facenet_pytorch'] / cpu['fresnet']:.2f}x")


if __name__ == "__main__":
    main()
