"""``fresnet demo --quick``: every step runs and lands in the report; failures are loud, optional ones not."""
from __future__ import annotations

import json
import re

import pytest

from fresnet.cli import main


def test_quick_demo_writes_the_whole_report(tmp_path, capsys, monkeypatch):
    # pretend graphviz's `dot` is missing: the graph is still drawn (matplotlib) and in the report
    import fresnet.inspection.viz

    monkeypatch.setattr(fresnet.inspection.viz.shutil, "which", lambda name: None)
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"accuracy: [01]\.\d{4}", printed[-1])
    # stdout is captured, not a terminal: the long steps print plain progress lines for a log
    assert "rendering: 96/96 images (100%)" in "\n".join(printed)
    assert any(re.match(r"train: 8/8 steps \(100%\), [\d,.]+ samples/s, loss \d+\.\d{4}  lr ", line) for line in printed)
    assert any(line.startswith("embedding (trained): 80/80 images (100%)") for line in printed)

    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "ok"
    assert all(step["status"] == "ok" for step in results["steps"])
    notes = {step["title"]: step["note"] for step in results["steps"]}
    assert notes["training length for this machine"] == "8 steps, fixed by --quick"
    assert float(printed[-1].split()[-1]) == pytest.approx(results["trained"]["accuracy"], abs=5e-5)
    assert results["trained"]["num_pairs"] == 40 and results["untrained"]["num_pairs"] == 40
    assert results["onnx"]["max_abs_diff"] < 1e-2 and results["onnx"]["accuracy_matches"]
    for name in ("data/train.rec", "data/train.idx", "data/property", "data/holdout.bin", "train/model.safetensors",
                 "model.onnx", "roc.png", "distances.png", "training.png", "samples.png", "network.svg", "faces.png",
                 "report.md", "report.html"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| CPU time |" in report and "Load average (1 min) at the start / end" in report
    assert results["machine"]["cpus"] >= 1 and all(step["cpu_seconds"] >= 0 for step in results["steps"])
    assert "![the network graph" in report and "drawn with matplotlib" in report
    assert "<svg" in (out / "network.svg").read_text() and not (out / "network.dot").exists()
    assert "![ROC" in report and "## 5. ONNX export" in report
    # photos in, faces out: MTCNN finds Grace Hopper's face in matplotlib's sample photo
    assert "## Photos in, faces out" in report and "![detection (box, landmarks, score)" in report
    assert results["photo_faces"]["faces"] == 1 and results["photo_faces"]["score"] > 0.99
    assert "<img src=\"roc.png\"" in (out / "report.html").read_text()

    # a second run into the same report folder replaces it; a foreign non-empty folder is refused
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", str(foreign)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_required_step_failure_fails_the_demo_optional_one_does_not(tmp_path, capsys, monkeypatch):
    import fresnet.train
    from fresnet.demo import stages

    def boom(*args, **kwargs):
        raise RuntimeError("simulated training crash")

    def no_picture(state):
        raise OSError("no fonts here")

    # skip the slow steps before training: this test is about what happens when training fails
    for name in ("make_data", "summary", "network_plot", "eval_untrained"):
        monkeypatch.setattr(stages, name, lambda state: None)
    monkeypatch.setattr(stages, "sample_picture", no_picture)
    monkeypatch.setattr(fresnet.train, "run", boom)
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 1
    assert "simulated training crash" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed"
    status = {step["title"]: (step["status"], step["note"]) for step in results["steps"]}
    assert status["train"] == ("failed", "RuntimeError: simulated training crash")
    assert status["data: picture of sample identities"] == ("skipped", "OSError: no fonts here")
    assert "The demo failed" in (out / "report.md").read_text()


def test_the_training_length_fits_a_time_budget_between_the_quality_floor_and_the_config():
    from fresnet.demo.budget import LOOP_OVERHEAD, plan_steps

    fast = plan_steps(50.0, 100.0, least=1000, most=1500)
    assert fast.steps == 1500 and fast.reason == "the config's 1500 steps fit the budget"
    slow = plan_steps(2.0, 100.0, least=1000, most=1500)  # a busy machine: slower, not worse
    assert slow.steps == 1000 and slow.reason == "173 steps fit the budget; raised to the quality floor of 1000"
    middle = plan_steps(13.8, 100.0, least=1000, most=1500)
    assert middle.steps == int(100 * 13.8 / LOOP_OVERHEAD) == 1200 and middle.reason == "1200 steps fit the budget"
    assert plan_steps(1.0, 100.0, least=1000, most=300).steps == 300  # a config shorter than the floor


def test_the_demo_measures_the_machine_and_rescales_the_run(tmp_path, monkeypatch):
    import torch
    from rich.console import Console

    from fresnet.demo import budget, stages
    from fresnet.demo.state import DemoOptions, DemoState

    state = DemoState(DemoOptions(out=tmp_path), Console(file=None), 0.0)
    stages.configure(state)
    assert (state.cfg.max_steps, state.cfg.verbose, state.cfg.checkpoint_every) == (1500, 250, 500)

    from fresnet.train import load_config

    tiny = load_config("synthetic-r18", {"net": {"units": [1, 1, 1, 1]}, "batch_size": 8})
    before = torch.get_rng_state()
    rate = budget.measure_steps_per_s(tiny, tiny.net_config(), num_classes=20, steps=1)
    assert rate > 0 and torch.equal(torch.get_rng_state(), before)  # training's random stream is untouched

    monkeypatch.setattr(budget, "measure_steps_per_s", lambda *args, **kwargs: 12.0)
    note = stages.plan_training(state)
    steps = int(100 * 12.0 / budget.LOOP_OVERHEAD)
    assert state.cfg.max_steps == steps and state.results["step_plan"]["steps"] == steps
    assert (state.cfg.verbose, state.cfg.checkpoint_every) == (250, 500)  # fewer verifications, not denser
    assert note.startswith("12.00 steps/s (768 samples/s) measured; 1043 steps")

    fixed = DemoState(DemoOptions(out=tmp_path, max_steps=300), Console(file=None), 0.0)
    stages.configure(fixed)
    assert stages.plan_training(fixed) == "300 steps, fixed by --max-steps" and fixed.cfg.max_steps == 300
