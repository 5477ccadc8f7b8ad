"""Gallery search speed: exact top-5 over 100,000 identities x 3 samples x 512-d (the issue's size),
one query at a time and in batches of 64, fp32 / fp16 / int8 scoring (top-1 agreement with fp32),
and FAISS HNSW beside it (recall@5 against the exact answers).

    python benchmarks/bench_gallery.py                       # the issue's size, 2 threads
    python benchmarks/bench_gallery.py --identities 20000 --no-hnsw --out gallery.json

The embeddings are synthetic but shaped like faces: each identity has a centre, its samples and
the queries are noisy copies of it (cosine to the centre about 0.6, as photos of one person), so
top-1 is meaningful. The gallery is a real SQLite file: enrolment and reopening are timed too.
Every variant is timed interleaved with the others (benchmarks/common.py), medians reported.
"""
from __future__ import annotations

import os

# as the fresnet command line does first thing (cli/process_settings.py): OpenMP threads spin only
# briefly before sleeping -- on a shared machine long spins take the cores the working threads need
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine_info, set_threads
from fresnet.gallery import screening
from fresnet.gallery.approximate import ApproximateSettings, recall_at_k
from fresnet.gallery.gallery import Gallery


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(identities: int, samples: int, dim: int, queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((identities, dim), dtype=np.float32))
    noise = 0.75 / np.sqrt(dim)  # cosine(sample, centre) ~ 0.8, between two samples ~ 0.6

    def around(rows: np.ndarray) -> np.ndarray:
        return unit(rows + rng.standard_normal(rows.shape, dtype=np.float32) * noise)

    truth = rng.integers(0, identities, queries)
    return centres, around, truth


