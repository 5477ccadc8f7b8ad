"""IJB-B/C speed: scoring at the real size against InsightFace's loops, and feature extraction.

    python benchmarks/bench_ijb.py [--faces 469375] [--rounds 2] [--json out.json]
    python benchmarks/bench_ijb.py --extract --device cuda --model r100 --fast [--faces 30000 --distinct 3000]

**Scoring** (default): a synthetic IJB-C at the real size (469,375 faces x 512, 23,124 templates,
15,658,489 pairs, 3,531 gallery and 19,593 probe templates) is generated in memory, metadata and
random float32 features (faces, 2x512), no pictures. ``fresnet.eval.ijb.evaluate`` is timed on it
(all of 1:1 and 1:N, from features in memory), with its peak RSS above the inputs. InsightFace's
own steps are timed on part of the same set, in the same rounds, and scaled to the whole:
``image2template_feature`` (a loop over templates with an ``np.where`` over every face) on
``--theirs-templates`` templates (run twice, as ``ijb_11.py`` and ``ijb_1n.py`` each pool), the
``verification`` pair loop on 1 M pairs, scikit-learn's ``roc_curve`` algorithm (an argsort and
cumulative sums; sklearn itself when installed), and ``ijb_1n.py``'s ``evaluation`` on
``--theirs-probes`` probes (its per-probe loops and ``heapq.nlargest`` over every non-mated score).
The pooled templates are compared with ours, bit for bit.

**Extraction** (``--extract``): a synthetic release with pictures is written to a temp folder
(``--distinct`` pictures rendered, the rest copies), then: the CPU side alone (decode + alignment in
``--workers`` DataLoader workers), the model alone on aligned faces, and the whole extraction.
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))

from fresnet.eval.ijb import evaluate  # noqa: E402
from fresnet.eval.ijb.pooling import Mode, group_faces, pool_templates  # noqa: E402
from fresnet.eval.ijb.synthetic import synthetic_features, synthetic_ijb, write_synthetic_ijb  # noqa: E402


# --------------------------------------------------------------------------------------------------
# memory


def _status(key: str) -> float:
    """A /proc/self/status field in GB (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1e6
    return float("nan")


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# InsightFace's steps, as its scripts write them (for timing; numpy only)


def theirs_pool(img_feats, templates, medias, chosen):
    """``image2template_feature`` for the templates ``chosen`` (the loop body is theirs)."""
    template_feats = np.zeros((len(chosen), img_feats.shape[1]))
    for count_template, uqt in enumerate(chosen):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, axis=0)
    return template_feats


def theirs_pairs(template_norm_feats, unique_templates, p1, p2):
    """``verification``: 100,000 pairs at a time, rows gathered and multiplied."""
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    for s in [total_pairs[i:i + batchsize] for i in range(0, len(p1), batchsize)]:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        score[s] = np.sum(feat1 * feat2, -1).flatten()
    return score


def theirs_roc(labels, scores):
    """scikit-learn's ``roc_curve`` (sklearn itself when installed, else its algorithm)."""
    try:
        from sklearn.metrics import roc_curve

        return roc_curve(labels, scores)
    except ImportError:
        order = np.argsort(scores, kind="mergesort")[::-1]
        y_score, y_true = scores[order], labels[order]
        distinct = np.where(np.diff(y_score))[0]
        threshold_idxs = np.r_[distinct, y_true.size - 1]
        tps = np.cumsum(y_true, dtype=np.float64)[threshold_idxs]
        fps = 1 + threshold_idxs - tps
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        return fps[keep] / fps[-1], tps[keep] / tps[-1], y_score[threshold_idxs][keep]


