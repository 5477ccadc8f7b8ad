"""Progress that reaches a log: off a terminal, a plain line every tenth of the work or 30 s, with
the speed and ETA; the clock is faked, nothing sleeps."""
from __future__ import annotations

import io

import pytest

from fresnet.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_line_at_every_tenth_with_speed_and_eta():
    clock, out = FakeClock(), io.StringIO()  # a StringIO is not a terminal
    progress = Progress("pack", 100, unit="images", stream=out, clock=clock)
    assert progress.plain and progress.bar is None
    for _ in range(100):
        clock.now += 0.5
        progress.advance()
    progress.close()
    printed = lines(out)
    assert len(printed) == 10  # 10%, 20%, ... 100%; close() adds nothing when the last line is current
    assert printed[2] == "pack: 30/100 images (30%), 2.0 images/s, elapsed 0:15, ETA 0:35"
    assert printed[-1] == "pack: 100/100 images (100%), 2.0 images/s, elapsed 0:50"


def test_slow_work_prints_every_30_seconds_between_tenths():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("embedding", 1000, unit="images", stream=out, clock=clock)
    for _ in range(20):
        clock.now += 4.0  # a tenth (100 images) would take 400 s
        progress.advance()
    printed = lines(out)
    assert [line.split(":")[1].split()[0] for line in printed] == ["8/1,000", "16/1,000"]  # at 32 s and 64 s
    assert printed[0] == "embedding: 8/1,000 images (1%), 0.2 images/s, elapsed 0:32, ETA 1:06:08"
    progress.close()
    assert lines(out)[-1].startswith("embedding: 20/1,000 images (2%)")  # the last state, at the end


def test_unknown_total_and_a_caller_given_speed():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("embedding lfw", None, unit="images", stream=out, clock=clock)
    for _ in range(3):
        clock.now += 20.0
        progress.advance(64)
    progress.close()
    assert lines(out) == ["embedding lfw: 128 images, 3.2 images/s, elapsed 0:40",
                          "embedding lfw: 192 images, 3.2 images/s, elapsed 1:00"]

    out = io.StringIO()
    progress = Progress("train", 10, unit="steps", rate_unit="samples", start=4, stream=out, clock=clock)
    clock.now += 3.0
    progress.update(5, note="loss 2.5000", rate=123.4)
    clock.now += 3.0
    progress.update(6)
    assert lines(out) == ["train: 5/10 steps (50%), 123.4 samples/s, loss 2.5000, elapsed 0:03, ETA 0:15",
                          "train: 6/10 steps (60%), 123.4 samples/s, loss 2.5000, elapsed 0:06, ETA 0:12"]


def test_training_progress_lines_carry_samples_per_second_loss_and_lr():
    from fresnet.train.callbacks import RunLog

    clock, out = FakeClock(), io.StringIO()
    progress = Progress("train", 50, unit="steps", rate_unit="samples", stream=out, clock=clock)
    run_log = RunLog(None, [], None, every=10, progress=progress)
    for step in range(1, 51):
        clock.now += 0.25
        run_log.show(step, speed=256.0, loss=5.0 / step, lr=0.1)
        if step == 25:
            progress.print("step 25: synthetic 0.9000")
    run_log.close()
    printed = lines(out)
    assert len(printed) == 11
    assert printed[0] == "train: 5/50 steps (10%), 256.0 samples/s, loss 1.0000  lr 1.00e-01, elapsed 0:01, ETA 0:11"
    assert printed[5] == "step 25: synthetic 0.9000"
    assert printed[-1].startswith("train: 50/50 steps (100%), 256.0 samples/s, loss 0.1000")


def test_disabled_shows_only_messages_and_a_terminal_gets_the_bar():
    out = io.StringIO()
    with Progress("train", 10, enabled=False, stream=out) as progress:
        progress.update(10)
        progress.print("a message")
    assert out.getvalue() == "a message\n"

    bar = Progress("train", 10, stream=io.StringIO(), terminal=True)
    try:
        assert bar.bar is not None and not bar.plain
        bar.update(5)
    finally:
        bar.close()


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (75, "1:15"), (3725, "1:02:05"), (float("nan"), "?"),
                                           (None, "?")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_pack_command_prints_plain_progress_lines_into_a_log(tmp_path, capsys):
    from PIL import Image

    from fresnet.cli import main

    for person in ("a", "b"):
        (tmp_path / "faces" / person).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(tmp_path / "faces" / person / f"{i}.jpg")
    assert main(["pack", str(tmp_path / "faces"), str(tmp_path / "out" / "train")]) == 0
    printed = capsys.readouterr().out.splitlines()  # captured: not a terminal
    progress = [line for line in printed if line.startswith("packing: ")]
    assert [line.split(",")[0] for line in progress] == [f"packing: {n}/10 images ({10 * n}%)" for n in range(1, 11)]
    assert "images/s" in progress[0] and "ETA" in progress[0] and "ETA" not in progress[-1]


def test_a_resumed_job_counts_its_speed_from_the_resume():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("extracting features", 100, unit="faces", stream=out, clock=clock)
    clock.now += 500.0  # opening the release, finding 40 faces already extracted
    progress.begin(40)
    for _ in range(10):
        clock.now += 1.0
        progress.advance()
    assert lines(out) == ["extracting features: 50/100 faces (50%), 1.0 faces/s, elapsed 0:10, ETA 0:50"]
