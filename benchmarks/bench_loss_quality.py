"""Every margin loss side by side: the same synthetic-r18 run (network, data, seed, schedule, steps) with
each ``build_margin`` loss at its authors' defaults, then held-out verification accuracy and TAR@FAR=1e-3.

    python benchmarks/bench_loss_quality.py                                   # all 15 losses
    python benchmarks/bench_loss_quality.py 'net={filter_list: [8, 8, 16, 32, 64], emb_size: 64}'  # the docs' table
    python benchmarks/bench_loss_quality.py --losses arcface,adaface --steps 300 --csv loss_quality.csv
    python benchmarks/bench_loss_quality.py --losses cosface loss_options='{s: 32}'   # any config key=value

Each loss trains ``--steps`` steps of the ``--config`` run (default ``synthetic-r18``: the narrow r18 on
400 synthetic identities, batch 64, poly schedule over the run, lr 0.1, seed 0) with ``loss=NAME`` and no
loss options, so every loss gets its authors' s and margins (the config's ``loss_s: 32``, tuned for
CosFace on this small problem, is dropped). The verification pairs are rendered once from the 100
held-out identities (``--pairs``, default 4,000: 2,000 negative pairs, so FAR 1e-3 allows 2 false
accepts) and scored the way training's ``val_targets`` are (image + mirror embeddings summed,
InsightFace's 10-fold accuracy, TAR read from the pooled ROC). A loss that turns NaN/Inf is reported
as diverged (step and message), not left out. Writes one CSV row per loss as soon as it finishes
(``--csv``) and prints the table (Markdown). A tiny budget on synthetic faces ranks losses only
roughly: state the budget and the machine's load when quoting the numbers.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: F401  (puts src/ on the path for a fresh clone)

FAR = 1e-3
COLUMNS = ["loss", "status", "steps", "final_loss", "train_s", "accuracy", "accuracy_std", "tar_at_far_1e-3",
           "tar_at_far_1e-2", "num_pairs", "note"]


def _config(args, name: str):
    from fresnet.network.config import parse_value
    from fresnet.train.config import load_config

    overrides = {"output": str(Path(args.out) / name), "overwrite": True, "loss": name, "loss_s": None,
                 "max_steps": args.steps, "val_targets": [], "checkpoint_every": 0, "progress": False}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_value(value.strip())
    return load_config(args.config, overrides)


def _pairs(cfg, input_size, num_pairs: int):
    from fresnet.train.data import verification_sets

    cfg.val_targets, cfg.val_pairs = ["synthetic"], num_pairs
    try:
        return verification_sets(cfg, input_size)["synthetic"]
    finally:
        cfg.val_targets = []


def _score(model, device, images, issame, batch_size: int):
    from fresnet.eval.embed import embed_images
    from fresnet.eval.verification import verify
    from fresnet.interop.model_loader import TorchEmbedder

    embedder = TorchEmbedder(model, "training", "fresnet", device=device)
    embeddings = embed_images(embedder, images, batch_size=batch_size, flip=True)
    return verify(embeddings, issame, nfolds=10, far_targets=(1e-2, FAR))


def run_one(args, name: str, pairs_cache: dict) -> dict:
    from fresnet.train.loop import Trainer, TrainingDiverged

    cfg = _config(args, name)
    trainer = Trainer(cfg)
    if "pairs" not in pairs_cache:
        pairs_cache["pairs"] = _pairs(cfg, trainer.parts.net_config.input_size, args.pairs)
    images, issame = pairs_cache["pairs"]
    row = {"loss": name, "steps": cfg.max_steps, "num_pairs": len(issame), "note": ""}
    start = time.perf_counter()
    try:
        result = trainer.fit()
        row.update(status="ok", final_loss=f"{result.final_loss:.4f}")
    except TrainingDiverged as exc:
        row.update(status="diverged", final_loss="nan", note=str(exc).split(";")[0])
    row["train_s"] = f"{time.perf_counter() - start:.1f}"
    if row["status"] == "ok":
        res = _score(trainer.model, trainer.device, images, issame, cfg.val_batch_size)
        tar3, tar2 = res.tar_at_far.get(FAR), res.tar_at_far.get(1e-2)
        row.update(accuracy=f"{res.accuracy:.4f}", accuracy_std=f"{res.accuracy_std:.4f}",
                   **{"tar_at_far_1e-3": "" if tar3 is None else f"{tar3:.4f}",
                      "tar_at_far_1e-2": "" if tar2 is None else f"{tar2:.4f}"})
        if res.notes:
            row["note"] = "; ".join(res.notes)
    return row


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def print_markdown(rows: list[dict]) -> None:
    print("| loss | verification accuracy (10-fold) | TAR@FAR=1e-3 | TAR@FAR=1e-2 | final train loss | status |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        acc = f"{r['accuracy']} ± {r['accuracy_std']}" if r.get("accuracy") else "-"
        status = r["status"] + (f" ({r['note']})" if r["status"] != "ok" and r.get("note") else "")
        print(f"| `{r['loss']}` | {acc} | {r.get('tar_at_far_1e-3') or '-'} | {r.get('tar_at_far_1e-2') or '-'} | "
              f"{r['final_loss']} | {status} |")


def main(argv=None) -> int:
    from fresnet.train.losses import MARGIN_LOSSES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default=",".join(MARGIN_LOSSES),
                        help="comma-separated build_margin names (default: all %(default)s)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per loss (default %(default)s)")
    parser.add_argument("--pairs", type=int, default=4000, help="held-out verification pairs (default %(default)s)")
    parser.add_argument("--config", default="synthetic-r18")
    parser.add_argument("--out", default="runs/bench-loss-quality", help="one run folder per loss under here")
    parser.add_argument("--csv", default=None, help="write the table here (default OUT/loss_quality.csv)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config keys applied to every run")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.losses.split(",") if n.strip()]
    unknown = [n for n in names if n not in MARGIN_LOSSES]
    if unknown:
        parser.error(f"unknown loss {', '.join(unknown)}; choose from {', '.join(MARGIN_LOSSES)}")
    csv_path = Path(args.csv or Path(args.out) / "loss_quality.csv")
    rows, cache = [], {}
    for name in names:
        row = run_one(args, name, cache)
        rows.append(row)
        _write(csv_path, rows)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{name}: {row['status']}, acc {row.get('accuracy', '-')}, TAR@FAR=1e-3 "
              f"{row.get('tar_at_far_1e-3', '-')}, {row['train_s']} s training (load {load:.1f})", flush=True)
    print(f"\n{args.config}, {args.steps} steps per loss, {args.threads} threads, {os.cpu_count()} cores; "
          f"{rows[0]['num_pairs'] if rows else 0} held-out pairs; CSV {csv_path}\n")
    print_markdown(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