def theirs_identification(query_feats, gallery_feats, mask):
    """``ijb_1n.py``'s ``evaluation`` (its printing left out)."""
    Fars = [0.01, 0.1]
    query_num = query_feats.shape[0]
    similarity = np.dot(query_feats, gallery_feats.T)
    top_inds = np.argsort(-similarity)
    out = {}
    for k in (1, 5, 10):
        out[k] = sum(mask[i] in top_inds[i, 0:k] for i in range(query_num)) / query_num
    required_topk = [math.ceil(query_num * x) for x in Fars]
    top_sims = similarity
    pos_sims = []
    for i in range(query_num):
        gt = mask[i]
        pos_sims.append(top_sims[i, gt])
        top_sims[i, gt] = -2.0
    pos_sims = np.array(pos_sims)
    neg_sims = top_sims[np.where(top_sims > -2.0)]
    neg_sims = heapq.nlargest(max(required_topk), neg_sims)
    for far, pos in zip(Fars, required_topk):
        th = neg_sims[pos - 1]
        out[far] = (np.sum(pos_sims > th) / query_num, th)
    return out


# --------------------------------------------------------------------------------------------------
# scoring benchmark


def bench_scoring(args) -> dict:
    load_start = os.getloadavg()
    t = time.perf_counter()
    ijb = synthetic_ijb(args.faces, "IJBC", seed=0)
    meta = ijb.to_meta()
    features = synthetic_features(ijb, dim=args.dim)
    setup = time.perf_counter() - t
    faces = meta.faces
    print(f"set: {len(faces)} faces x {args.dim}, {len(np.unique(faces.templates))} templates, {len(meta.pairs)} pairs "
          f"(generated in {setup:.0f} s); load average {load_start[0]:.2f}", flush=True)

    mode = Mode()
    unique_templates = np.unique(faces.templates)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(unique_templates, min(args.theirs_templates, len(unique_templates)), replace=False))
    pair_subset = rng.choice(len(meta.pairs), min(1_000_000, len(meta.pairs)), replace=False)

    ours, theirs = [], {"pool": [], "pairs": [], "roc": [], "identification": []}
    peak, base = [], []
    result = None
    for r in range(args.rounds):
        base.append(_status("VmRSS"))
        measured = reset_peak_rss()
        start = time.perf_counter()
        result = evaluate(meta, features)
        ours.append(time.perf_counter() - start)
        peak.append(_status("VmHWM") if measured else float("nan"))
        print(f"round {r + 1}: ours {ours[-1]:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in result.seconds.items())}); "
              f"peak RSS {peak[-1]:.2f} GB, {peak[-1] - base[-1]:.2f} GB above the inputs", flush=True)

        per_face = mode.face_features(features, faces.faceness, mirrored=True)  # theirs is vectorised too
        start = time.perf_counter()
        pooled = theirs_pool(per_face, faces.templates, faces.medias, chosen)
        del per_face  # so that our next round's memory is measured over the inputs alone
        theirs["pool"].append((time.perf_counter() - start) * len(unique_templates) / len(chosen) * 2)
        templates = pooled / np.sqrt(np.sum(pooled ** 2, -1, keepdims=True))
        start = time.perf_counter()
        ids = np.searchsorted(chosen, meta.pairs.first[pair_subset] % len(chosen))  # any template rows do
        theirs_pairs(templates, np.arange(len(chosen)), ids, ids[::-1].copy())
        theirs["pairs"].append((time.perf_counter() - start) * len(meta.pairs) / len(pair_subset))
        start = time.perf_counter()
        theirs_roc(meta.pairs.labels.astype(np.int64), result.scores)
        theirs["roc"].append(time.perf_counter() - start)
        g = len(np.unique(np.concatenate([x.templates for x in meta.galleries.values()])))
        q_total = len(np.unique(meta.probes.templates))
        q = min(args.theirs_probes, q_total)
        query = rng.standard_normal((q, args.dim))
        gallery = rng.standard_normal((g, args.dim))
        start = time.perf_counter()
        theirs_identification(query, gallery, rng.integers(0, g, q))
        theirs["identification"].append((time.perf_counter() - start) * q_total / q)
        print(f"round {r + 1}: theirs (scaled) pool x2 {theirs['pool'][-1]:.0f} s, pairs {theirs['pairs'][-1]:.1f} s, "
              f"roc {theirs['roc'][-1]:.1f} s, 1:N {theirs['identification'][-1]:.0f} s", flush=True)

    # the pooled templates are InsightFace's, bit for bit
    groups = group_faces(faces.templates, faces.medias)
    mine = pool_templates(features, faces.faceness, groups, mode, True)[np.searchsorted(groups.templates, chosen)]
    identical = bool(np.array_equal(mine, pooled))
    ours_s = statistics.median(ours)
    theirs_s = {k: statistics.median(v) for k, v in theirs.items()}
    total_theirs = sum(theirs_s.values())
    summary = {
        "faces": len(faces), "dim": args.dim, "templates": len(unique_templates), "pairs": len(meta.pairs),
        "ours_seconds": ours_s, "ours_rounds": ours, "ours_steps_last_round": result.seconds,
        "peak_rss_gb": max(peak), "peak_above_inputs_gb": max(p - b for p, b in zip(peak, base)),
        "inputs_rss_gb": statistics.median(base),
        "theirs_seconds_scaled": theirs_s, "theirs_total_seconds_scaled": total_theirs,
        "ratio": total_theirs / ours_s, "pooling_bit_identical": identical,
        "theirs_templates_timed": len(chosen), "theirs_probes_timed": min(args.theirs_probes, len(np.unique(meta.probes.templates))),
        "load_average": [load_start, os.getloadavg()],
    }
    print(f"\nours: {ours_s:.1f} s for everything (1:1 + 1:N), peak RSS {max(peak):.2f} GB "
          f"({summary['peak_above_inputs_gb']:.2f} GB above the {summary['inputs_rss_gb']:.2f} GB of inputs)")
    print(f"InsightFace's steps, scaled from subsets: pooling (twice) {theirs_s['pool']:.0f} s, pairs "
          f"{theirs_s['pairs']:.1f} s, ROC {theirs_s['roc']:.1f} s, 1:N {theirs_s['identification']:.0f} s: "
          f"{total_theirs:.0f} s in all, {total_theirs / ours_s:.0f}x ours")
    print(f"pooled templates bit-identical to InsightFace's loop: {identical}")
    if args.with_files:
        from fresnet.eval.ijb.layout import read_meta
        from fresnet.eval.ijb.synthetic import write_meta

        with tempfile.TemporaryDirectory(prefix="bench_ijb_") as tmp:
            start = time.perf_counter()
            write_meta(ijb, tmp)
            written = time.perf_counter() - start
            start = time.perf_counter()
            read_meta(tmp)
            summary["read_meta_seconds"] = time.perf_counter() - start
        print(f"reading the meta files (written in {written:.0f} s): {summary['read_meta_seconds']:.1f} s")
    return summary


