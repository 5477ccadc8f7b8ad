"""Data-loading throughput: records/s for raw RecordIO reads and for decode + augment, at 1 and 2
DataLoader workers, with Pillow and (when installed) OpenCV; plus synthetic rendering speed.

    python benchmarks/bench_data.py [--rec PATH] [--images 2000] [--workers 1 2] [--size 112]
    python benchmarks/bench_data.py --rec PATH --device cuda --training-loader   # what `fresnet train` feeds a GPU

``--training-loader`` measures fresnet's own training loader (``fresnet.train.data.build_loader``):
batches of ``--batch-size`` delivered *on the device*, decoded by DataLoader workers with pinned
memory (``decode=cpu``, each ``--workers`` count) and, on CUDA, decoded on the GPU by
``torchvision.io.decode_jpeg`` (``decode=gpu``): which one keeps up with the training step.

Without --rec it renders a synthetic RecordIO set into a temp folder first. Numbers depend on the
machine's load: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fresnet.data import RecordIODataset
from fresnet.data.synthetic import SyntheticFaces, write_synthetic_dataset
from fresnet.data.transforms import train_transform


class RawRecords(Dataset):
    """Reads each record's bytes and nothing else: the cost of the file format itself."""

    def __init__(self, ds: RecordIODataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> int:
        data, _ = self.ds.read_raw(index)
        return len(data)


def count_batch(batch: list) -> int:
    return len(batch)


def stack_batch(batch: list) -> int:
    images = torch.stack([image for image, _ in batch])
    return len(images)


def records_per_second(dataset: Dataset, workers: int, collate, batch_size: int) -> float:
    """Throughput after the first batch, so worker start-up is not counted."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    next(iterator)
    start, count = time.perf_counter(), 0
    for n in iterator:
        count += n
    return count / (time.perf_counter() - start)


def cv2_available() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rec", help="an existing RecordIO folder or .rec (default: render a synthetic one)")
    parser.add_argument("--images", type=int, default=2000, help="synthetic images to render (default: 2000)")
    parser.add_argument("--size", type=int, default=112, help="synthetic image size (default: 112)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers (default: 1 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--training-loader", action="store_true", help="time fresnet's training loader (see above)")
    parser.add_argument("--device", default="cpu", help="device the training loader delivers to (default: cpu)")
    parser.add_argument("--steps", type=int, default=40, help="batches per training-loader measurement (default: 40)")
    args = parser.parse_args(argv)
    if args.training_loader:
        return training_loader(args)
    torch.set_num_threads(1)  # one thread per worker, as a training job would run them

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.rec:
            path = Path(args.rec)
        else:
            ids = max(1, args.images // 20)
            start = time.perf_counter()
            write_synthetic_dataset(Path(tmp) / "syn", ids, 20, holdout_identities=2, pairs=2, size=args.size)
            elapsed = time.perf_counter() - start
            print(f"synthetic: wrote {ids * 20} images ({args.size}x{args.size}) as JPEG RecordIO in {elapsed:.1f} s "
                  f"({ids * 20 / elapsed:.0f} images/s, render + encode + write)")
            path = Path(tmp) / "syn"
            faces = SyntheticFaces(64, 4, size=args.size)
            start = time.perf_counter()
            for begin in range(0, 256, 64):
                faces.render(range(begin, begin + 64))
            print(
                f"synthetic: render alone {256 / (time.perf_counter() - start):.0f} images/s (batches of 64, 1 thread)"
            )

        decoders = ["pil"] + (["cv2"] if cv2_available() else [])
        if len(decoders) == 1:
            print("decoders: Pillow only (OpenCV is not installed; `pip install opencv-python-headless` to compare)")
        base = RecordIODataset(path)
        print(f"dataset: {len(base)} records, {base.num_classes} identities, {path}")
        # FaceImageIter's usual training settings: mirror, colour jitter 0.125, cutoff off
        augment = train_transform(base.image_size or args.size, mirror=True, cutoff=0, color_jitter=0.125)
        rows = []
        for workers in args.workers:
            rows.append(
                ("raw read", "-", workers, records_per_second(RawRecords(base), workers, count_batch, args.batch_size))
            )
            for decoder in decoders:
                ds = RecordIODataset(path, decoder=decoder)
                rows.append(("decode", decoder, workers, records_per_second(ds, workers, stack_batch, args.batch_size)))
                ds = RecordIODataset(path, transform=augment, decoder=decoder)
                rows.append(
                    (
                        "decode + augment",
                        decoder,
                        workers,
                        records_per_second(ds, workers, stack_batch, args.batch_size),
                    )
                )
        print(f"\n{'stage':<18} {'decoder':<8} {'workers':>7} {'records/s':>10}")
        for stage, decoder, workers, rate in rows:
            print(f"{stage:<18} {decoder:<8} {workers:>7} {rate:>10.0f}")
    return 0


def training_loader(args) -> int:
    """samples/s of ``fresnet.train.data.build_loader`` delivering ``--steps`` batches to the device."""
    from fresnet.train.config import load_config
    from fresnet.train.data import GlobalBatchSampler, build_loader

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.rec) if args.rec else Path(tmp) / "syn"
        if not args.rec:
            write_synthetic_dataset(path, max(1, args.images // 20), 20, holdout_identities=2, pairs=2, size=args.size)
        dataset = RecordIODataset(path)
        size = tuple(dataset.image_size or (args.size, args.size))
        print(f"training loader: {len(dataset)} records, batch {args.batch_size}, {args.steps} batches to {device}, "
              f"{os.cpu_count()} cores")
        modes = [("cpu", w) for w in args.workers] + ([("gpu", min(args.workers))] if device.type == "cuda" else [])
        for decode, workers in modes:
            cfg = load_config(
                {"dataset": str(path), "batch_size": args.batch_size, "num_workers": workers, "decode": decode}
            )
            sampler = GlobalBatchSampler(len(dataset), args.batch_size, 0, 1, 0, 0, args.steps + 1)
            try:
                loader = build_loader(dataset, sampler, cfg, size, device)
                iterator = iter(loader)
                next(iterator)  # worker start-up and first decode, not counted
                start, count = time.perf_counter(), 0
                for images, labels in iterator:
                    images = images.to(device, non_blocking=True)
                    count += len(labels)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rate = count / (time.perf_counter() - start)
                print(f"  decode={decode:<3} workers={workers:<2} {rate:10.0f} samples/s")
            except Exception as exc:  # report and go on to the next mode
                print(f"  decode={decode:<3} workers={workers:<2} failed: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
