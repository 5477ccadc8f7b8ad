"""``fresnet drop-subcenters RUN --out DIR``: Sub-center ArcFace's drop step on a finished run."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fresnet.cli import args as A
from fresnet.cli.common import add_overwrite, refuse_existing


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "drop-subcenters",
        help="Sub-center ArcFace's drop step: keep each class's dominant sub-centre and the samples near it",
        description=(
            "After a run trained with loss=subcenter_arcface (K sub-centres per class): embed every training "
            "sample with the trained backbone, find each class's dominant sub-centre (the one most of its "
            "samples are closest to), and keep the samples within --threshold-degrees of it (75, the paper's "
            "and InsightFace's). Writes DIR/samples.csv (every sample's angle and verdict), DIR/kept.txt (the "
            "kept dataset indices), the K=1 run's training set (an image folder: DIR/kept.lst, a list file for "
            "fresnet pack; RecordIO: DIR/kept/train.rec with the kept records), DIR/centres.safetensors (the "
            "(C, D) dominant sub-centres: the K=1 run's initial class centres, init_centres=) and "
            "DIR/drop.json (the summary), each file complete or absent."
        ),
    )
    p.add_argument("run", metavar="RUN", help="the run's output folder (with checkpoint.pt) or the checkpoint file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the output files")
    p.add_argument("--threshold-degrees", type=A.positive_float, default=75.0, metavar="DEG",
                   help="keep samples at most this angle from their class's dominant sub-centre (default 75)")
    p.add_argument("--dataset", metavar="PATH",
                   help="the run's training set, when it moved (default: the dataset the checkpoint's config names)")
    p.add_argument("--batch-size", type=A.positive_int, default=128, help="images per forward pass (default 128)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    add_overwrite(p)
    p.set_defaults(func=run_drop)


def run_drop(args: argparse.Namespace) -> int:
    from fresnet.cli.common import resolve_device
    from fresnet.progress import Progress
    from fresnet.train.subcenter_run import OUTPUT_FILES, drop_subcenters

    device = resolve_device(args.device)
    out = Path(args.out)
    refuse_existing([out / name for name in OUTPUT_FILES], args.overwrite)
    progress: list[Progress] = []

    def on_total(total: int) -> None:
        progress.append(Progress("embedding", total, unit="images", stream=sys.stderr, transient=True,
                                 enabled=not args.no_progress))

    try:
        summary = drop_subcenters(args.run, out, args.threshold_degrees, device=device, batch_size=args.batch_size,
                                  dataset=args.dataset, on_total=on_total,
                                  advance=lambda n: progress[0].advance(n))
    finally:
        for bar in progress:
            bar.close()
    print(summary.describe())
    listed = f", {out / 'kept.lst'} for fresnet pack" if (out / "kept.lst").exists() else ""
    if (out / "kept" / "train.rec").exists():
        listed += f", the kept records in {out / 'kept'} (dataset={out / 'kept'})"
    print(f"kept samples: {out / 'kept.txt'}{listed} (per sample: {out / 'samples.csv'})")
    print(f"K=1 class centres: {out / 'centres.safetensors'}; summary: {out / 'drop.json'}")
    return 0
