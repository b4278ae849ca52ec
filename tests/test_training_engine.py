"""The training engine's guarantees, for every registered method through its command line: exact
resume (fp32 and bf16), non-finite loss and out of memory as one line, stale ``*.part`` files
removed, the run files; and the method contract: a minimal method of one class gets its command,
checkpoints, resume and predictor from the registry alone."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from torch import nn
from typer.testing import CliRunner

from benchmarks.train_gpu_smoke import command_line, make_inputs
from clipseg_cli import methods
from clipseg_cli.cli.train_commands import make_command
from clipseg_cli.methods.base import LearnedMethod
from clipseg_cli.training.config import RunConfig, setting
from clipseg_cli.training.data import stream_loader
from clipseg_cli.training.schedules import poly_lr, set_lr
from tests.conftest import Cli, assert_same_weights, interrupted_run, metrics_rows, one_error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")
METHODS = sorted(methods.all_methods())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_inputs(tmp_path_factory.mktemp("smoke"), "tiny")


def args(name: str, inputs: dict[str, Path], out: Path, iters: int, *extra: str, precision: str = "fp32") -> list[str]:
    return [*command_line(name, "tiny", inputs, out, "cpu", precision, iters), "--save-every", "3", *extra]


def test_every_method_declares_its_smoke_runs() -> None:
    """benchmarks/train_gpu_smoke.py (and the tests below) run every registered method; kinds are unique."""
    assert {"clims", "dalnet", "deeplabv2", "vitpcm", "weakclip"} <= set(METHODS)
    assert all({"tiny", "base"} <= set(methods.METHODS[n].smoke_args) for n in METHODS)
    kinds = [methods.METHODS[n].kind for n in METHODS]
    assert len(set(kinds)) == len(kinds)


@pytest.mark.parametrize("name", METHODS)
def test_resume_is_bit_exact_in_bf16(name: str, inputs: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """With --precision bf16 (CPU autocast): 4 iterations == 2, Ctrl-C, --resume 2: weights, optimizer
    state and logged losses equal bit for bit. (fp32: each method's own CLI test, e.g.
    tests/test_retrain_cli.py::test_resume_is_bit_exact.)"""
    precision = "bf16"
    cli = Cli()
    full = cli(*args(name, inputs, tmp_path / "full", 4, precision=precision))
    assert full.exit_code == 0, full.output
    interrupted_run(monkeypatch, 2, tmp_path / "cut", lambda: cli(*args(name, inputs, tmp_path / "cut", 4, precision=precision)))
    (tmp_path / "cut" / ".last.pt.abc123.part").write_bytes(b"half a checkpoint")  # a killed writer's leftover
    resumed = cli(*args(name, inputs, tmp_path / "cut", 4, "--resume", precision=precision))
    assert resumed.exit_code == 0, resumed.output
    assert not list((tmp_path / "cut").glob("*.part"))

    a, b = assert_same_weights(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")
    assert a["iteration"] == b["iteration"] == 4 and a["kind"] == b["kind"] == methods.METHODS[name].kind
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in metrics_rows(tmp_path / run)]
               for run in ("full", "cut")]  # fmt: skip
    assert [r["iteration"] for r in untimed[1]] == [1, 2, 3, 4] and untimed[0] == untimed[1]
    summary = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert summary["status"] == "finished" and summary["precision"] == precision and summary["iteration"] == 4
    assert (tmp_path / "cut" / "loss.png").read_bytes()[:4] == b"\x89PNG"


# method | options | what the error line names (moved here from the retrain and refine CLI tests)
BAD_VALUES = """
deeplabv2 | --arch deeplabv3 | --arch
deeplabv2 | --scales 0.5,x | --scales
deeplabv2 | --iters 0 | --iters
deeplabv2 | --classes missing-file.txt | class
weakclip | --crop 48 | --crop
weakclip | --iters 0 | --iters
weakclip | --warmup-iters 1 | --warmup-iters
weakclip | --context 0 | --context
weakclip | --method clims | --method
weakclip | --scales 1,x | --scales
weakclip | --classes red,green | blue
weakclip | --context 90 | --context
"""


@pytest.mark.parametrize("name, extra, words", [[c.strip() for c in row.split("|")] for row in BAD_VALUES.strip().splitlines()])
def test_bad_values_are_one_line_errors(name: str, extra: str, words: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    result = Cli()(*args(name, inputs, tmp_path / "run", 1, *extra.split()))
    assert result.exit_code == 2
    assert words in one_error_line(result)


@pytest.mark.parametrize("name", METHODS)
def test_non_finite_loss_stops_with_one_line(name: str, inputs: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A NaN loss at iteration 5: exit 2, one line naming it, last.pt stays at the good iteration 3."""
    method = methods.METHODS[name]
    original = method.loss

    def loss(self, batch, iteration):  # type: ignore[no-untyped-def]  # noqa: ANN001
        value, parts = original(self, batch, iteration)
        return (value * math.nan if iteration == 4 else value), parts

    monkeypatch.setattr(method, "loss", loss)
    result = Cli()(*args(name, inputs, tmp_path / "run", 6))
    assert result.exit_code == 2
    assert one_error_line(result) == "error: the loss became nan at iteration 5; lower --lr and start again"
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["iteration"] == 3
    assert [r["iteration"] for r in metrics_rows(tmp_path / "run")] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["iteration"] == 3
    assert (tmp_path / "run" / "loss.png").exists()


