"""Faults and hostile input (issue 16): no hangs, no orphans, no tracebacks, one run per folder.

Real child processes where the fault is a process's (a named pipe, Ctrl-C, kill -9, a second
run), real small file systems where this machine lets the test mount one (as root), else a
monkeypatched write error. Every wait polls with a deadline; children are killed in finally.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.io.lock import LOCK_NAME, output_lock
from clipseg_cli.io.masks import load_label_map
from tests.conftest import ROOT, make_image, write_labels

# -- helpers ---------------------------------------------------------------------------------


def _label_cmd(images: Path, labels: Path, out: Path, weights: Path, *extra: str | Path) -> list[str]:
    return [sys.executable, "-m", "clipseg_cli", str(images), "--labels", str(labels), "--out", str(out),
            "--weights", str(weights), "--device", "cpu", *map(str, extra)]  # fmt: skip


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphaned zombie is dead, waiting for whoever reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _poll(condition, seconds: float, step: float = 0.05) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR for a child with a short path (AF_UNIX socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wl", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _small_fs(path: Path, size: str, read_only: bool = False) -> Iterator[Path | None]:
    """A tmpfs of ``size`` mounted at ``path`` (None where this machine lets nobody mount one)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        yield None
        return
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _dataset(root: Path, n: int, size: tuple[int, int] = (64, 80)) -> tuple[Path, Path]:
    images = root / "images"
    for i in range(n):
        make_image(images / f"{i:02d}.png", size, seed=i)
    labels = write_labels(root / "labels.json", {f"{i:02d}.png": ["cat"] for i in range(n)})
    return images, labels


def _no_partial_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".part")]


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# The two local engines with worker processes: one image at a time through the model, and
# batches (scale.batched, --batch-size > 1); each guarantee below holds for both.
ENGINES = pytest.mark.parametrize("engine", [(), ("--batch-size", "4")], ids=["plain", "batches"])


# -- 1. a named pipe among the images ------------------------------------------------------------


@ENGINES
def test_a_named_pipe_fails_alone_and_the_run_ends(tmp_path: Path, golden_weights: Path, engine: tuple[str, ...]) -> None:
    images, labels = _dataset(tmp_path, 3)
    os.mkfifo(images / "b.jpg")
    labels = write_labels(tmp_path / "labels.json", {n: ["cat"] for n in ["00.png", "01.png", "02.png", "b.jpg"]})
    out = tmp_path / "out"
    proc = subprocess.Popen(_label_cmd(images, labels, out, golden_weights, "--workers", "2", *engine), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        _kill_group(proc)
    assert proc.returncode == 1, err.decode()
    assert (b"labelling (batches of 4" in err) == bool(engine)
    summary = json.loads((out / "run.json").read_text())
    assert summary["failed"] == [{"image": "b.jpg", "reason": "not a regular file (a named pipe)"}]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00.png", "01.png", "02.png"]


def test_load_rgb_refuses_a_named_pipe_without_blocking(tmp_path: Path) -> None:
    import threading

    from clipseg_cli.data.images import load_rgb
    from clipseg_cli.errors import ImageError

    os.mkfifo(tmp_path / "pipe.png")
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_rgb(tmp_path / "pipe.png")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)  # opening a pipe blocks: never join it unbounded
    thread.start()
    thread.join(timeout=20)
    assert outcome, "load_rgb blocked on a named pipe"
    assert isinstance(outcome[0], ImageError) and str(outcome[0]) == "not a regular file (a named pipe)"


