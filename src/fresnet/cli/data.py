"""``fresnet pack``, ``fresnet make-bin`` and ``fresnet synth``: build face datasets on disk."""
from __future__ import annotations

import argparse
import contextlib
from typing import Callable, Iterable, Iterator

from fresnet.cli import args as A
from fresnet.errors import FresnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="pack a folder-per-identity tree or a list file into train.rec, train.idx and property",
        description=(
            "Write an InsightFace RecordIO training set. SOURCE is a folder with one sub-folder of images per "
            "identity (labels follow the sorted folder names) or a list file of 'path<TAB>label' lines "
            "(InsightFace '1<TAB>path<TAB>label' .lst lines work too). JPEG files are stored as they are. "
            "OUT_PREFIX 'out/train' writes out/train.rec, out/train.idx and out/property; a folder writes "
            "train.* inside it. Files appear only when complete."
        ),
    )
    p.add_argument("source", metavar="IMAGE_DIR|LIST", help="identity folders, or a list file")
    p.add_argument("out_prefix", metavar="OUT_PREFIX", help="output prefix (out/train) or folder")
    p.add_argument(
        "--image-size",
        type=A.positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="size for 'property' (default: the first image's)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument(
        "--no-verify", action="store_true", help="do not decode each JPEG first (faster, but corrupt files get packed)"
    )
    p.set_defaults(func=run_pack)

    p = sub.add_parser(
        "make-bin",
        help="build an InsightFace verification .bin from image pairs",
        description=(
            "PAIRS is a text file of 'path1 path2 issame' lines (issame 1/0/true/false; paths relative to --root, "
            "default the list's folder), or LFW's pairs.txt with --root holding name/name_0001.jpg."
        ),
    )
    p.add_argument("pairs", metavar="PAIRS", help="pairs list file")
    p.add_argument("out", metavar="OUT.bin", help="the .bin to write")
    p.add_argument("--root", help="folder the image paths are relative to")
    p.add_argument(
        "--format", choices=("auto", "simple", "lfw"), default="auto", help="pairs file format (default: auto)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT.bin if it exists (without it, it is refused)")
    p.set_defaults(func=run_make_bin)

    p = sub.add_parser(
        "synth",
        help="write a synthetic dataset: RecordIO training set + held-out .bin, or an IJB-format release (--ijb)",
        description=(
            "Render synthetic faces: IDENTITIES x IMAGES training images (train.rec, train.idx, property) and "
            "PAIRS verification pairs over HOLDOUT further identities that never appear in training. "
            "With --ijb OUT --faces N: an IJB-C (or --target IJBB) release instead, meta files and loose-crop "
            "pictures, for `fresnet eval MODEL --ijb OUT` (N = 469375 gives IJB-C's real counts)."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="output folder (the RecordIO set)")
    ijb = p.add_argument_group("IJB-format release")
    ijb.add_argument("--ijb", metavar="OUT", help="write a synthetic IJB release to OUT instead")
    ijb.add_argument(
        "--faces", type=A.positive_int, default=2000, help="faces in the release (default 2000; 469375 = IJB-C)"
    )
    ijb.add_argument(
        "--target", choices=("IJBC", "IJBB"), default="IJBC", type=str.upper, help="file layout (default IJBC)"
    )
    ijb.add_argument("--no-pictures", action="store_true", help="meta files only (for scoring saved features)")
    ijb.add_argument("--workers", type=A.positive_int, default=1, help="processes rendering pictures (default 1)")
    p.add_argument("--identities", type=A.positive_int, default=200, help="training identities (default: 200)")
    p.add_argument(
        "--images-per-identity", type=A.positive_int, default=20, help="images per training identity (default: 20)"
    )
    p.add_argument(
        "--holdout", type=A.positive_int, default=100, help="held-out identities for the .bin (default: 100)"
    )
    p.add_argument(
        "--pairs", type=A.positive_int, default=600, help="verification pairs, half of them matches (default: 600)"
    )
    p.add_argument("--seed", type=A.nonnegative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=A.positive_int, default=112, help="image size in pixels (default: 112)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=run_synth)


@contextlib.contextmanager
def _counter(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Progress advanced by calling the yielded function with a count of images: a bar on a
    terminal, plain lines in a log (:mod:`fresnet.progress`)."""
    from fresnet.progress import Progress

    with Progress(description, total, unit="images", transient=True) as progress:
        yield progress.advance


@contextlib.contextmanager
def _progress(description: str, total: int, per_item: int = 1) -> Iterator[Callable[[Iterable], Iterable]]:
    """A wrapper for iterables whose items are ``per_item`` images each, showing progress: a bar on
    a terminal, plain lines in a log."""
    from fresnet.progress import Progress

    with Progress(description, total, unit="images", transient=True) as progress:
        yield lambda iterable: progress.track(iterable, per_item)


def run_pack(args: argparse.Namespace) -> int:
    from fresnet.data.image_folder import list_image_source
    from fresnet.data.recordio.writer import pack_images

    items, classes = list_image_source(args.source)
    with _progress("packing", len(items)) as track:
        paths = pack_images(
            items,
            args.out_prefix,
            image_size=tuple(args.image_size) if args.image_size else None,
            overwrite=args.overwrite,
            verify=not args.no_verify,
            progress=track,
        )
    identities = len(classes) if classes is not None else len({label for _, label in items})
    print(f"wrote {len(items)} images of {identities} identities: {paths.rec}, {paths.idx}, {paths.property}")
    return 0


def run_make_bin(args: argparse.Namespace) -> int:
    from fresnet.cli.common import refuse_existing
    from fresnet.data.verification_bin import make_bin, read_pairs_list

    refuse_existing([args.out], args.overwrite)
    pairs = read_pairs_list(args.pairs, root=args.root, fmt=args.format)
    with _progress("encoding", 2 * len(pairs)) as track:
        out = make_bin(pairs, args.out, progress=track)
    matches = sum(same for _, _, same in pairs)
    print(f"wrote {out}: {len(pairs)} pairs ({matches} matches, {len(pairs) - matches} non-matches)")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    if args.ijb:
        return _run_synth_ijb(args)
    if not args.out_dir:
        raise FresnetError("give OUT_DIR (a RecordIO training set) or --ijb OUT (an IJB-format release)")
    from fresnet.data.synthetic import write_synthetic_dataset

    for name in ("identities", "images_per_identity", "holdout", "pairs"):
        if getattr(args, name) < (2 if name in ("holdout", "pairs") else 1):
            raise FresnetError(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    total = args.identities * args.images_per_identity
    with _progress("rendering", total, per_item=256) as track:  # the renderer works in chunks of 256
        paths = write_synthetic_dataset(
            args.out_dir,
            num_identities=args.identities,
            images_per_identity=args.images_per_identity,
            holdout_identities=args.holdout,
            pairs=args.pairs,
            seed=args.seed,
            size=args.size,
            overwrite=args.overwrite,
            progress=track,
        )
    print(
        f"wrote {total} training images of {args.identities} identities to {paths['rec']} and "
        f"{args.pairs} pairs of {args.holdout} held-out identities to {paths['bin']}"
    )
    return 0


def _run_synth_ijb(args: argparse.Namespace) -> int:
    from fresnet.eval.ijb.synthetic import write_synthetic_ijb

    if args.workers < 1:
        raise FresnetError(f"--workers must be >= 1, got {args.workers}")
    with _counter("rendering loose crops", 0 if args.no_pictures else args.faces) as advance:
        ijb = write_synthetic_ijb(args.ijb, args.faces, target=args.target, seed=args.seed,
                                  pictures=not args.no_pictures, workers=args.workers, overwrite=args.overwrite,
                                  progress=advance)
    s = ijb.sizes
    print(
        f"wrote a synthetic {ijb.target} release to {args.ijb}: {s.faces} faces in {s.templates} templates of "
        f"{s.subjects} subjects ({s.probes} probe templates), {s.pairs} pairs ({s.genuine} genuine)"
        + ("" if args.no_pictures else f", pictures in {args.ijb}/loose_crop")
    )
    return 0
