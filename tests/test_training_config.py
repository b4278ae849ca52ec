"""Training settings: the round trip through a checkpoint's train_config, --resume's rules, the
limits' one-line errors, and the command line generated from the fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipseg_cli.errors import ConfigError
from clipseg_cli.methods.deeplab import RetrainConfig
from clipseg_cli.methods.weakclip import WeakClipConfig
from clipseg_cli.training.precision import check_precision
from clipseg_cli.training.schedules import cosine_lr, warmup_poly_lr
from tests.conftest import invoke


def test_train_config_round_trip_and_resume_rules() -> None:
    run = RetrainConfig(images=Path("imgs"), masks=Path("m"), out=Path("o"), class_names=["a", "b"],
                        init=Path("w.pth"), scales=(0.5, 1.0), iters=7, workers=3, val=(Path("vi"), Path("vg")))  # fmt: skip
    saved = run.to_json()
    assert saved["init"] == "w.pth" and saved["scales"] == [0.5, 1.0] and saved["val"] == ["vi", "vg"]
    again = RetrainConfig(out=Path("o"), workers=1)
    again.apply_saved(saved)
    # the defining settings come back with their types; workers, val, out are this session's
    assert again.init == Path("w.pth") and again.scales == (0.5, 1.0) and again.iters == 7
    assert again.class_names == ["a", "b"] and again.workers == 1 and again.val is None
    asked = RetrainConfig(out=Path("o"), iters=9, lr=2e-4)
    with pytest.raises(ConfigError, match=r"iters \(run: 7, asked: 9\)") as err:
        asked.apply_saved(saved, explicit=["iters", "lr", "workers"])
    assert "lr" not in str(err.value)  # lr given, but equal to the run's
    asked.apply_saved(saved, explicit=["workers"])  # not defining: no conflict
    assert asked.iters == 7


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"iters": 0}, "--iters must be at least 1, got 0"),
        ({"lr": 0.0}, "--lr must be positive, got 0.0"),
        ({"precision": "fp16"}, "--precision must be one of fp32, bf16; got 'fp16'"),
        ({"warmup": 1.0}, "--warmup-iters must be in [0, --iters) (--warmup: a fraction in [0, 1)), got 1 of --iters"),
        ({"context": 0}, "--context must be at least 1, got 0"),
    ],
)
def test_limits_are_one_line_errors_naming_the_flag(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        WeakClipConfig(out=Path("o"), **changes).validate()
    assert str(err.value) == message


def test_precision_names_are_checked() -> None:
    check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="fp32, bf16"):
        check_precision("half", torch.device("cpu"))


def test_schedules_by_hand() -> None:
    # warm-up from 1e-6 * 2 to 2 over 4 iterations, then poly 0.5 over the remaining 16
    assert warmup_poly_lr(2.0, 1, 20, 4, 1e-6, 0.5) == pytest.approx(2.0 * (1e-6 + (1 - 1e-6) / 4))
    assert warmup_poly_lr(2.0, 8, 20, 4, 1e-6, 0.5) == pytest.approx(2.0 * (1 - 4 / 16) ** 0.5)
    assert warmup_poly_lr(2.0, 20, 20, 4, 1e-6, 0.5) == 0.0
    assert cosine_lr(1.0, 5, 10, 0.2) == pytest.approx(0.6) and cosine_lr(1.0, 10, 10, 0.2) == pytest.approx(0.2)


def test_generated_commands_show_every_field(tmp_path: Path) -> None:
    """The options of refine train are the refiners' config fields, with their help; a method that is
    not a refiner is refused."""
    text = invoke("refine", "train", "--help").output
    for flag, words in (("--context", "context vectors"), ("--decoder-dim", "decoder"), ("--warmup", "warm-up"),
                        ("--precision", "bf16"), ("--weights", "CLIP"), ("--method", "weakclip")):  # fmt: skip
        assert flag in text and words in text, flag
    result = invoke("refine", "train", tmp_path, tmp_path, "--out", tmp_path / "o", "--method", "clims")
    assert result.exit_code == 2 and "'clims' is not one of 'weakclip'" in result.output
