"""Running the demo: prepare the report folder, run each stage as a timed step, write the report.

A step that fails stops the demo with :class:`~fresnet.demo.state.DemoFailed` after writing a partial
report; an optional step (a picture) that fails is recorded as skipped and the demo goes on.
"""
from __future__ import annotations

import shutil
import time
import traceback
from typing import Callable, Optional

from fresnet.demo import machine, stages
from fresnet.demo.report import write_report
from fresnet.demo.state import (
    DATA_DIR,
    MARKER,
    TRAIN_DIR,
    DemoFailed,
    DemoOptions,
    DemoResult,
    DemoState,
    StepRecord,
)
from fresnet.errors import FresnetError


def run_demo(options: DemoOptions, console=None) -> DemoResult:
    """Run the demo; raises :class:`DemoFailed` when a required step fails (a partial report is written)."""
    from rich.console import Console

    # soft_wrap: in a log (no terminal, rich assumes 80 columns) a long line stays one line
    state = DemoState(options, console or Console(soft_wrap=True), time.perf_counter())
    prepare_folder(state)
    state.results["machine"] = machine.describe()
    write_report(state)  # marks the folder as a demo report at once, so an interrupted run can be redone
    o = state.options
    state.console.print(f"fresnet demo -> {state.out}/ (config {o.config}{', quick' if o.quick else ''})")
    # (title, stage, optional); the stages are looked up on each run, so a test can replace one
    steps = (
        ("configuration", stages.configure, False),
        ("data: synthetic identities -> RecordIO + held-out .bin", stages.make_data, False),
        ("data: picture of sample identities", stages.sample_picture, True),
        ("photos in, faces out: MTCNN on a real photograph", stages.photo_faces, True),
        ("model: summary", stages.summary, False),
        ("model: network graph", stages.network_plot, True),
        ("evaluate the untrained network (random weights)", stages.eval_untrained, False),
        ("training length for this machine", stages.plan_training, False),
        ("train", stages.train, False),
        ("training curves", stages.training_plot, True),
        ("evaluate the trained network", stages.eval_trained, False),
        ("ROC and distance plots", stages.roc_plots, True),
        ("export ONNX and check parity", stages.export, False),
    )
    for title, stage, optional in steps:
        run_step(state, title, stage, optional)
    total = time.perf_counter() - state.start
    state.results["machine"]["load_average_end"] = machine.load_average()
    report = write_report(state, total=total)
    return DemoResult(state.out, state.results["trained"]["accuracy"], state.results["untrained"]["accuracy"],
                      state.records, total, report)


def prepare_folder(state: DemoState) -> None:
    out = state.out
    if out.exists() and not out.is_dir():
        raise FresnetError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists() and not state.options.force:
            raise FresnetError(
                f"{out} is not empty and holds no previous demo report; choose another --out or pass --force"
            )
        for name in (DATA_DIR, TRAIN_DIR):  # our own sub-folders from a previous run
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def run_step(state: DemoState, title: str, stage: Callable[[DemoState], Optional[str]], optional: bool = False) -> None:
    """Run one stage, timed, and record it; a failure of a required stage ends the demo."""
    index = len(state.records) + 1
    state.console.print(f"[bold cyan][{index}] {title}[/]")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        note = stage(state) or ""
    except Exception as exc:  # noqa: BLE001 -- every failure is recorded, required ones re-raised
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if optional:
            state.records.append(StepRecord(title, "skipped", seconds, reason, cpu))
            state.console.print(f"    [yellow]skipped[/] after {seconds:.1f} s: {reason}")
            return
        state.records.append(StepRecord(title, "failed", seconds, reason, cpu))
        state.console.print(f"    [red]failed[/] after {seconds:.1f} s: {reason}")
        write_report(state, failed=traceback.format_exc())
        raise DemoFailed(f"demo step '{title}' failed: {reason} (partial report in {state.out})") from exc
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    state.records.append(StepRecord(title, "ok", seconds, note, cpu))
    state.console.print(f"    done in {seconds:.1f} s (CPU {cpu:.1f} s)" + (f": {note}" if note else ""))