# --------------------------------------------------------------------------------------------------
# extraction benchmark


def bench_extraction(args) -> dict:
    import torch

    from fresnet.eval.ijb.extract import LooseCropBatches, aligned_faces, embed_faces, extract_features
    from fresnet.eval.ijb.layout import read_meta
    from fresnet.interop.model_loader import load_any

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; use --device cpu", file=sys.stderr)
        return {}
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    with tempfile.TemporaryDirectory(prefix="bench_ijb_") as tmp:
        t = time.perf_counter()
        write_synthetic_ijb(tmp, args.faces, seed=0, workers=max(1, os.cpu_count() or 1),
                            distinct_pictures=args.distinct)
        meta = read_meta(tmp)
        sizes = [os.path.getsize(Path(tmp) / "loose_crop" / n) for n in meta.faces.names[:200]]
        print(f"wrote {args.faces} pictures ({args.distinct} distinct, mean {np.mean(sizes) / 1e3:.1f} kB) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        align_on_worker = device.type != "cuda"

        # the CPU side alone: decode + transform (+ warp when the model is on CPU) in the workers
        dataset = LooseCropBatches(meta.paths, meta.faces, args.batch_size, align=align_on_worker)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                             prefetch_factor=4 if workers else None)
        iterator = iter(loader)
        next(iterator)
        start, count = time.perf_counter(), 0
        for batch in iterator:
            count += batch["count"]
        cpu_rate = count / (time.perf_counter() - start)
        print(f"CPU side ({workers} workers, {'decode + align' if align_on_worker else 'decode + transform'}): "
              f"{cpu_rate:,.0f} faces/s", flush=True)

        embedder = load_any(args.model, device=str(device), fast=args.fast)
        # the model (and the GPU warp) alone, on one batch held on the device
        sample = next(iter(torch.utils.data.DataLoader(dataset, batch_size=None)))
        faces = aligned_faces(sample, device)
        for _ in range(3 if device.type == "cuda" else 1):  # cuDNN autotuning, the fast path's calibration
            embed_faces(embedder, faces, True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, reps = time.perf_counter(), 0
        while reps < 2 or (reps * len(faces) < 4096 and time.perf_counter() - start < 10):
            embed_faces(embedder, aligned_faces(sample, device) if not align_on_worker else faces, True)
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_rate = reps * len(faces) / (time.perf_counter() - start)
        print(f"model {args.model}{' --fast' if args.fast else ''} on {device} (face + mirror"
              f"{', GPU warp' if not align_on_worker else ''}): {model_rate:,.0f} faces/s", flush=True)

        marks = []
        start = time.perf_counter()
        extract_features(embedder, meta.paths, meta.faces, Path(tmp) / "features.npy", model=args.model,
                         batch_size=args.batch_size, workers=workers,
                         progress=lambda n: marks.append((time.perf_counter(), n)))
        total = time.perf_counter() - start
        skip = max(0, min(2, len(marks) - 2))  # steady state: after the first batches (worker start, autotuning)
        steady = sum(n for _, n in marks[skip + 1:]) / (marks[-1][0] - marks[skip][0]) if len(marks) > skip + 1 else float("nan")
        print(f"extraction: {args.faces} faces in {total:.1f} s = {args.faces / total:,.0f} faces/s overall, "
              f"{steady:,.0f} faces/s after the first {skip} batches", flush=True)
        return {"faces": args.faces, "distinct_pictures": args.distinct, "mean_jpeg_kb": float(np.mean(sizes) / 1e3),
                "model": args.model, "fast": args.fast, "device": str(device), "batch_size": args.batch_size,
                "workers": workers, "cpu_side_faces_per_s": cpu_rate, "model_faces_per_s": model_rate,
                "extraction_faces_per_s": args.faces / total, "extraction_steady_faces_per_s": steady,
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=None, help="faces (scoring default 469375; extraction 30000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size for scoring (default 512)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of ours and theirs (default 2)")
    parser.add_argument("--theirs-templates", type=int, default=600, help="templates InsightFace's pooling is timed on")
    parser.add_argument("--theirs-probes", type=int, default=1500, help="probes ijb_1n.py's evaluation is timed on")
    parser.add_argument("--with-files", action="store_true", help="also write the meta files and time reading them")
    parser.add_argument("--extract", action="store_true", help="benchmark feature extraction instead")
    parser.add_argument("--device", default="cpu", help="extraction device (cpu or cuda)")
    parser.add_argument("--model", default="r100", help="extraction model (a preset: random weights; default r100)")
    parser.add_argument("--fast", action="store_true", help="run the model through fresnet's fast path")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: all cores but one)")
    parser.add_argument("--distinct", type=int, default=3000, help="distinct pictures rendered for --extract")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    if args.faces is None:
        args.faces = 30000 if args.extract else 469375
    summary = bench_extraction(args) if args.extract else bench_scoring(args)
    if args.json and summary:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