@pytest.mark.parametrize("name", METHODS)
def test_out_of_memory_is_one_line(name: str, inputs: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    method = methods.METHODS[name]

    def loss(self, batch, iteration):  # type: ignore[no-untyped-def]  # noqa: ANN001
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")

    monkeypatch.setattr(method, "loss", loss)
    result = Cli()(*args(name, inputs, tmp_path / "run", 2))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith("error: out of CPU memory at --batch-size ") and line.endswith("; lower them"), line


# -- the method contract: a new method is one class ------------------------------------------------
@dataclass(kw_only=True)
class ToyConfig(RunConfig):
    iters: int = setting(6, "Training iterations.", minimum=1)
    batch: int = setting(2, "Images per iteration.", minimum=1)
    lr: float = setting(0.5, "SGD learning rate, poly decay.", positive=True)
    side: int = setting(16, "Images are resized to SIDE x SIDE.", minimum=4)


class ToyData(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], labels: list[list[int]], classes: int, side: int) -> None:
        self.paths, self.side = paths, side
        self.targets = [torch.zeros(classes).index_fill_(0, torch.tensor(v) - 1, 1.0) for v in labels]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        from clipseg_cli.data.images import read_rgb

        index, _ = item
        x = torch.from_numpy(read_rgb(self.paths[index]).copy()).permute(2, 0, 1).float()[None] / 255
        return {"image": F.interpolate(x, size=(self.side, self.side))[0], "target": self.targets[index], "error": ""}


class ToyPredictor:
    def __init__(self, net: nn.Module, class_names: list[str]) -> None:
        self.net, self.class_names = net.eval(), class_names

    def probabilities(self, image: np.ndarray, labels: Any = None) -> np.ndarray:
        with torch.no_grad():
            cams = torch.sigmoid(self.net(torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255))[0]
        return torch.cat([torch.full_like(cams[:1], 0.5), cams]).numpy()


