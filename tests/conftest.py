"""Shared fixtures: the golden folder, tiny random CLIP checkpoints, a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipseg_cli.cli import app, route_default
from clipseg_cli.clip.model import CLIP, CLIPConfig

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"


def tiny_config(**overrides: int) -> CLIPConfig:
    base = dict(
        embed_dim=32,
        image_resolution=224,
        vision_layers=12,
        vision_width=64,
        vision_patch_size=16,
        context_length=77,
        vocab_size=49408,
        text_width=32,
        text_heads=1,
        text_layers=2,
    )
    base.update(overrides)
    return CLIPConfig(**base)


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


def interrupt_training_at(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """Make retrain/refine training see Ctrl-C right after iteration ``stop`` is reported."""
    from clipseg_cli.cli.training_bar import TrainingReporter

    original = TrainingReporter.step

    def step(self, iteration, loss, lr, it_per_s):  # type: ignore[no-untyped-def]  # noqa: ANN001
        original(self, iteration, loss, lr, it_per_s)
        if iteration == stop:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingReporter, "step", step)
