"""One ``torchrun`` rank of tests/test_losses_torchrun.py: every margin loss through the real trainer.

``torchrun --nproc-per-node 2 tests/torchrun_losses_worker.py OUT [LOSS ...]`` joins one gloo group
for all the losses (one launch, not one per loss), and for each loss trains the tiny network with
Partial FC (``sample_rate`` < 1) straight through, keeping a copy of the step-2 checkpoint and log,
then resumes that copy to the end. Rank 0 compares the two runs' final backbone, classifier,
momentum, loss state and logged losses bit for bit and writes ``OUT/report.json``:
``{loss: [mismatch, ...]}`` (an empty list is a pass) plus each run's logged losses.
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

TINY_NET = {"units": [1, 1, 1, 1], "filter_list": [8, 8, 16, 16, 32], "input_size": [16, 16], "emb_size": 32,
            "net_output": "FC"}
STEPS, SAVED_AT = 4, 2
# 20 classes per rank, 10 kept per step: more than the global batch (8) holds, so every step also draws
# random negatives and the resumed ranks must continue their own random streams exactly
CLASSES = 40


def config(output: Path, loss: str, **overrides) -> dict:
    cfg = {
        "network": "r18", "net": dict(TINY_NET), "loss": loss, "dataset": "synthetic",
        "synthetic": {"num_identities": CLASSES, "images_per_identity": 2, "holdout_identities": 4, "seed": 3},
        "output": str(output), "max_steps": STEPS, "batch_size": 4, "lr": 0.05, "log_every": 1,
        "progress": False, "seed": 5, "checkpoint_every": SAVED_AT, "val_targets": [], "sample_rate": 0.5,
        "device": "cpu",
    }
    cfg.update(overrides)
    return cfg


def logged_losses(folder: Path) -> list[tuple[int, str]]:
    """(step, loss as written) of every log row: the text, so the comparison is exact."""
    with open(folder / "log.csv", newline="") as handle:
        return [(int(row["step"]), row["loss"]) for row in csv.DictReader(handle)]


def compare(straight: Path, resumed: Path, loss: str) -> list[str]:
    import fresnet.train

    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    problems = []
    if (a["step"], b["step"]) != (STEPS, STEPS):
        problems.append(f"final steps {a['step']} and {b['step']}, expected {STEPS}")
    for part in ("model", "fc", "margin", "momentum"):
        left, right = a.get(part) or {}, b.get(part) or {}
        if left.keys() != right.keys():
            problems.append(f"{part}: keys {sorted(left)} != {sorted(right)}")
            continue
        for key in left:
            x, y = left[key], right[key]
            if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
                problems.append(f"{part}.{key} differs")
    for rank, (x, y) in enumerate(zip(a["rng"]["cpu"], b["rng"]["cpu"])):
        if not torch.equal(x, y):
            problems.append(f"rank {rank}'s random stream differs")
    log_a, log_b = logged_losses(straight), logged_losses(resumed)
    if log_a != log_b:
        problems.append(f"logged losses {log_a} != {log_b}")
    if len(log_a) != STEPS or len({v for _, v in log_a}) < 2:
        problems.append(f"the straight run did not log {STEPS} changing losses: {log_a}")
    fresh = fresnet.train.load_config(config(straight, loss)).margin(num_classes=CLASSES).state_dict()
    for key, value in fresh.items():  # the loss state is there and it trained
        if key not in a["margin"] or torch.equal(a["margin"][key], value.float()):
            problems.append(f"the loss state {key} did not move from its initial value")
    return problems


def main(out: Path, losses: list[str]) -> int:
    import fresnet.train
    from fresnet.train.losses import MARGIN_LOSSES

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # one group for every run: the trainer leaves a group it did not open
    rank = dist.get_rank()
    report: dict = {"losses": {}, "logs": {}, "world_size": dist.get_world_size()}
    for loss in losses or list(MARGIN_LOSSES):
        straight, resumed = out / loss / "straight", out / loss / "resumed"

        def keep_checkpoint(event, trainer, resumed=resumed):
            if event == "checkpoint" and trainer.step == SAVED_AT and trainer.info.is_main:
                resumed.mkdir(parents=True)
                shutil.copy(trainer.ckpt_path, resumed / "checkpoint.pt")
                shutil.copy(trainer.out / "log.csv", resumed / "log.csv")

        try:
            fresnet.train.run(config(straight, loss), callbacks=[keep_checkpoint])
            dist.barrier()
            fresnet.train.run(config(resumed, loss, resume=True))
            dist.barrier()
            if rank == 0:
                report["losses"][loss] = compare(straight, resumed, loss)
                report["logs"][loss] = logged_losses(straight)
        except Exception:  # one loss failing must not hide the others' results
            report["losses"][loss] = [f"rank {rank}: " + traceback.format_exc()[-2000:]]
            print(report["losses"][loss][0], file=sys.stderr)  # torchrun then stops the other rank
            if rank == 0:
                (out / "report.json").write_text(json.dumps(report, indent=1))
            return 1
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