class Toy(LearnedMethod):
    """A 1x1-convolution CAM on raw pixels: every hook a method must give, nothing more."""

    name, family, kind, summary, Config = "toy", "cam", "cam.toy", "A toy CAM generator.", ToyConfig
    cfg: ToyConfig

    def setup(self, ckpt: dict[str, Any] | None) -> None:
        self.labels = self.training_labels(ckpt)
        from clipseg_cli.methods.base import labelled_paths

        self.keys, self.paths = labelled_paths(self.cfg.images, self.labels)
        torch.manual_seed(self.cfg.seed)
        self.model = nn.Conv2d(3, len(self.cfg.class_names), 1)
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=0.9)
        self.iters = self.cfg.iters

    def batches(self, start: int) -> Iterable[Any]:
        data = ToyData(self.paths, [self.labels[k] for k in self.keys], len(self.cfg.class_names), self.cfg.side)
        return stream_loader(data, self.cfg.batch, self.cfg.seed, start, self.iters, 0, self.device)

    def schedule(self, iteration: int) -> dict[str, Any]:
        lr = poly_lr(self.cfg.lr, iteration, self.iters, 0.9)
        set_lr(self.optimizer, lr)
        return {"lr": lr}

    def loss(self, batch: Mapping[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.model(batch["image"]).amax(dim=(2, 3))
        return F.multilabel_soft_margin_loss(scores, batch["target"]), {}

    def model_config(self) -> dict[str, Any]:
        return {"classes": len(self.cfg.class_names)}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"image_labels": self.labels}

    @classmethod
    def load_predictor(cls, ckpt: dict[str, Any], device: torch.device, options: Any) -> ToyPredictor:
        net = nn.Conv2d(3, int(ckpt["model_config"]["classes"]), 1)
        net.load_state_dict(ckpt["model"])
        return ToyPredictor(net, list(ckpt["class_names"]))


def test_a_registered_class_is_a_method_with_every_guarantee(inputs: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    methods.all_methods()
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    methods.register(Toy)
    assert methods.get_method("toy", "cam") is Toy and methods.method_for_kind("cam.toy") is Toy
    with pytest.raises(ValueError, match="twice"):
        methods.register(type("Clash", (Toy,), {"name": "toy2"}))  # same kind

    app = typer.Typer()
    app.command("toy")(make_command([Toy], help=Toy.summary))
    app.command("other")(lambda: None)
    runner = CliRunner()
    help_text = runner.invoke(app, ["toy", "--help"]).output
    for flag, words in (("--side", "SIDE x SIDE"), ("--lr", "poly decay"), ("--precision", "bf16"), ("--labels", "")):
        assert flag in help_text and words in help_text, flag
    common = ["toy", str(inputs["data"] / "images"), "--labels", str(inputs["labels"]), "--classes", "red,green,blue"]
    bad = runner.invoke(app, [*common, "--out", str(tmp_path / "bad"), "--side", "2"])
    assert bad.exit_code == 2 and one_error_line(bad) == "error: --side must be at least 4, got 2"

    run = tmp_path / "run"
    first = runner.invoke(app, [*common, "--out", str(run), "--iters", "3"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*common, "--out", str(run), "--iters", "6"])
    assert again.exit_code == 2 and "--resume" in one_error_line(again)
    changed = runner.invoke(app, [*common, "--out", str(run), "--side", "8", "--resume"])
    assert changed.exit_code == 2 and "side (run: 16, asked: 8)" in one_error_line(changed)
    resumed = runner.invoke(app, ["toy", str(inputs["data"] / "images"), "--out", str(run), "--resume"])
    assert resumed.exit_code == 0, resumed.output  # labels, classes and settings from the run
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["kind"] == "cam.toy" and ckpt["iteration"] == 3 and ckpt["class_names"] == ["red", "green", "blue"]
    assert ckpt["train_config"]["side"] == 16 and [r["iteration"] for r in metrics_rows(run)] == [1, 2, 3]
    summary = json.loads((run / "run.json").read_text())
    assert summary["command"] == "train-cam toy" and summary["status"] == "finished"

    from clipseg_cli.inference import InferenceOptions, load_predictor

    predictor = load_predictor(run / "last.pt", torch.device("cpu"), InferenceOptions())
    assert isinstance(predictor, ToyPredictor)
    probs = predictor.probabilities(np.zeros((5, 7, 3), np.uint8))
    assert probs.shape == (4, 5, 7) and np.all(probs[0] == 0.5)
