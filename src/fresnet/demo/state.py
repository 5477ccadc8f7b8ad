"""What the demo's stages share: the options, the report folder's layout, and the state one run builds."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fresnet.errors import FresnetError
from fresnet.timing import Timing

MARKER = "results.json"  # a folder holding this is a previous demo report and may be overwritten
DATA_DIR, TRAIN_DIR = "data", "train"
BIN_NAME = "holdout.bin"

# --quick: a smoke run in well under a minute (tests, CI); the numbers mean nothing
QUICK_OVERRIDES = {
    "synthetic": {"num_identities": 16, "images_per_identity": 6, "holdout_identities": 8},
    "net": {"units": [1, 1, 1, 1]},
    "max_steps": 8,
    "batch_size": 32,
    "warmup_steps": 2,
    "verbose": 0,
    "checkpoint_every": 0,
    "log_every": 1,
}
QUICK_PAIRS = 40


class DemoFailed(FresnetError):
    """A required step failed; the report written so far says which and why."""


@dataclass
class DemoOptions:
    out: Path = Path("report")
    config: str = "synthetic-r18"
    max_steps: Optional[int] = None
    quick: bool = False
    force: bool = False
    pairs: Optional[int] = None
    batch_size: int = 128  # evaluation batch size
    progress: bool = True
    # seconds of training steps (fresnet.demo.budget); None: the default budget, 0: the config's max_steps
    train_budget: Optional[float] = None


@dataclass
class StepRecord:
    title: str
    status: str  # ok | skipped | failed
    seconds: float  # wall time
    note: str = ""
    cpu_seconds: float = 0.0  # CPU time of the process, all threads: the work, whatever else runs


@dataclass
class DemoResult:
    out: Path
    accuracy: float
    untrained_accuracy: float
    steps: list[StepRecord]
    seconds: float
    report: Path


@dataclass
class DemoState:
    """One run. Each stage leaves what it made here for the later stages and the report: ``results``
    becomes ``results.json``, ``doc_parts`` names the pictures that were drawn."""

    options: DemoOptions
    console: Any
    start: Timing  # the whole demo's stopwatch
    records: list[StepRecord] = field(default_factory=list)
    doc_parts: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    # filled in by the stages, in the order they run
    cfg: Any = None  # the TrainConfig
    net_config: Any = None  # its NetConfig
    pairs: int = 0  # held-out verification pairs
    data_paths: Optional[dict[str, Path]] = None
    summary: Any = None
    untrained: Any = None  # evaluation of the untrained network
    train_result: Any = None
    trained_embedder: Any = None
    trained: Any = None  # evaluation of the trained network

    @property
    def out(self) -> Path:
        return Path(self.options.out)