# -- 2. Ctrl-C while the worker pool starts ------------------------------------------------------


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_ctrl_c_while_the_pool_starts_exits_130_in_one_line(tmp_path: Path, golden_weights: Path, short_tmp: Path, delay: float) -> None:
    images, labels = _dataset(tmp_path, 6)
    out = tmp_path / "out"
    proc = subprocess.Popen(_label_cmd(images, labels, out, golden_weights, "--workers", "2"), cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(short_tmp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        # From the moment the fork server exists (it is still importing torch, no worker yet).
        started = _poll(lambda: any(b"forkserver" in _cmdline(c) for c in _children(proc.pid)), 120, step=0.005)
        assert started, "the worker pool never started"
        time.sleep(delay)  # the fork server imports torch, then forks the workers
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _, err = proc.communicate(timeout=60)
    finally:
        _kill_group(proc)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "Aborted" not in text
    assert len(_error_lines(text)) == 1 and "interrupted" in _error_lines(text)[0]
    assert _no_partial_files(out)
    assert _poll(lambda: not list(short_tmp.iterdir()), 10), list(short_tmp.iterdir())  # no /tmp/pymp-*


def test_a_real_sigint_is_acted_on_at_a_safe_point_and_the_handler_restored() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from clipseg_cli.labeling import WorkItem
    from clipseg_cli.scale.scheduler import Pipeline

    def finish(item: WorkItem, *_args: object) -> dict:
        time.sleep(0.05)
        return {"seconds": {"cam": 0.0, "crf": 0.0, "total": 0.0}}

    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C, mid-run
    previous = signal.getsignal(signal.SIGINT)
    pipeline = Pipeline(lambda: ThreadPoolExecutor(2), lambda item: item, lambda item, prepared: (), finish,
                        prefetch=2, window=2)  # fmt: skip
    outcomes: list = []
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.run([WorkItem(f"{i}.png", (0,), ("cat",)) for i in range(400)], outcomes.append)
    finally:
        timer.cancel()
    assert 0 < len(outcomes) < 400 and not any(o.error for o in outcomes)
    assert signal.getsignal(signal.SIGINT) is previous


def test_draining_after_ctrl_c_is_bounded(monkeypatch) -> None:  # noqa: ANN001
    from concurrent.futures import ThreadPoolExecutor

    import clipseg_cli.scale.scheduler as scheduler
    from clipseg_cli.labeling import WorkItem

    monkeypatch.setattr(scheduler, "DRAIN_SECONDS", 0.5)
    calls, aborted = [], []

    def model(item: WorkItem, prepared: object) -> tuple:
        calls.append(item)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ()

    def finish(item: WorkItem) -> dict:
        time.sleep(5)  # a finish that will not end in time
        return {"seconds": {"cam": 0.0, "crf": 0.0, "total": 0.0}}

    pipeline = scheduler.Pipeline(lambda: ThreadPoolExecutor(2), lambda item: item, model, finish, prefetch=1,
                                  window=2, on_abort=lambda: aborted.append(1))  # fmt: skip
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run([WorkItem(f"{i}.png", (0,), ("cat",)) for i in range(5)], lambda outcome: None)
    assert time.monotonic() - started < 4.5  # not the 5 s the finish takes
    assert aborted == [1]


@contextlib.contextmanager
def _writing_run(tmp_path: Path, weights: Path, short_tmp: Path, *extra: str,
                 stderr: int = subprocess.DEVNULL) -> Iterator[tuple[subprocess.Popen, Path, list[int]]]:  # fmt: skip
    """A label run of 24 images with 2 workers, from its first mask on: (process, --out, its processes)."""
    images, labels = _dataset(tmp_path, 24, size=(96, 128))
    out = tmp_path / "out"
    proc = subprocess.Popen(_label_cmd(images, labels, out, weights, "--workers", "2", *extra), cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(short_tmp)}, stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True)  # fmt: skip
    try:
        assert _poll(lambda: len(list((out / "masks").glob("*.png"))) >= 1, 180), "no mask was ever written"
        family = _descendants(proc.pid)
        servers = [p for p in _children(proc.pid) if b"forkserver" in _cmdline(p)]
        assert servers and [w for s in servers for w in _children(s)], "no worker process found"
        yield proc, out, family
    finally:
        _kill_group(proc)


def test_ctrl_c_mid_run_with_batches_and_workers_exits_130_and_the_workers_go(tmp_path: Path, golden_weights: Path,
                                                                              short_tmp: Path) -> None:  # fmt: skip
    """The batched engine (--batch-size 4, 2 workers), Ctrl-C once masks are being written: exit
    130 in one line, every mask on disk whole and in run.json, no .part file, no process left."""
    with _writing_run(tmp_path, golden_weights, short_tmp, "--batch-size", "4", stderr=subprocess.PIPE) as (proc, out, family):
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _, err = proc.communicate(timeout=60)  # the drain is bounded: 10 s, then the workers are killed
    text = err.decode()
    assert proc.returncode == 130, text
    assert "labelling (batches of 4, 2 workers)" in text
    assert "Traceback" not in text and "Aborted" not in text
    assert len(_error_lines(text)) == 1 and "interrupted" in _error_lines(text)[0]
    assert _poll(lambda: not any(_running(p) for p in family), 20), [p for p in family if _running(p)]
    assert _no_partial_files(out)
    masks = sorted(p.name for p in (out / "masks").glob("*.png"))
    assert 1 <= len(masks) < 24
    for mask in masks:
        assert load_label_map(out / "masks" / mask).shape == (96, 128)
    summary = json.loads((out / "run.json").read_text())
    assert summary["state"] == "interrupted" and summary["failed"] == []
    assert sorted(e["image"] for e in summary["images"]) == masks
    assert _poll(lambda: not list(short_tmp.iterdir()), 10), list(short_tmp.iterdir())  # no /tmp/pymp-*


# -- 3. kill -9 of the main process ----------------------------------------------------------------


@ENGINES
def test_kill_9_takes_the_workers_and_their_temp_folder_along(tmp_path: Path, golden_weights: Path, short_tmp: Path,
                                                              engine: tuple[str, ...]) -> None:  # fmt: skip
    with _writing_run(tmp_path, golden_weights, short_tmp, *engine) as (proc, out, family):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert _poll(lambda: not any(_running(p) for p in family), 20), [p for p in family if _running(p)]
        masks = sorted((out / "masks").glob("*.png"))
        time.sleep(1.0)
        assert sorted((out / "masks").glob("*.png")) == masks  # nobody writes any more
        assert len(masks) < 24
        assert _poll(lambda: not list(short_tmp.iterdir()), 10), list(short_tmp.iterdir())


# -- 4. an unreachable Ray cluster ---------------------------------------------------------------------


def test_unreachable_ray_cluster_is_exit_2_at_once(tmp_path: Path, golden_weights: Path) -> None:
    pytest.importorskip("ray")
    images, labels = _dataset(tmp_path, 1)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = _label_cmd(images, labels, tmp_path / "out", golden_weights, "--backend", "ray",
                     "--ray-address", f"127.0.0.1:{port}")  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert _error_lines(proc.stderr) == [f"error: cannot connect to the Ray cluster at 127.0.0.1:{port}: Connection refused"]
    assert not (tmp_path / "out").exists()


def test_a_local_ray_session_folder_is_removed_after_shutdown(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from clipseg_cli.scale.ray_backend import _shutdown_local

    session = tmp_path / "ray" / "session_2026-01-01_00-00-00_1_2"
    (session / "logs").mkdir(parents=True)
    (session / "logs" / "raylet.out").write_text("log")
    other = tmp_path / "ray" / "session_other"
    other.mkdir()
    (tmp_path / "ray" / "session_latest").symlink_to(session)
    calls = []
    node = SimpleNamespace(get_session_dir_path=lambda: str(session))
    fake_ray = SimpleNamespace(_private=SimpleNamespace(worker=SimpleNamespace(global_worker=SimpleNamespace(node=node))),
                               shutdown=lambda: calls.append("shutdown"))  # fmt: skip
    _shutdown_local(fake_ray)
    assert calls == ["shutdown"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["session_other"]  # another run's stays


# -- 5. two runs into one --out ---------------------------------------------------------------------


_HOLD = "import sys, time\nfrom clipseg_cli.io.lock import output_lock\nwith output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"


def test_a_second_run_on_the_same_out_is_refused_and_a_dead_ones_lock_taken_over(tmp_path: Path, cli, golden_weights: Path) -> None:
    images, labels = _dataset(tmp_path, 2)
    out = tmp_path / "out"
    (out / "cams").mkdir(parents=True)
    part = out / "cams" / ".00.npz.abcdefgh.part"  # the first run is writing this file
    part.write_bytes(b"half")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        result = cli(images, "--labels", labels, "--out", out, "--weights", golden_weights, "--workers", "0")
        assert result.exit_code == 2, result.output
        assert _error_lines(result.output) == [
            f"error: {out} is in use by another wsss-label run (process {holder.pid}); wait for it to finish or choose another --out"
        ]
        assert part.exists()  # the second run cleaned up nothing of the first one's
        holder.kill()  # dies holding the lock: its file (with its pid) stays behind
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (out / LOCK_NAME).read_text().strip() == str(holder.pid)
    result = cli(images, "--labels", labels, "--out", out, "--weights", golden_weights, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00.png", "01.png"]
    assert not (out / LOCK_NAME).exists() and not part.exists()


def test_the_lock_is_per_folder_and_released(tmp_path: Path) -> None:

    with output_lock(tmp_path / "a"):
        with output_lock(tmp_path / "b"):  # another folder: free
            pass
        child = subprocess.run([sys.executable, "-c", "from clipseg_cli.io.lock import output_lock\n"
                                f"with output_lock({str(tmp_path / 'a')!r}): pass"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert child.returncode != 0 and "OutputBusyError" in child.stderr and f"process {os.getpid()}" in child.stderr
    with output_lock(tmp_path / "a"):  # released
        pass
    assert not (tmp_path / "a").exists()  # made for the lock, left empty: removed again
    with output_lock(tmp_path / "c"):
        with output_lock(tmp_path / "c"):  # re-entrant in one process (reproduce runs label)
            pass
        assert (tmp_path / "c" / LOCK_NAME).read_text().strip() == str(os.getpid())  # still held
    assert not (tmp_path / "c").exists()


# -- 6. an --out that cannot be written to ---------------------------------------------------------


def test_out_that_is_a_file_fails_before_the_weights_are_read(tmp_path: Path, cli) -> None:
    images, labels = _dataset(tmp_path, 1)
    (tmp_path / "afile").write_text("x")
    result = cli(images, "--labels", labels, "--out", tmp_path / "afile", "--weights", tmp_path / "missing.pt")
    assert result.exit_code == 2
    assert _error_lines(result.output) == [f"error: --out {tmp_path / 'afile'} is a file, not a folder"]


def test_read_only_out_fails_before_the_weights_are_read(tmp_path: Path, cli, monkeypatch) -> None:  # noqa: ANN001
    images, labels = _dataset(tmp_path, 1)
    with _small_fs(tmp_path / "ro", "1m", read_only=True) as mounted:
        out = tmp_path / "ro" / "out"
        if mounted is None:  # no mount here: the file system's answer, monkeypatched
            real_mkdir = Path.mkdir

            def read_only_mkdir(self: Path, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
                if self == out:
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
                real_mkdir(self, *args, **kwargs)

            monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
        result = cli(images, "--labels", labels, "--out", out, "--weights", tmp_path / "missing.pt")
    assert result.exit_code == 2
    assert _error_lines(result.output) == [f"error: cannot create --out folder {out}: Read-only file system"]


def test_full_disk_at_start_fails_before_loading(tmp_path: Path, cli) -> None:
    images, labels = _dataset(tmp_path, 1)
    with _small_fs(tmp_path / "full", "64k") as mounted:
        if mounted is None:
            pytest.skip("needs root to mount a small tmpfs (the monkeypatched write error is tested below)")
        with contextlib.suppress(OSError), open(mounted / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        result = cli(images, "--labels", labels, "--out", mounted / "out", "--weights", tmp_path / "missing.pt")
    assert result.exit_code == 2
    assert _error_lines(result.output) == [f"error: cannot write to --out folder {mounted / 'out'}: No space left on device"]


@pytest.mark.parametrize("engine", [(), ("--batch-size", "4")], ids=["serial", "batches"])
def test_disk_full_mid_run_stops_keeps_finished_files_and_records_it(tmp_path: Path, cli, golden_weights: Path, monkeypatch,  # noqa: ANN001
                                                                     engine: tuple[str, ...]) -> None:  # fmt: skip
    import clipseg_cli.labeling as labeling

    images, labels = _dataset(tmp_path, 5)
    out = tmp_path / "out"
    real_save = labeling.save_mask
    written = []

    def save_mask(dest: Path, mask: np.ndarray) -> None:
        if len(written) == 2:  # the disk fills up at the third mask
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(dest).parent / f".{Path(dest).name}.x1y2z3w4.part"))
        real_save(dest, mask)
        written.append(Path(dest).name)

    monkeypatch.setattr(labeling, "save_mask", save_mask)
    result = cli(images, "--labels", labels, "--out", out, "--weights", golden_weights, "--workers", "0", *engine)
    assert result.exit_code == 2, result.output
    assert ("batches of 4" in result.output) == bool(engine)
    line = f"error: cannot write to {out}: No space left on device ({out / 'masks' / '02.png'})"
    assert _error_lines(result.output) == [line]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00.png", "01.png"]
    summary = json.loads((out / "run.json").read_text())
    assert summary["stopped"] == line.removeprefix("error: ")
    assert [e["image"] for e in summary["images"]] == ["00.png", "01.png"]
    assert summary["failed"] == [{"image": "02.png", "reason": line.removeprefix("error: ")}]
    assert summary["state"] == "stopped" and not list(out.rglob("*.part"))


@ENGINES
def test_disk_full_mid_run_with_workers_on_a_real_small_file_system(tmp_path: Path, golden_weights: Path, short_tmp: Path,
                                                                    engine: tuple[str, ...]) -> None:  # fmt: skip
    images, labels = _dataset(tmp_path, 10)
    with _small_fs(tmp_path / "small", "160k") as mounted:
        if mounted is None:
            pytest.skip("needs root to mount a small tmpfs (the monkeypatched write error is tested above)")
        out = mounted / "out"
        proc = subprocess.Popen(_label_cmd(images, labels, out, golden_weights, "--workers", "2", "--save-cams", *engine),
                                cwd=ROOT, env={**os.environ, "TMPDIR": str(short_tmp)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            _, err = proc.communicate(timeout=240)
        finally:
            _kill_group(proc)
        text = err.decode()
        assert proc.returncode == 2, text
        assert "Traceback" not in text
        errors = _error_lines(text)
        assert len(errors) == 1 and f"cannot write to {out}: No space left on device (" in errors[0], text
        masks = sorted((out / "masks").glob("*.png"))
        assert 0 < len(masks) < 10
        for mask in masks:  # every finished file is whole
            assert load_label_map(mask).shape == (64, 80)
            assert (out / "cams" / f"{mask.stem}.npz").is_file()  # the mask is written last
        assert _no_partial_files(out)
        if "run.json not updated" not in errors[0]:
            summary = json.loads((out / "run.json").read_text())
            assert summary["stopped"] and {e["image"] for e in summary["images"]} == {f"{m.stem}.png" for m in masks}


# -- 7. a template longer than CLIP reads --------------------------------------------------------------


LONG_TEMPLATE = "a photo of " + "a very " * 36 + "small {}."


def test_too_long_template_is_exit_2_naming_it_and_its_length(tmp_path: Path, cli, golden_weights: Path) -> None:
    images, labels = _dataset(tmp_path, 1)
    result = cli(images, "--labels", labels, "--out", tmp_path / "out", "--weights", golden_weights,
                 "--classes", "cat,dog", "--background", "none",
                 "--template", "a photo of a {}.", "--template", LONG_TEMPLATE)  # fmt: skip
    assert result.exit_code == 2
    # start, "a photo of", 36 x "a very", "small", the class, ".", end: 1 + 3 + 72 + 1 + 1 + 1 + 1
    (line,) = _error_lines(result.output)
    assert line.startswith(f"error: --template {LONG_TEMPLATE!r} is too long: 80 tokens with 'cat'; CLIP reads at most 77")
    assert not (tmp_path / "out").exists()


def test_sharpness_never_recommends_a_too_long_template(tmp_path: Path, cli, golden_weights: Path) -> None:
    images, labels = _dataset(tmp_path, 2)
    templates = tmp_path / "templates.txt"
    templates.write_text(f"{LONG_TEMPLATE}\na photo of a {{}}.\n")
    report = tmp_path / "report.json"
    result = cli("sharpness", images, "--labels", labels, "--templates", templates, "--weights", golden_weights,
                 "--device", "cpu", "--out", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["best"]["template"] == "a photo of a {}."
    rows = {r["template"]: r for r in data["results"]}
    assert rows[LONG_TEMPLATE]["rank"] == 2 and rows[LONG_TEMPLATE]["sharpness"] is None
    assert "too long" in rows[LONG_TEMPLATE]["invalid"] and "at most 77" in rows[LONG_TEMPLATE]["invalid"]
    assert "invalid" not in rows["a photo of a {}."]


# -- 8. huge images -------------------------------------------------------------------------------------


def _huge_png(path: Path, side: int) -> None:
    """A black ``side`` x ``side`` greyscale PNG, written row by row (never held in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_a_huge_png_is_refused_from_its_header_without_the_memory(tmp_path: Path, golden_weights: Path) -> None:
    images, _ = _dataset(tmp_path, 1)
    _huge_png(images / "huge.png", 24000)
    assert (images / "huge.png").stat().st_size < 2_000_000
    labels = write_labels(tmp_path / "labels.json", {"00.png": ["cat"], "huge.png": ["cat"]})
    out = tmp_path / "out"
    proc = subprocess.Popen(_label_cmd(images, labels, out, golden_weights, "--workers", "0"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        proc.kill()
    assert os.waitstatus_to_exitcode(status) == 1
    assert usage.ru_maxrss < 1_500_000  # KiB: decoding it would take 1.7 GB for the pixels alone
    summary = json.loads((out / "run.json").read_text())
    (failure,) = summary["failed"]
    assert failure["image"] == "huge.png"
    assert failure["reason"].startswith("24000x24000 is 576.0 megapixels, above --max-pixels 40000000")
    assert (out / "masks" / "00.png").exists()


@pytest.mark.parametrize("engine", [(), ("--batch-size", "4")], ids=["serial", "batches"])
def test_max_pixels_option(tmp_path: Path, cli, golden_weights: Path, engine: tuple[str, ...]) -> None:
    images, labels = _dataset(tmp_path, 2, size=(40, 50))
    make_image(images / "01.png", (40, 40), seed=1)
    result = cli(images, "--labels", labels, "--out", tmp_path / "out", "--weights", golden_weights,
                 "--max-pixels", "1999", "--workers", "0", *engine)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert ("batches of 4" in result.output) == bool(engine)
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["failed"] == [{"image": "00.png", "reason": "50x40 is 0.0 megapixels, above --max-pixels 1999 "
                                  "(its full-size outputs need memory in proportion); raise --max-pixels to label it"}]  # fmt: skip
    assert [e["image"] for e in summary["images"]] == ["01.png"]  # 1600 pixels
    bad = cli(images, "--labels", labels, "--out", tmp_path / "o2", "--weights", golden_weights, "--max-pixels", "0")
    assert bad.exit_code == 2 and "--max-pixels must be between 1 and 800000000" in bad.output


# -- 9. samples deeper than 16 bits ---------------------------------------------------------------------


def test_a_32_bit_integer_tiff_is_stretched_by_its_range_not_white(tmp_path: Path) -> None:
    from clipseg_cli.data.images import load_rgb

    values = np.array([[100_000, 350_000, 600_000], [850_000, 1_100_000, 1_350_000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == "I"
    rgb = load_rgb(tmp_path / "deep.tif")
    # (v - 100000) / 1250000 * 255, rounded: 0, 51, 102, 153, 204, 255
    assert rgb[..., 0].tolist() == [[0, 51, 102], [153, 204, 255]]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_float_samples_above_255_and_below_0_are_stretched(tmp_path: Path) -> None:
    from clipseg_cli.data.images import load_rgb

    Image.fromarray(np.array([[-10.0, 40.0, 990.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert load_rgb(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 13, 255]  # 50/1000*255 = 12.75
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    assert load_rgb(tmp_path / "unit.tif")[0, :, 0].tolist() == [0, 128, 255]  # 0..1 keeps its meaning


# -- 10. --backbone files that are not weights --------------------------------------------------------


@pytest.mark.parametrize("command", ["dalnet", "vitpcm"])
@pytest.mark.parametrize("content", ["pickle", "empty"])
def test_bad_backbone_file_is_exit_2_in_one_line(tmp_path: Path, cli, golden_weights: Path, command: str, content: str) -> None:
    import pickle

    images, labels = _dataset(tmp_path, 2, size=(32, 32))
    backbone = tmp_path / "vit.pt"
    if content == "pickle":
        backbone.write_bytes(pickle.dumps({"blocks": [print]}))  # a pickle that names a callable
    else:
        backbone.write_bytes(b"")
    result = cli("train-cam", command, images, "--labels", labels, "--classes", "cat,dog", "--out", tmp_path / "run",
                 "--backbone", backbone, "--weights", golden_weights, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert line.startswith(f"error: --backbone {backbone}: not a readable PyTorch weights file: ")
    if content == "pickle":
        assert "it holds more than tensors" in line and line.endswith("loading it could run code")
    else:
        assert line.endswith("the file is empty or cut short")
    assert "weights_only" not in result.output


# -- smaller: weights messages, labels keys, outputs inside the image folder ---------------------------


def test_weights_errors_are_whole_sentences_without_torchs_advice(tmp_path: Path, cli) -> None:
    import pickle

    images, labels = _dataset(tmp_path, 1)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(os.system))
    result = cli(images, "--labels", labels, "--out", tmp_path / "out", "--weights", evil)
    assert result.exit_code == 2
    (line,) = _error_lines(result.output)
    assert line.startswith(f"error: cannot read CLIP weights {evil}: it holds more than tensors")
    assert line.endswith("refused, as loading it could run code")
    assert "weights_only" not in result.output and "trusted source" not in result.output


def test_raw_pickle_weights_fail_in_one_line_without_torch_warnings(tmp_path: Path) -> None:
    import pickle
    import warnings

    import torch

    from clipseg_cli.clip.loading import read_state_dict
    from clipseg_cli.errors import WeightsError
    from tests.conftest import random_clip_state

    state = random_clip_state(vision_layers=1)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(state, protocol=4))  # pickle.dump, not torch.save
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)  # torch's old format: fine
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightsError, match="refused, as loading it could run code$"):
            read_state_dict(raw)
        assert "visual.proj" in read_state_dict(legacy)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"x.jpg": ["cat"], "x.jpg": ["dog"]}', "image 'x.jpg' is listed twice"),
        ('{"imgs/../x.jpg": ["cat"], "x.jpg": ["dog"]}', "'imgs/../x.jpg' and 'x.jpg' name the same image 'x.jpg'"),
    ],
)
def test_labels_naming_one_image_twice_are_refused(tmp_path: Path, content: str, message: str) -> None:
    from clipseg_cli.data.labels import read_labels_file
    from clipseg_cli.errors import ConfigError

    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_labels_file(path)


def test_labels_x_and_x_jpg_for_one_image_are_refused(tmp_path: Path, cli, golden_weights: Path) -> None:
    make_image(tmp_path / "images" / "x.jpg")
    make_image(tmp_path / "images" / "y.png")
    labels = write_labels(tmp_path / "labels.json", {"x": ["cat"], "x.jpg": ["dog"], "y": ["cat"]})
    result = cli(tmp_path / "images", "--labels", labels, "--out", tmp_path / "out", "--weights", golden_weights)
    assert result.exit_code == 2
    assert _error_lines(result.output) == [f"error: {labels}: 'x' and 'x.jpg' both name image x.jpg; keep one entry"]


def test_out_equal_to_the_image_folder_does_not_read_its_outputs_back(tmp_path: Path, cli, golden_weights: Path) -> None:
    images, _ = _dataset(tmp_path, 2)
    labels = write_labels(tmp_path / "labels.json", {"00.png": ["cat"], "01.png": ["dog"]})
    for _ in range(2):
        result = cli(images, "--labels", labels, "--out", images, "--weights", golden_weights, "--visualize",
                     "--workers", "0")  # fmt: skip
        assert result.exit_code == 0, result.output
    summary = json.loads((images / "run.json").read_text())
    assert summary["skipped"] == [] and summary["counts"]["already_done"] == 2
    assert sorted(p.name for p in (images / "vis").iterdir()) == ["00.png", "01.png"]


def test_eval_size_mismatch_names_each_file_as_what_it_is(tmp_path: Path, cli) -> None:
    from clipseg_cli.io.masks import save_mask

    save_mask(tmp_path / "pred" / "a.png", np.zeros((4, 5), np.uint8))
    save_mask(tmp_path / "gt" / "a.png", np.zeros((6, 5), np.uint8))
    result = cli("eval", tmp_path / "pred", tmp_path / "gt", "--classes", "cat,dog")
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert f"prediction {tmp_path / 'pred' / 'a.png'}" in line and f"GT {tmp_path / 'gt' / 'a.png'}" in line
    assert line.index("(4, 5)") < line.index("(6, 5)")  # the prediction's shape, then the GT's
    assert Image.open(tmp_path / "pred" / "a.png").size == (5, 4)
