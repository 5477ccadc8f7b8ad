"""``fresnet eval ... --ijb ROOT``: extract (or load) per-face features, evaluate, report.

Prints the 1:1 TAR@FAR table and the 1:N tables, writes ``ijb.json`` and ``ijb_roc.png`` into
``--out`` (and the features to ``--features-out``, default ``OUT/ijb_features.npy``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fresnet.errors import FresnetError
from fresnet.progress import Progress
from fresnet.timing import Timing, timed


def _extract(args: argparse.Namespace, embedder, meta, console) -> tuple[np.ndarray, dict[str, Any]]:
    from fresnet.eval.ijb.extract import extract_features

    out = Path(args.features_out) if args.features_out else Path(args.out) / "ijb_features.npy"
    faces = len(meta.faces)
    info: dict[str, Any] = {"features": str(out)}
    # a bar on a terminal, plain lines with faces/s and ETA in a log
    with Progress("extracting features", faces, unit="faces", transient=True) as progress:
        state = {"clock": Timing.start(), "first": 0, "done": 0}

        def on_start(done: int) -> None:
            state.update(first=done, done=done)
            progress.begin(done)  # a resumed extraction: the speed and ETA count only the new faces
            if done:
                progress.print(f"resuming {out}: {done} of {faces} faces already there")

        def advance(n: int) -> None:
            state["done"] += n
            progress.advance(n)

        features = extract_features(embedder, meta.paths, meta.faces, out, model=args.model, flip=args.flip,
                                    batch_size=args.batch_size, workers=args.workers, progress=advance,
                                    on_start=on_start)
    seconds = state["clock"].wall
    new = state["done"] - state["first"]
    info.update(
        extracted_faces=new, extract_seconds=seconds, faces_per_second=new / seconds if seconds > 0 and new else None
    )
    if new:
        console.print(f"extracted {new} faces in {seconds:.1f} s ({new / seconds:,.0f} faces/s) into {out}")
    else:
        console.print(f"{out} already holds every face's features")
    return features, info


def _layout(args: argparse.Namespace, known: Optional[bool]) -> bool:
    """Whether the rows hold the mirror's half: what the extraction recorded (``known``), else what
    --features-layout says, else InsightFace's layout (mirrored); a contradiction is an error."""
    said = None if args.features_layout is None else args.features_layout == "mirrored"
    source = args.features or args.features_out or "the extraction"
    if known is not None and said is not None and known != said:
        recorded = "mirrored (faces, 2*D)" if known else "single (faces, D)"
        raise FresnetError(f"{source}: its extraction recorded the layout {recorded}, but --features-layout says "
                           f"{args.features_layout}; leave --features-layout out")
    mirrored = known if known is not None else (True if said is None else said)
    if args.flip and not mirrored:
        raise FresnetError(f"{source}: single (faces, D) embeddings hold no mirror to add (flip-sum, F1); "
                           "evaluate them with --no-flip")
    return mirrored


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _tables(result, console) -> None:
    from rich.table import Table

    table = Table(title=f"{result.target} 1:1 verification ({result.mode}): TAR (%) at FAR", header_style="bold")
    for far in result.tar_at_far:
        table.add_column(f"{far:.0e}" + ("*" if far in result.unsupported_fars else ""), justify="right")
    table.add_column("AUC", justify="right")
    table.add_row(*[_pct(v) for v in result.tar_at_far.values()], _pct(result.auc))
    console.print(table)
    if result.unsupported_fars:
        impostors = int(np.count_nonzero(result.labels != 1))
        console.print(f"* {impostors} impostor pairs cannot support FAR {min(result.unsupported_fars):g}"
                      f"{'' if len(result.unsupported_fars) == 1 else f' to {max(result.unsupported_fars):g}'} "
                      "(fewer than 1/FAR of them): the value is InsightFace's reading of the nearest ROC point, "
                      "not a measured TAR at that FAR")
    if result.top_k is None:
        return
    table = Table(title=f"{result.target} 1:N identification (%)", header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("threshold", justify="right")
    for k, acc in result.top_k.items():
        table.add_row(f"top-{k} accuracy (merged gallery)", _pct(acc), "")
    for fpir, value in result.tpir_at_fpir_insightface.items():
        table.add_row(f"InsightFace 'TPIR' @ 'FAR'={fpir:g} (ijb_1n.py)", *(("-", "-") if value is None else
                      (_pct(value[0]), f"{value[1]:.4f}")))
    for gallery, per in result.tpir_at_fpir.items():
        for fpir, value in per.items():
            table.add_row(f"TPIR @ FPIR={fpir:g}, gallery {gallery} (open-set)", *(("-", "-") if value is None else
                          (_pct(value[0]), f"{value[1]:.4f}")))
    console.print(table)


def run_ijb(args: argparse.Namespace, embedder, console) -> None:
    from fresnet.eval.ijb import evaluate
    from fresnet.eval.ijb.layout import read_meta
    from fresnet.eval.ijb.protocol import load_features
    from fresnet.eval.plots import plot_ijb_roc
    from fresnet.ioutil import atomic_write_text

    with timed() as reading:
        meta = read_meta(args.ijb, args.target)
    console.print(f"{args.target}: {len(meta.faces)} faces, {len(meta.pairs)} pairs "
                  f"({reading.wall:.1f} s to read {meta.paths.meta})")
    report: dict[str, Any] = {"root": str(args.ijb), "model": args.model}
    if args.features:
        features, mirrored = load_features(args.features)
        report["features"] = str(args.features)
    else:
        features, info = _extract(args, embedder, meta, console)
        mirrored = args.flip
        report.update(info, model_kind=embedder.kind)
    mirrored = _layout(args, mirrored)
    report["features_layout"] = "mirrored" if mirrored else "single"
    result = evaluate(meta, features, target=args.target, flip=args.flip, norm_score=args.norm_score,
                      detector_score=args.detector_score, mirrored=mirrored)
    _tables(result, console)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.update(result.to_dict())
    atomic_write_text(out / "ijb.json", json.dumps(report, indent=1) + "\n")
    label = os.path.basename(str(args.model or args.features))
    plot_ijb_roc({label: (*result.roc, result.auc, result.tar_at_far[1e-4])}, out / "ijb_roc.png",
                 title=f"{result.target} 1:1 verification ROC ({result.mode})")
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    console.print(f"scored in {sum(result.seconds.values()):.1f} s ({seconds}); wrote {out / 'ijb.json'} and "
                  f"{out / 'ijb_roc.png'}")
