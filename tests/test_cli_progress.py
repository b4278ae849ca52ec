"""Issue 14, point 3 (and issue 16): progress that shows in a log while a run goes on.

Not a terminal: plain lines at a steady pace (done/total, rate, ETA, failures so far), each
failure on its own unwrapped line as it happens. A terminal: a bar with the rate, failures
printed above it as they happen.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console

from clipseg_cli.cli.progress import Progress, TaskState, format_duration, format_rate
from clipseg_cli.cli.training_bar import TrainingReporter
from tests.conftest import make_image, write_labels


def _log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=80, highlight=False, soft_wrap=True), buffer


def test_a_plain_line_reads_as_the_issue_asks() -> None:
    state = TaskState("labelling", total=10582, unit="images", count_failures=True, started=100.0)
    state.completed, state.failed = 120, 1
    # 120 images in 37.5 s: 3.2 images/s; 10462 left: 3269.4 s = 54 min 29 s.
    assert state.line(now=137.5) == "labelling 120/10582 (1.1%) 3.2 images/s ETA 54m29s failed 1"
    state.completed, state.finished = 10582, True
    assert state.line(now=100.0 + 3600 + 125) == "labelling 10582/10582 (100.0%) 2.8 images/s in 1h02m failed 1"
    unknown = TaskState("predicting", total=None, unit="images", count_failures=False, started=0.0)
    assert unknown.line(now=5.0) == "predicting 0"


def test_durations_and_rates() -> None:
    assert [format_duration(s) for s in (0, 59, 60, 3599, 3600, 86400 + 7200)] == ["0s", "59s", "1m00s", "59m59s", "1h00m", "1d02h"]
    assert [format_rate(r) for r in (0.254, 3.24, 41.6)] == ["0.25", "3.2", "42"]


def test_plain_lines_come_at_a_steady_pace_while_the_work_goes_on() -> None:
    """Lines appear while nothing advances (a slow image), not only at the end."""
    console, buffer = _log_console()
    with Progress(console=console, plain=True, interval=0.02) as progress:
        task = progress.add("labelling", total=4, count_failures=True)
        task.advance()
        deadline = time.monotonic() + 30
        while buffer.getvalue().count("labelling 1/4") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        ticks = buffer.getvalue().count("labelling 1/4")
        task.advance(3)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "labelling 0/4 (0.0%) failed 0"  # at the start
    assert ticks >= 3  # repeated while the task stood still
    assert lines[-1].startswith("labelling 4/4 (100.0%)") and " in " in lines[-1]  # the final line


def test_echo_lines_are_never_wrapped() -> None:
    console, buffer = _log_console()
    long = "failed " + "a-very-long-folder-name/" * 6 + "image.jpg: ImageError: cannot identify image file"
    assert len(long) > 80
    with Progress(console=console, plain=True, interval=60) as progress:
        progress.echo(long)
    assert long in buffer.getvalue().splitlines()


def test_terminal_bar_shows_rate_and_failures_above_it() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, highlight=False)
    with Progress(console=console) as progress:
        assert not progress.plain
        task = progress.add("labelling", total=2, count_failures=True)
        task.advance()
        progress.echo("failed b.png: broken")
        task.advance(failed=True)
    text = buffer.getvalue()
    assert "failed b.png: broken" in text and "2/2" in text and "failed 1" in text


def test_training_progress_in_a_log() -> None:
    console, buffer = _log_console()
    with Progress(console=console, plain=True, interval=60) as progress:
        reporter = TrainingReporter(progress)
        reporter.message("dalnet on cpu: 3 labelled images")
        reporter.start(0, 10)
        reporter.step(5, 0.5, 1e-3, 2.0)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "dalnet on cpu: 3 labelled images"
    assert lines[1] == "training 0/10 (0.0%) loss - lr -"
    assert lines[-1].startswith("training 5/10 (50.0%) 2.0 it/s in ") and lines[-1].endswith("loss 0.5000 lr 1.00e-03")


def test_a_run_logs_progress_and_each_failure_as_it_happens(tmp_path: Path, cli, golden_weights: Path, monkeypatch) -> None:
    """stderr is not a terminal here (as under nohup or SLURM)."""
    monkeypatch.setenv("WSSS_LABEL_PROGRESS_SECONDS", "0.05")
    images = tmp_path / "images"
    make_image(images / "a.png", (40, 40))
    bad = "broken-" + "x" * 90 + ".jpg"
    (images / bad).write_bytes(b"\xff\xd8 not a jpeg")
    make_image(images / "c.png", (40, 40), seed=2)
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"], bad: ["dog"], "c.png": ["cat"], "gone.png": ["cat"]})
    result = cli(images, "--labels", labels, "--out", tmp_path / "out", "--weights", golden_weights, "--workers", "0")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("loading the model (weights.pt)")
    failed = [i for i, line in enumerate(lines) if line.startswith("failed ")]
    assert [lines[i].split(":")[0] for i in failed] == ["failed gone.png", f"failed {bad}"]  # one line each, whole
    done = next(i for i, line in enumerate(lines) if line.startswith("done:"))
    final = max(i for i, line in enumerate(lines) if line.startswith("labelling 3/3 (100.0%)"))
    assert failed[-1] < final < done  # printed while the run went on, not in the summary
    assert "failed 2" in lines[final]
