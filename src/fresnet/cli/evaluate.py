"""``fresnet eval`` (``embed`` and ``compare`` share its model options; they live in :mod:`fresnet.cli.faces`).

MODEL everywhere is a preset name (random weights), a ``.safetensors``/``.pth``/``.onnx`` file, or an
MXNet prefix (``prefix,epoch``): see :func:`fresnet.interop.model_loader.load_any`.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

from fresnet.cli import args as A
from fresnet.errors import FresnetError

MODEL_HELP = (
    "a preset name (random weights, e.g. r18), a .safetensors file, an arcface_torch .pth, an .onnx file, "
    "or an MXNet checkpoint prefix (prefix,epoch or prefix-0000.params)"
)


def _add_model_args(p: argparse.ArgumentParser, optional: bool = False, faces: bool = False) -> None:
    if optional:
        p.add_argument("model", metavar="MODEL", nargs="?", help=MODEL_HELP + " (not needed with --ijb ... --features)")
    else:
        p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a preset's config key, e.g. --set units=[1,1,1,1] (presets only; repeatable)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: cuda when available, else cpu)")
    if faces:  # photos: the recogniser's fastest call size depends on the device (faces.analysis)
        p.add_argument("--batch-size", type=A.positive_int, default=None,
                       help="faces per recogniser call (default 8 on the CPU, 64 on a GPU)")
    else:
        p.add_argument("--batch-size", type=A.positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--fast", action="store_true",
                   help="run a PyTorch model through fresnet.optimize_for_inference: BN folded, channels_last, "
                   "bf16/fp16 where it keeps cosine >= 0.9995 (checked on the first batch; docs/performance.md)")
    p.add_argument(
        "--onnx-input",
        choices=("auto", "raw", "arcface"),
        default="auto",
        help="input range of an ONNX graph: raw 0..255 (fresnet exports), arcface ((x-127.5)/127.5, "
        "model-zoo graphs), or auto (default: raw when the graph has fresnet metadata)",
    )


def _add_flip(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True,
        help="flip-sum test-time augmentation, emb(img) + emb(mirrored img), as InsightFace (default: on)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="InsightFace's verification protocol on .bin packs, and IJB-B/IJB-C (TAR@FAR, 1:N)",
        description="Embed each verification pack (lfw.bin, cfp_fp.bin, ...) and run InsightFace's 10-fold "
        "protocol (results.json, roc.png), and/or evaluate an IJB-B/IJB-C release from its pictures or from "
        "saved features (ijb.json, ijb_roc.png): InsightFace's TAR@FAR and 1:N numbers exactly, plus the "
        "standard open-set TPIR@FPIR. Everything goes into --out.",
    )
    _add_model_args(p, optional=True)
    p.add_argument("--bin", dest="bins", action="append", default=[], metavar="PACK.bin",
                   help="a verification pack (repeatable)")
    _add_flip(p)
    p.add_argument("--nfolds", type=A.folds, default=10, help="folds of the protocol (default 10)")
    p.add_argument("--out", default="eval_report", help="folder for the reports and plots (default eval_report)")
    ijb = p.add_argument_group("IJB-B / IJB-C (docs/evaluation.md)")
    ijb.add_argument("--ijb", metavar="ROOT", help="an IJB release: ROOT/meta/*.txt|csv and ROOT/loose_crop/")
    ijb.add_argument("--target", choices=("IJBC", "IJBB"), default="IJBC", type=str.upper,
                     help="which release ROOT holds (default IJBC)")
    ijb.add_argument("--features", metavar="F.npy",
                     help="evaluate saved per-face features instead of extracting them (MODEL not needed)")
    ijb.add_argument("--features-layout", choices=("mirrored", "single"), default=None,
                     help="what a row of --features holds: mirrored = the face's embedding then its mirror's, "
                     "(faces, 2*D), InsightFace's layout and the default; single = one embedding, (faces, D), "
                     "with --no-flip only. The progress file an extraction leaves beside F.npy says it already")
    ijb.add_argument("--features-out", metavar="F.npy",
                     help="where extraction writes the features (default OUT/ijb_features.npy); an interrupted "
                     "extraction resumes from there")
    ijb.add_argument("--workers", type=A.positive_int, default=None,
                     help="picture-decoding processes (default: 1 on CPU, all cores but one with --device cuda)")
    ijb.add_argument("--norm-score", action=argparse.BooleanOptionalAction, default=True,
                     help="InsightFace's N1: keep each face's embedding norm (--no-norm-score: N0)")
    ijb.add_argument("--detector-score", action=argparse.BooleanOptionalAction, default=True,
                     help="InsightFace's D1: weight each face by its faceness score (--no-detector-score: D0)")
    p.set_defaults(func=run_eval)

    # embed and compare: fresnet.cli.faces (photos go through detect -> align -> embed)


def _embedder(args: argparse.Namespace):
    from fresnet.cli.common import resolve_device
    from fresnet.interop.model_loader import load_any
    from fresnet.network.config import parse_assignments

    device = resolve_device(args.device)
    return load_any(args.model, overrides=parse_assignments(args.overrides), device=device,
                    onnx_input=args.onnx_input, fast=args.fast)


def _report_fast_path(embedder, console) -> Optional[str]:
    """Print (and return) what the --fast path picked; None without --fast or for ONNX."""
    choice = getattr(embedder, "fast_choice", lambda: None)()
    if choice:
        console.print(f"fast path: {choice}")
    return choice


def _progress(description: str, total: Optional[int], stream=None):
    """A bar on a terminal, plain lines with images/s and ETA in a log (:mod:`fresnet.progress`)."""
    from fresnet.progress import Progress

    return Progress(description, total, unit="images", stream=stream, transient=True)


def _fmt(value, digits: int = 4) -> str:
    return "undefined" if value is None else f"{value:.{digits}f}"


def result_table(title: str, result, seconds: float | None = None):
    """A rich table of one target's numbers."""
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("pairs (same / different)", f"{result.num_pairs} ({result.num_positive} / {result.num_negative})")
    table.add_row(f"accuracy ({result.nfolds}-fold)", f"{result.accuracy:.4f} ± {result.accuracy_std:.4f}")
    table.add_row(
        "best threshold (sq. L2 / cosine)", f"{result.best_threshold:.2f} / {1 - result.best_threshold / 2:.3f}"
    )
    table.add_row("ROC AUC", _fmt(result.auc))
    table.add_row("EER", _fmt(result.eer))
    for far, tar in result.tar_at_far.items():
        table.add_row(f"TAR @ FAR={far:.0e}", _fmt(tar))
    if seconds is not None:
        table.add_row("embedding time", f"{seconds:.2f} s")
    return table


