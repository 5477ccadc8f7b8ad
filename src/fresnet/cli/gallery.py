"""``fresnet gallery create|enrol|list|remove|search|calibrate``: a face gallery from the command line.

A gallery is one SQLite file (docs/gallery.md). Photos go through the face pipeline (detector,
alignment, MODEL); embeddings computed elsewhere come in as ``.npz`` (one array per identity) or
``.npy`` files, read without pickle.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fresnet.cli import args as A
from fresnet.errors import FresnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gallery", help="a face gallery: enrol people, search faces, calibrate the threshold",
        description="Create a gallery file, enrol identities from photos or embeddings, list, remove, search, "
        "and calibrate the match threshold for a target false-match rate (docs/gallery.md).",
    )
    actions = p.add_subparsers(dest="gallery_command", metavar="ACTION", required=True)

    def gallery_arg(q):
        q.add_argument("gallery", metavar="GALLERY.db", help="the gallery file")

    def model_args(q, required=False):
        q.add_argument("--model", required=required, help="recognition model (preset, .safetensors, .onnx, ...)")
        q.add_argument("--detector", default="mtcnn",
                       help="face detector: mtcnn (default), yunet, or an SCRFD/RetinaFace/YuNet .onnx file")

    q = actions.add_parser("create", help="create an empty gallery bound to a model (the embedding contract)")
    gallery_arg(q)
    model_args(q)
    q.add_argument("--embedding-size", type=A.positive_int,
                   help="without --model: the size of the embeddings it will hold (no contract is recorded)")
    q.set_defaults(func=run_create)

    q = actions.add_parser("enrol", help="add photos (largest face of each) or embeddings to identities")
    gallery_arg(q)
    q.add_argument("name", nargs="?", help="the identity's name (with photos or a .npy)")
    q.add_argument("photos", nargs="*", metavar="PHOTO", help="photos of that person")
    model_args(q)
    q.add_argument("--embeddings", metavar="FILE",
                   help=".npz with one array (n, d) per identity name, or .npy (n, d) for NAME")
    q.add_argument("--metadata", metavar="JSON", help="the identity's metadata, a JSON object")
    q.set_defaults(func=run_enrol)

    q = actions.add_parser("list", help="the identities, their sample counts and metadata")
    gallery_arg(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_list)

    q = actions.add_parser("remove", help="remove identities")
    gallery_arg(q)
    q.add_argument("names", nargs="+", metavar="NAME")
    q.set_defaults(func=run_remove)

    q = actions.add_parser("search", help="who is in these photos (or who are these embeddings)")
    gallery_arg(q)
    q.add_argument("photos", nargs="*", metavar="PHOTO")
    model_args(q)
    q.add_argument("--embeddings", metavar="FILE.npy", help="query embeddings (n, d) instead of photos")
    q.add_argument("-k", "--limit", type=A.positive_int, default=5, help="identities per face (default 5)")
    q.add_argument("--threshold", type=A.finite_float,
                   help="lowest score shown (default: the calibrated threshold, if any)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_search)

    q = actions.add_parser("calibrate", help="the threshold for a target false-match rate, from data")
    gallery_arg(q)
    q.add_argument("--fmr", type=A.positive_float, default=1e-3,
                   help="target false-match rate (pairs) or FPIR (IJB: 0.01 or 0.1); default 0.001")
    q.add_argument("--pack", metavar="PACK.bin", help="a verification pack (lfw.bin, cfp_fp.bin, ...)")
    q.add_argument("--model", help="the gallery's model, to embed the pack")
    q.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                   help="flip-sum embeddings (default off: the gallery stores unflipped embeddings)")
    q.add_argument("--batch-size", type=A.positive_int, default=64)
    q.add_argument("--ijb", metavar="ROOT", help="an IJB-B/IJB-C release (with --features)")
    q.add_argument("--features", metavar="F.npy", help="saved per-face features of the IJB release")
    q.add_argument("--target", choices=("IJBC", "IJBB"), default="IJBC", type=str.upper)
    q.add_argument("--ijb-gallery", help="which 1:N gallery (G1, G2; IJB-B: S1, S2); default the first")
    q.set_defaults(func=run_calibrate)


def _open(path: str, create: bool = False, contract=None):
    from fresnet.gallery.gallery import Gallery

    return Gallery(path, contract, create=create)


def _pipeline(args):
    if not args.model:
        raise FresnetError("photos need --model (the recognition model) and optionally --detector")
    from fresnet.gallery.real_pipeline import build_pipeline

    return build_pipeline(args.model, args.detector)


def _photo_faces(pipeline, path: str):
    from fresnet.faces.photo import read_photo
    from fresnet.gallery.photos import embed_faces

    image = read_photo(path)
    faces = pipeline.locate(image)
    return faces, embed_faces(pipeline, faces)


def run_create(args) -> int:
    if Path(args.gallery).exists():
        raise FresnetError(f"{args.gallery}: already exists; enrol into it, or choose another file name")
    contract = _pipeline(args).contract if args.model else None
    if contract is None and not args.embedding_size:
        raise FresnetError("create needs --model (records the embedding contract) or --embedding-size")
    from fresnet.gallery.gallery import Gallery

    with Gallery(args.gallery, contract, embedding_size=args.embedding_size) as gallery:
        print(f"created {gallery.path} ({'model ' + contract.model_digest if contract else 'no model contract'}, "
              f"embeddings of size {gallery.embedding_size})")
    return 0


def _read_array_file(path: str):
    import numpy as np

    from fresnet.ioutil import regular_file

    regular_file(path, "embeddings file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise FresnetError(f"{path}: not a .npy/.npz of numbers ({exc})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {name: loaded[name] for name in loaded.files}


def run_enrol(args) -> int:
    metadata = None
    if args.metadata:
        from fresnet.validate import load_json

        metadata = load_json(args.metadata, "--metadata")
    if args.embeddings:
        if args.photos:
            raise FresnetError("give photos or --embeddings, not both")
        data = _read_array_file(args.embeddings)
        if not isinstance(data, dict):
            if not args.name:
                raise FresnetError(f"{args.embeddings}: a .npy holds one identity's embeddings; give its NAME")
            data = {args.name: data}
        elif args.name:
            data = {args.name: data[args.name]} if args.name in data else {}
            if not data:
                raise FresnetError(f"{args.embeddings}: no array named {args.name!r}")
        with _open(args.gallery) as gallery:
            added = gallery.add_many((name, array, metadata) for name, array in data.items())
        print(f"enrolled {sum(map(len, added))} samples of {len(added)} identities into {args.gallery}")
        return 0
    if not args.name or not args.photos:
        raise FresnetError("enrol needs NAME and one or more PHOTOs (or --embeddings FILE)")
    from fresnet.gallery.photos import largest

    pipeline = _pipeline(args)
    embeddings, sources = [], []
    for photo in args.photos:
        faces, vectors = _photo_faces(pipeline, photo)
        face = largest(faces)
        if face is None:
            raise FresnetError(f"{photo}: no face found; use a photo where the face is visible and large enough")
        embeddings.append(vectors[faces.index(face)])
        sources.append({"photo": Path(photo).name, "box": [round(float(v), 1) for v in face.box]})
    with _open(args.gallery, contract=pipeline.contract) as gallery:
        gallery.add(args.name, embeddings, metadata, sources, contract=pipeline.contract)
    print(f"enrolled {len(embeddings)} photos of {args.name!r} into {args.gallery}")
    return 0


def run_list(args) -> int:
    with _open(args.gallery) as gallery:
        rows = [{"name": i.name, "samples": i.sample_count, "metadata": i.metadata} for i in gallery.identities()]
        info = {"gallery": str(gallery.path), "identities": rows, "contract": json.loads(gallery.contract.to_json())
                if gallery.contract else None, "calibration": gallery.calibration}
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    for row in rows:
        print(f"{row['name']}\t{row['samples']} samples\t{json.dumps(row['metadata'], ensure_ascii=False)}")
    threshold = (info["calibration"] or {}).get("threshold")
    print(f"{len(rows)} identities" + (f"; calibrated threshold {threshold:.4f}" if threshold is not None else ""))
    return 0


def run_remove(args) -> int:
    with _open(args.gallery) as gallery:
        for name in args.names:
            gallery.remove(name)
    print(f"removed {len(args.names)} identities from {args.gallery}")
    return 0


def run_search(args) -> int:
    with _open(args.gallery) as gallery:
        threshold = args.threshold if args.threshold is not None else gallery.threshold
        results = []
        if args.embeddings:
            queries = _read_array_file(args.embeddings)
            if isinstance(queries, dict):
                raise FresnetError(f"{args.embeddings}: give a .npy (n, d) of query embeddings")
            for index, matches in enumerate(gallery.search(queries, k=args.limit, threshold=threshold)):
                results.append({"query": index, "matches": [m.__dict__ for m in matches]})
        else:
            if not args.photos:
                raise FresnetError("search needs PHOTOs (with --model) or --embeddings FILE.npy")
            pipeline = _pipeline(args)
            for photo in args.photos:
                faces, vectors = _photo_faces(pipeline, photo)
                found = gallery.search(vectors, k=args.limit, threshold=threshold,
                                       contract=pipeline.contract) if len(faces) else []
                for face, matches in zip(faces, found):
                    results.append({"photo": photo, "box": [round(float(v), 1) for v in face.box],
                                    "matches": [m.__dict__ for m in matches]})
    if args.json:
        print(json.dumps({"threshold": threshold, "results": results}, indent=2, ensure_ascii=False))
        return 0
    for result in results:
        where = f"{result['photo']} {result['box']}" if "photo" in result else f"query {result['query']}"
        names = ", ".join(f"{m['name']} ({m['score']:.3f})" for m in result["matches"]) or "no match"
        print(f"{where}: {names}")
    return 0


def run_calibrate(args) -> int:
    from fresnet.gallery import calibrate

    with _open(args.gallery) as gallery:
        digest = gallery.contract.model_digest if gallery.contract else None
        if args.pack:
            if not args.model:
                raise FresnetError("--pack needs --model, the gallery's recognition model, to embed the pack")
            from fresnet.gallery.contract import model_digest

            given = model_digest(args.model)
            if digest is not None and given != digest:
                raise FresnetError(f"--model {args.model} ({given}) is not the gallery's model ({digest}); a "
                                   "threshold only holds for the model that computed the scores")
            from fresnet.interop.model_loader import load_any

            embedder = load_any(args.model)
            result = calibrate.calibrate_verification_pack(embedder, args.pack, args.fmr, flip=args.flip,
                                                           batch_size=args.batch_size, model_digest=given)
        elif args.ijb:
            if not args.features:
                raise FresnetError("--ijb needs --features F.npy (the release's saved per-face features)")
            result = calibrate.calibrate_ijb(args.ijb, args.features, args.fmr, args.target, args.ijb_gallery,
                                             model_digest=digest)
        else:
            raise FresnetError("calibrate needs --pack PACK.bin --model M, or --ijb ROOT --features F.npy")
        gallery.set_calibration(result)
    print(json.dumps(result, indent=2))
    return 0
