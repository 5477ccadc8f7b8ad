"""Every margin loss trains under a real ``torchrun --nproc-per-node 2`` (gloo, CPU) with Partial FC
(sample_rate 0.5) through the trainer ``fresnet train`` runs, and a run resumed from its step-2
checkpoint ends bit-exactly where the uninterrupted run ends: backbone, class centres, momentum, the
loss's own state (learned bias, EMA buffers), every rank's random stream and the logged losses.

One launch for all the losses: the worker (tests/torchrun_losses_worker.py) joins one process group
and loops over them (about 35 s on 2 cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fresnet.train.losses import MARGIN_LOSSES
from test_train_ddp import _free_port

WORKER = Path(__file__).with_name("torchrun_losses_worker.py")


@pytest.mark.slow
def test_every_loss_trains_under_torchrun_and_resumes_bit_exactly(tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-W", "ignore::FutureWarning", "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    report_path = tmp_path / "report.json"
    assert report_path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["world_size"] == 2
    failures = {loss: problems for loss, problems in report["losses"].items() if problems}
    assert not failures, json.dumps(failures, indent=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(report["losses"]) == list(MARGIN_LOSSES)  # every loss ran