def timed(call, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=3, help="samples per identity")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=256, help="queries for latency and agreement")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--hnsw", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--ef-sweep", default="64,256,1024", help="HNSW efSearch values measured on one build")
    parser.add_argument("--folder", help="where the gallery file goes (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="keep the gallery file a previous run left in --folder")
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    results: dict = {"machine": machine_info(), "size": vars(args).copy()}
    print(f"load average at start: {results['machine'].get('load_average_start')} on {results['machine']['cpu_count']} "
          "cores (other jobs share them)")
    centres, around, truth = synthetic(args.identities, args.samples, args.dim, args.queries)
    queries = around(centres[truth])
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench_gallery_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.db"
    if not (args.reuse and path.exists()):
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        with Gallery(path, embedding_size=args.dim) as gallery:
            chunk = 5000
            for first in range(0, args.identities, chunk):
                rows = range(first, min(args.identities, first + chunk))
                gallery.add_many((f"id{i}", around(np.repeat(centres[i:i + 1], args.samples, 0))) for i in rows)
        enrol = time.perf_counter() - start
        results["enrol"] = {"seconds": round(enrol, 2), "samples_per_s": round(args.identities * args.samples / enrol),
                            "file_mb": round(path.stat().st_size / 2**20, 1),
                            "transactions": -(-args.identities // 5000)}
        print(f"enrolled {args.identities:,} x {args.samples} samples in {enrol:.1f} s "
              f"({results['enrol']['samples_per_s']:,} samples/s), file {results['enrol']['file_mb']} MB")
    else:  # the same seed made the same data: only the queries are needed
        print(f"reusing {path}")

    galleries = {}
    for precision in args.precisions.split(","):
        start = time.perf_counter()
        galleries[precision] = Gallery(path, precision=precision)
        galleries[precision].search(queries[:1], k=args.k)  # builds the in-memory index
        print(f"open + index ({precision}): {time.perf_counter() - start:.1f} s")
    if args.hnsw:
        start = time.perf_counter()
        import faiss

        faiss.omp_set_num_threads(threads)
        settings = ApproximateSettings("hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                                       ef_search=args.ef_search)
        galleries["hnsw"] = Gallery(path, index="hnsw", approximate=settings)
        galleries["hnsw"].search(queries[:1], k=args.k)
        build = time.perf_counter() - start
        results["hnsw_build_seconds"] = round(build, 1)
        print(f"open + HNSW build (M={args.hnsw_m}, efConstruction={args.ef_construction}, "
              f"efSearch={args.ef_search}): {build:.1f} s")

    if "fp32" in galleries:  # the same gallery with fp16 screening of single queries switched off
        galleries["fp32-full"] = galleries["fp32"]

    def search(name, q):
        if name != "fp32-full":
            return galleries[name].search(q, k=args.k)
        kept, screening.MAX_SCREENED_QUERIES = screening.MAX_SCREENED_QUERIES, 0
        try:
            return galleries[name].search(q, k=args.k)
        finally:
            screening.MAX_SCREENED_QUERIES = kept

    single: dict[str, list[float]] = {name: [] for name in galleries}
    batch: dict[str, list[float]] = {name: [] for name in galleries}
    batches = [queries[i:i + args.batch] for i in range(0, len(queries) - args.batch + 1, args.batch)]
    for round_ in range(args.rounds):
        names = list(galleries)
        names = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in names:
            picks = queries[(round_ * 8) % len(queries):][:8]
            single[name] += [timed(lambda name=name, q=q: search(name, q), 1)[0] for q in picks]
            chosen = batches[round_ % len(batches)]
            batch[name] += timed(lambda name=name, b=chosen: search(name, b), 1)

    import torch

    reference = torch.randn(args.identities * args.samples, args.dim)
    reads = timed(lambda: reference.sum(), 5)
    read_ms = statistics.median(reads) * 1e3
    results["read_all_samples_ms"] = round(read_ms, 1)
    print(f"reading {reference.numel() * 4 / 2**20:.0f} MB once (the fp32 samples' size) takes {read_ms:.1f} ms "
          f"here ({reference.numel() * 4 / read_ms / 1e6:.1f} GB/s): the floor of one exact fp32 query")
    reference = None  # free it before the searches
    answers = {name: search(name, queries) for name in galleries}  # batches: the full product
    exact = answers.get("fp32", None)
    if exact is not None:  # single queries go through the screening: they must give the same answers
        singles = [search("fp32", q)[0] for q in queries[:64]]
        same = [[(m.name, m.sample) for m in a] == [(m.name, m.sample) for m in b] for a, b in zip(singles, exact)]
        drift = max(abs(x.score - y.score) for a, b in zip(singles, exact) for x, y in zip(a, b))
        results["screened_singles_equal_full_fp32"] = {"queries": len(singles), "equal": int(sum(same)),
                                                       "largest_score_difference": drift}
        print(f"screened single queries equal to the full fp32 product: {sum(same)} of {len(singles)} "
              f"(largest score difference {drift:.2g})")
    table = {}
    for name in galleries:
        one = statistics.median(single[name])
        many = statistics.median(batch[name]) / args.batch
        row = {"single_ms": round(one * 1e3, 2), "single_qps": round(1 / one, 1), "batch_ms_per_query":
               round(many * 1e3, 3), "batch_qps": round(1 / many, 1),
               "top1_correct": round(float(np.mean([r[0].name == f"id{t}" for r, t in zip(answers[name], truth)])), 4)}
        if exact is not None and name != "fp32":
            row["top1_agreement_with_fp32"] = round(float(np.mean(
                [a[0].name == b[0].name for a, b in zip(answers[name], exact)])), 4)
            row[f"recall_at_{args.k}"] = round(recall_at_k([[m.name for m in r] for r in answers[name]],
                                                           [[m.name for m in r] for r in exact]), 4)
        table[name] = row
    results["search"] = table
    print(f"\n{args.identities:,} identities x {args.samples} samples x {args.dim}-d, top-{args.k}, "
          f"{threads} threads")
    print(f"{'index':8} {'single ms':>10} {'single q/s':>11} {'batch ms/q':>11} {'batch q/s':>10} "
          f"{'top1 ok':>8} {'top1=fp32':>10} {'recall@k':>9}")
    for name, row in table.items():
        print(f"{name:8} {row['single_ms']:>10} {row['single_qps']:>11} {row['batch_ms_per_query']:>11} "
              f"{row['batch_qps']:>10} {row['top1_correct']:>8} {row.get('top1_agreement_with_fp32', '-'):>10} "
              f"{row.get(f'recall_at_{args.k}', '-'):>9}")
    if "hnsw" in galleries and exact is not None:
        sweep = {}
        for ef in [int(v) for v in args.ef_sweep.split(",") if v]:
            g = galleries["hnsw"]
            g.tune(ef_search=ef)
            found = g.search(queries, k=args.k)
            one = statistics.median([timed(lambda g=g, q=q: g.search(q, k=args.k), 1)[0] for q in queries[:16]])
            many = statistics.median(timed(lambda g=g: g.search(batches[0], k=args.k), 3)) / args.batch
            sweep[ef] = {"single_ms": round(one * 1e3, 2), "batch_ms_per_query": round(many * 1e3, 3),
                         "top1_agreement_with_fp32": round(float(np.mean(
                             [a[0].name == b[0].name for a, b in zip(found, exact)])), 4),
                         f"recall_at_{args.k}": round(recall_at_k([[m.name for m in r] for r in found],
                                                                  [[m.name for m in r] for r in exact]), 4)}
            print(f"HNSW efSearch={ef}: {json.dumps(sweep[ef])}")
        results["hnsw_ef_sweep"] = sweep
    for g in galleries.values():
        g.close()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
