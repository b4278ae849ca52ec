"""Shared fixtures: the golden folder, tiny random CLIP checkpoints, a CLI runner."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipseg_cli.cli import app, route_default
from clipseg_cli.clip.model import CLIP, VIT_B_16_CONFIG, CLIPConfig

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"


def tiny_config(**overrides: int) -> CLIPConfig:
    """ViT-B/16's layout (12 blocks of patch 16, 77 tokens) at tiny widths."""
    base = dict(embed_dim=32, vision_width=64, text_width=32, text_heads=1, text_layers=2)
    return dataclasses.replace(VIT_B_16_CONFIG, **{**base, **overrides})


def random_clip_state(seed: int = 0, dtype: torch.dtype = torch.float16, **overrides: int) -> dict[str, torch.Tensor]:
    """A random CLIP in OpenAI's key layout, LayerNorms and biases perturbed so every path matters."""
    torch.manual_seed(seed)
    model = CLIP(tiny_config(**overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                param.add_(0.1 * torch.randn_like(param))
            if name.endswith("in_proj_weight") or name.endswith("c_fc.weight") or name.endswith("c_proj.weight"):
                param.normal_(0, 0.05)
    return {k: v.to(dtype) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def one_torch_thread():  # noqa: ANN201 - a generator fixture
    """One intra-op thread for a test module: small models gain nothing from more on a shared 2-core CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden files missing: {GOLDEN} (part of the repository: is the checkout complete?)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_weights(golden_dir: Path) -> Path:
    return golden_dir / "weights.pt"


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second random CLIP (other seed and widths) saved as a plain state dict."""
    path = tmp_path_factory.mktemp("weights") / "other.pt"
    torch.save(random_clip_state(seed=7), path)
    return path


class Cli:
    """Invokes `wsss-label` in-process, with the same default-command routing as the console script."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str | Path):
        return self.runner.invoke(app, route_default([str(a) for a in args]), catch_exceptions=False)


@pytest.fixture
def cli() -> Cli:
    return Cli()


def write_labels(path: Path, labels: dict[str, list[str]]) -> Path:
    path.write_text(json.dumps(labels))
    return path


def make_image(path: Path, size: tuple[int, int] = (70, 90), seed: int = 0, mode: str = "RGB") -> Path:
    """A smooth random picture (so the CRF has edges to follow) saved in ``mode``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    base = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert(mode).save(path)
    return path


def interrupt_labelling_at(monkeypatch: pytest.MonkeyPatch, stop: int) -> list[str]:
    """Make a label run see Ctrl-C when it starts its ``stop``-th image (1-based); returns the
    images it started, in order."""
    from clipseg_cli.labeling import LabelJob

    original = LabelJob.attempt
    seen: list[str] = []

    def attempt(self, item):  # type: ignore[no-untyped-def]  # noqa: ANN001
        seen.append(item.rel)
        if len(seen) == stop:
            raise KeyboardInterrupt
        return original(self, item)

    monkeypatch.setattr(LabelJob, "attempt", attempt)
    return seen


def interrupt_training_at(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """Make retrain/refine training see Ctrl-C right after iteration ``stop`` is reported."""
    from clipseg_cli.cli.training_bar import TrainingReporter

    original = TrainingReporter.step

    def step(self, iteration, loss, lr, it_per_s):  # type: ignore[no-untyped-def]  # noqa: ANN001
        original(self, iteration, loss, lr, it_per_s)
        if iteration == stop:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingReporter, "step", step)


def invoke(*args: object):  # type: ignore[no-untyped-def]
    """`wsss-label ARGS` in-process (arguments given as paths or strings)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    """The single ``error:`` line of a failed command (and no traceback)."""
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


def labelled_shapes(root: Path, n: int, size: int, names: list[str], seed: int, fill_empty: bool = False) -> Path:
    """:func:`write_shapes_dataset` plus ``labels.json``: each image labelled with the classes of its
    GT (an image without shapes gets ``names[0]`` when ``fill_empty``)."""
    from clipseg_cli.io.masks import load_label_map
    from clipseg_cli.segmentation.synthetic import write_shapes_dataset

    data = write_shapes_dataset(root, n, size=size, num_classes=len(names), seed=seed)
    labels = {}
    for gt in sorted((data / "gt").glob("*.png")):
        values = sorted(set(np.unique(load_label_map(gt)).tolist()) - {0, 255})
        labels[gt.name] = [names[v - 1] for v in values] or ([names[0]] if fill_empty else [])
    write_labels(data / "labels.json", labels)
    return data


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def interrupted_run(monkeypatch: pytest.MonkeyPatch, stop: int, out: Path, run):  # type: ignore[no-untyped-def]  # noqa: ANN001
    """``run()`` (a training command into ``out``) with Ctrl-C after iteration ``stop``: exit 130 and
    last.pt saved at ``stop``."""
    with monkeypatch.context() as m:
        interrupt_training_at(m, stop)
        result = run()
    assert result.exit_code == 130, result.output
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == stop
    return result


def assert_same_weights(a_path: Path, b_path: Path) -> tuple[dict, dict]:
    """Two checkpoints with bit-identical model weights and optimizer state; returns both."""
    a = torch.load(a_path, weights_only=True)
    b = torch.load(b_path, weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert len(a["optimizer"]["state"]) == len(b["optimizer"]["state"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    return a, b


def check_resume_rules(monkeypatch: pytest.MonkeyPatch, root: Path, stop: int, run, changed: list[str], word: str,  # type: ignore[no-untyped-def]  # noqa: ANN001
                       resume) -> tuple[dict, dict]:  # fmt: skip
    """The rules every training command follows, with ``run(out, *extra)`` a training command into
    ``out``: a full run into ``root/full``; one into ``root/cut`` interrupted after iteration
    ``stop``; a rerun into it without ``--resume`` refused (exit 2, naming --resume); one with
    ``--resume`` and ``changed`` defining settings refused (exit 2, naming ``word``); ``resume()``
    (the command with --resume and only what it needs) succeeds. Returns the two last.pt, with
    bit-identical weights and optimizer state."""
    full = run(root / "full")
    assert full.exit_code == 0, full.output
    interrupted_run(monkeypatch, stop, root / "cut", lambda: run(root / "cut"))
    again = run(root / "cut")
    assert again.exit_code == 2 and "--resume" in again.output
    refused = run(root / "cut", *changed, "--resume")
    assert refused.exit_code == 2 and word in refused.output
    resumed = resume()
    assert resumed.exit_code == 0, resumed.output
    return assert_same_weights(root / "full" / "last.pt", root / "cut" / "last.pt")