def run_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    if not args.bins and not args.ijb:
        raise FresnetError("nothing to evaluate: give --bin PACK.bin (repeatable) and/or --ijb ROOT")
    if args.features and not args.ijb:
        raise FresnetError("--features goes with --ijb ROOT (the features of that release's faces)")
    if args.model is None and (args.bins or not args.features):
        raise FresnetError("MODEL is missing; it may be left out only for --ijb ROOT --features F.npy")
    from fresnet.ioutil import regular_file

    for path in args.bins:  # before any model is built; a folder or a FIFO gets the readers' own message
        regular_file(path, "verification pack")
    console = Console()
    embedder = _embedder(args) if args.model is not None and (args.bins or not args.features) else None
    if args.bins:
        _run_bins(args, embedder, console)
    if args.ijb:
        from fresnet.cli.ijb import run_ijb

        run_ijb(args, embedder, console)
    return 0


def _run_bins(args: argparse.Namespace, embedder, console) -> None:
    from rich.markup import escape

    from fresnet.eval.embed import evaluate_bin
    from fresnet.eval.plots import plot_roc
    from fresnet.ioutil import atomic_write_text

    console.print(
        f"model: {escape(embedder.name)} ({embedder.kind}), input {embedder.input_size[0]}x{embedder.input_size[1]}, "
        f"flip-sum {'on' if args.flip else 'off'}"
    )
    from fresnet.eval.targets import target_names

    evaluations = []
    for path, name in zip(args.bins, target_names(args.bins)):  # unique: mine.bin, sub/mine.bin -> mine, sub/mine
        with _progress(f"embedding {Path(path).name}", None) as progress:
            ev = evaluate_bin(embedder, path, batch_size=args.batch_size, flip=args.flip, nfolds=args.nfolds,
                              progress=progress.advance, name=name)
        evaluations.append(ev)
        console.print(result_table(f"{ev.name}  ({path})", ev.result, ev.embed_seconds))
        for note in ev.result.notes:
            console.print(f"[yellow]note:[/] {note}")
    fast_path = _report_fast_path(embedder, console)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "model_kind": embedder.kind,
        "input_size": list(embedder.input_size),
        "flip": args.flip,
        "fast_path": fast_path,
        "targets": {
            ev.name: {"path": ev.path, "embed_seconds": ev.embed_seconds, **ev.result.to_dict()} for ev in evaluations
        },
    }
    atomic_write_text(out / "results.json", json.dumps(report, indent=1) + "\n")
    plot_roc({ev.name: ev.result for ev in evaluations}, out / "roc.png", title=f"ROC: {os.path.basename(args.model)}")
    console.print(f"wrote {out / 'results.json'} and {out / 'roc.png'}")


def _load_landmarks(args, names):
    if not args.landmarks:
        return None
    from fresnet.faces.align import check_landmarks_cover, read_landmarks

    table = read_landmarks(args.landmarks)
    check_landmarks_cover(table, names, args.landmarks)
    return table
