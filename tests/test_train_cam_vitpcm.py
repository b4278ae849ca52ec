"""ViT-PCM (`wsss-label train-cam vitpcm`): losses, equivariance transforms, learning on synthetic
shapes from image-level labels only, CLI, exact resume, predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_cli.data.labels import read_labels_file
from clipseg_cli.io.masks import load_label_map
from clipseg_cli.methods.base import MethodInputs
from clipseg_cli.methods.vit_backbone import tiny_vit
from clipseg_cli.methods.vitpcm import (
    HVBiLSTM,
    PatchClassMapper,
    VitPcm,
    VitPcmConfig,
    predictor_from_checkpoint,
    second_branch,
)
from clipseg_cli.methods.vitpcm_equivariance import (
    dihedral,
    equivariance_loss,
    gmp_scores,
    mce_loss,
    mosaic,
    mosaic_indices,
    random_affine,
    random_dihedral,
    undo_dihedral,
    unmosaic,
    unwarp,
    warp,
)
from clipseg_cli.training.checkpoint import read_checkpoint
from clipseg_cli.training.engine import train
from tests.conftest import Cli, check_resume_rules, labelled_shapes, metrics_rows, write_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["red", "green", "blue"]


def small_vit():  # type: ignore[no-untyped-def]
    return tiny_vit(width=48, depth=2, heads=3, patch_size=4, grid=8)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic 64x64 images of coloured shapes, GT, and image-level labels derived from the GT."""
    return labelled_shapes(tmp_path_factory.mktemp("vitpcm") / "shapes", 24, 64, NAMES, seed=0)


# -- transforms and losses -----------------------------------------------------------------------
def test_mosaic_and_inverse_round_trip_exactly() -> None:
    x = torch.randn(8, 3, 6, 10)
    m = mosaic(x)
    assert m.shape == (2, 3, 12, 20)
    assert torch.equal(m[0, :, :6, :10], x[0]) and torch.equal(m[0, :, :6, 10:], x[1])
    assert torch.equal(m[0, :, 6:, :10], x[2]) and torch.equal(m[1, :, 6:, 10:], x[7])
    assert torch.equal(unmosaic(m), x)
    y = torch.randn(3, 5, 8, 4)
    assert torch.equal(mosaic(unmosaic(y)), y)
    assert mosaic_indices(6).tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    with pytest.raises(ValueError):
        mosaic(torch.zeros(3, 1, 2, 2))


def test_affine_inverse_restores_the_interior() -> None:
    gen = torch.Generator().manual_seed(0)
    theta = random_affine(4, gen, max_shift=0.05, max_degrees=10, scales=(0.95, 1.05))
    x = torch.linspace(0, 1, 32)[None, None].expand(4, 2, 32, 32) + torch.linspace(0, 1, 32)[None, None, :, None]
    back, valid = unwarp(warp(x, theta), theta)
    assert valid.float().mean() > 0.6
    err = (back - x).abs() * valid
    assert float(err.max()) < 0.08  # two bilinear resamplings of a smooth ramp
    identity = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]).expand(4, 2, 3)
    same, ok = unwarp(warp(x, identity), identity)
    assert bool(ok.all()) and torch.allclose(same, x, atol=1e-5)


def test_equivariance_loss_is_eq8_cross_entropy_with_both_gradients() -> None:
    """Eq. 8 by hand on two patches: -1/s sum_i sum_k nu log mu; d/dnu = -log(mu)/s and
    d/dmu = -nu/(mu s) (neither branch detached; a KL form would give d/dnu = (log nu - log mu + 1)/s)."""
    nu = torch.tensor([[[[0.25, 0.6]], [[0.75, 0.4]]]], requires_grad=True)  # (1, 2 classes, 1, 2 patches)
    mu = torch.tensor([[[[0.5, 0.9]], [[0.5, 0.1]]]], requires_grad=True)
    loss = equivariance_loss(nu, mu)
    want = -(0.25 * math.log(0.5) + 0.75 * math.log(0.5) + 0.6 * math.log(0.9) + 0.4 * math.log(0.1)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert torch.allclose(nu.grad, -torch.log(mu.detach()) / 2)
    assert torch.allclose(mu.grad, -nu.detach() / mu.detach() / 2)
    valid = torch.tensor([[[[False, True]]]])
    only_second = -(0.6 * math.log(0.9) + 0.4 * math.log(0.1))
    assert equivariance_loss(nu, mu, valid).item() == pytest.approx(only_second, rel=1e-6)


def test_dihedral_transform_and_its_inverse() -> None:
    grid = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0 1 2] [3 4 5] [6 7 8]]
    x = grid.expand(4, 2, 3, 3).clone()
    flags = torch.tensor([[False, False, False], [True, False, False], [True, True, False], [True, False, True]])
    out = dihedral(x, flags)
    assert out[0, 0].tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert out[1, 0].tolist() == [[2, 1, 0], [5, 4, 3], [8, 7, 6]]  # left-right
    assert out[2, 1].tolist() == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]  # and up-down: 180 degrees
    assert out[3, 0].tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]  # left-right then transpose: 90 degrees
    assert torch.equal(undo_dihedral(out, flags), x)
    draws = random_dihedral(4000, torch.Generator().manual_seed(0))
    assert draws.shape == (4000, 3) and abs(draws.float().mean().item() - 0.5) < 0.03


def main_branch_by_hand(model: PatchClassMapper, images: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    out = []
    for img, (lr, ud, tr) in zip(images, flags.tolist()):  # a by hand, then f, then a^-1 by hand
        t = img.flip(-1) if lr else img
        t = t.flip(-2) if ud else t
        t = t.transpose(-1, -2) if tr else t
        p = model(t[None])[0]
        p = p.transpose(-1, -2) if tr else p
        p = p.flip(-2) if ud else p
        out.append(p.flip(-1) if lr else p)
    return torch.stack(out)


@pytest.mark.parametrize("form", ["paper", "authors"])
def test_both_branches_are_transformed_and_the_gradient_goes_where_each_form_says(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """mu = a^-1 f(a(X)) of the main branch (flips drawn from the branch seed), nu the second branch's.
    paper: eq. 8's -sum nu log mu, neither detached; authors: -sum t log nu with t the main branch
    restricted to the image's labels (each class / its max over patches, renormalised), fixed."""
    import clipseg_cli.methods.vitpcm_equivariance as eqv
    from clipseg_cli.methods.vitpcm import vitpcm_loss

    torch.manual_seed(0)
    model = PatchClassMapper(small_vit(), 4, lstm_hidden=8)
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([[1.0, 1, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1], [1, 0, 0, 1]])
    seen: list[torch.Tensor] = []
    original = eqv.equivariance_loss
    monkeypatch.setattr(eqv, "equivariance_loss", lambda p, q, valid=None: seen.extend([p, q]) or original(p, q, valid))
    _, parts = vitpcm_loss(model, images, targets, branch_seed=11, et_loss=form)
    flags = random_dihedral(4, torch.Generator().manual_seed(11))
    assert flags.any() and "et" in parts
    with torch.no_grad():
        mu = main_branch_by_hand(model, images, flags)
    weights, logged = seen
    if form == "paper":
        nu = weights
        assert weights.requires_grad and logged.requires_grad
        assert torch.allclose(logged.detach(), mu, atol=1e-5)
    else:
        nu = logged
        assert not weights.requires_grad and logged.requires_grad
        t = mu * targets[:, :, None, None]
        t = t / t.flatten(2).max(dim=2).values[:, :, None, None].clamp_min(1e-12)
        t = t / t.sum(dim=1, keepdim=True)
        assert torch.allclose(weights, t, atol=1e-5) and (weights[targets == 0] == 0).all()
    assert nu.shape == mu.shape and not torch.allclose(nu.detach(), mu, atol=1e-3)


def test_colour_jitter_and_grayscale() -> None:
    from clipseg_cli.methods.vitpcm import colour_jitter

    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    gray = colour_jitter(image, np.random.default_rng(1), gray_p=1.0)
    assert gray.dtype == np.float32 and np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 1], gray[..., 2])
    outs = [colour_jitter(image, np.random.default_rng(s), gray_p=0.0) for s in range(4)]
    assert all(0 <= o.min() and o.max() <= 255 for o in outs)
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[0], image)
    assert np.array_equal(colour_jitter(image, np.random.default_rng(3)), colour_jitter(image, np.random.default_rng(3)))


def test_gmp_scores_and_mce_eq1() -> None:
    probs = torch.zeros(1, 3, 2, 2)
    probs[0, 0] = torch.tensor([[0.9, 0.2], [0.5, 0.1]])
    probs[0, 1] = torch.tensor([[0.1, 0.8], [0.5, 0.0]])
    probs[0, 2] = 1 - probs[0, 0] - probs[0, 1]
    assert torch.allclose(gmp_scores(probs), torch.tensor([[0.9, 0.8, 0.9]]))
    t = torch.tensor([[1.0, 1.0, 0.0]])
    expected = -(np.log(0.9) + np.log(0.8) + np.log(1 - 0.9)) / 3
    assert float(mce_loss(probs, t)) == pytest.approx(expected, rel=1e-5)


def test_network_shapes_and_hv_bilstm() -> None:
    lstm = HVBiLSTM(6, 5)
    x = torch.randn(2, 3, 4, 6)
    assert lstm(x).shape == (2, 3, 4, 20)
    # the row half of a patch depends only on its row, the column half only on its column
    y = x.clone()
    y[:, 0, 0] += 1.0
    d = (lstm(y) - lstm(x)).abs().detach()
    assert float(d[:, 1:, 1:, :].max()) == 0.0
    assert float(d[:, 0, 1:, :10].max()) > 0 and float(d[:, 0, 1:, 10:].max()) == 0.0
    assert float(d[:, 1:, 0, 10:].max()) > 0 and float(d[:, 1:, 0, :10].max()) == 0.0
    model = PatchClassMapper(small_vit(), 4, lstm_hidden=8)
    images = torch.randn(3, 3, 32, 32)
    probs = model(images)
    assert probs.shape == (3, 4, 8, 8)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3, 8, 8), atol=1e-5)
    branch, valid = second_branch(model, images, torch.Generator().manual_seed(1))
    assert branch.shape == (3, 4, 8, 8) and valid.shape == (3, 1, 8, 8) and valid.any()
    assert model.set_trainable_blocks(1) and not model.backbone_frozen
    assert all(p.requires_grad for p in model.backbone.blocks[-1].parameters())
    assert not any(p.requires_grad for p in model.backbone.blocks[0].parameters())
    assert model.set_trainable_blocks(0) == [] and model.backbone_frozen


# -- learning from image-level labels ------------------------------------------------------------
def miou_against_gt(run: Path, root: Path) -> float:
    pred = predictor_from_checkpoint(read_checkpoint(run / "last.pt"), torch.device("cpu"))
    labels = json.loads((root / "labels.json").read_text())
    conf = np.zeros((4, 4), np.int64)
    for p in sorted((root / "images").glob("*.png")):
        image = np.asarray(Image.open(p).convert("RGB"))
        gt = load_label_map(root / "gt" / p.name).astype(np.int64)
        probs = pred.probabilities(image, [1 + NAMES.index(c) for c in labels[p.name]])
        assert probs.shape == (4, 64, 64)
        conf += np.bincount(4 * gt.ravel() + probs.argmax(0).ravel(), minlength=16).reshape(4, 4)
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    return float(iou.mean())


def test_tiny_vit_learns_shapes_from_image_labels(shapes: Path, tmp_path: Path) -> None:
    cfg = VitPcmConfig(
        images=shapes / "images", out=tmp_path / "run", class_names=NAMES, size=32, batch=8, epochs=20,
        frozen_epochs=2, lr=1e-3, lr_finetune=1e-3, unfreeze=2, lstm_hidden=16, predict_size=32, save_every=1000,
    )  # fmt: skip
    inputs = MethodInputs(labels=read_labels_file(shapes / "labels.json"), backbone=small_vit())
    summary = train(VitPcm(cfg, torch.device("cpu"), inputs))
    assert summary["iteration"] == 60 and summary["frozen_iters"] == 6 and summary["status"] == "finished"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["frozen"] for r in rows[5:7]] == [True, False]
    assert np.mean([r["mce"] for r in rows[-5:]]) < 0.5 * np.mean([r["mce"] for r in rows[:5]])
    miou = miou_against_gt(tmp_path / "run", shapes)
    print(f"synthetic pixel mIoU {miou:.3f}")
    assert miou >= 0.5


# -- CLI, resume, predict ------------------------------------------------------------------------
def train_args(root: Path, backbone: Path, out: Path, *extra: str) -> list[str | Path]:
    return [
        "train-cam", "vitpcm", root / "images", "--labels", root / "labels.json", "--classes", "red,green,blue",
        "--out", out, "--backbone", backbone, "--size", "32", "--batch-size", "8", "--lstm-hidden", "8",
        "--predict-size", "32", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_cli_resume_is_exact_then_predict(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = Cli()
    backbone = tmp_path / "vit.pt"
    torch.save(small_vit().state_dict(), backbone)
    common = ["--epochs", "3", "--frozen-epochs", "1", "--unfreeze", "1", "--save-every", "2"]
    a, b = check_resume_rules(
        monkeypatch, tmp_path, 5, lambda out, *x: cli(*train_args(shapes, backbone, out, *common, *x)), ["--epochs", "4"], "epochs",
        lambda: cli("train-cam", "vitpcm", shapes / "images", "--out", tmp_path / "cut", "--resume", "--device", "cpu"),
    )  # fmt: skip
    assert a["kind"] == b["kind"] == "cam.vitpcm" and a["iteration"] == b["iteration"] == 9
    assert all({"exp_avg", "exp_avg_sq"} <= set(s) for s in b["optimizer"]["state"].values())
    ra, rb = metrics_rows(tmp_path / "full"), metrics_rows(tmp_path / "cut")
    assert [r["iteration"] for r in rb] == list(range(1, 10))
    assert [(r["loss"], r["et"], r["lr"]) for r in ra] == [(r["loss"], r["et"], r["lr"]) for r in rb]
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "finished"

    write_labels(tmp_path / "some.json", {"s000.png": ["red", "blue"], "s001.png": ["green"]})
    out = tmp_path / "pred"
    result = cli("predict", shapes / "images", "--checkpoint", tmp_path / "cut" / "last.pt", "--labels",
                 tmp_path / "some.json", "--out", out, "--no-crf", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["s000.png", "s001.png"]
    mask = load_label_map(out / "masks" / "s001.png")
    assert mask.shape == (64, 64) and set(np.unique(mask).tolist()) <= {0, 2}


def test_cli_bad_options(shapes: Path, tmp_path: Path) -> None:
    cli = Cli()
    backbone = tmp_path / "vit.pt"
    torch.save(small_vit().state_dict(), backbone)
    for extra, words in (
        (["--size", "36"], "--size"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "0"], "--lr"),
    ):
        result = cli(*train_args(shapes, backbone, tmp_path / "bad", *extra))
        assert result.exit_code == 2 and words in result.output, result.output
    result = cli(*train_args(shapes, tmp_path / "missing.pt", tmp_path / "bad"))
    assert result.exit_code == 2 and "--backbone" in result.output


def test_clip_backbone_trains_saves_and_rebuilds(shapes: Path, golden_weights: Path, tmp_path: Path) -> None:
    """--backbone clip: our CLIP's image tower (the golden tiny CLIP, /16 patches), rebuilt from the
    checkpoint alone for predict (no CLIP file needed), giving the same probabilities."""
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.methods.vitpcm import build_model, describe_backbone

    cli = Cli()
    out = tmp_path / "clip"
    result = cli(
        "train-cam", "vitpcm", shapes / "images", "--labels", shapes / "labels.json", "--classes", "red,green,blue",
        "--out", out, "--weights", golden_weights, "--size", "64", "--epochs", "2", "--frozen-epochs", "1",
        "--batch-size", "12", "--lstm-hidden", "8", "--predict-size", "64", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ckpt = read_checkpoint(out / "last.pt")
    desc = ckpt["model_config"]["backbone"]
    assert desc["type"] == "clip" and desc["patch_size"] == 16 and ckpt["iteration"] == 4
    assert describe_backbone(load_clip(golden_weights).visual) == desc
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    pred = predictor_from_checkpoint(ckpt, torch.device("cpu"))
    image = np.asarray(Image.open(shapes / "images" / "s000.png").convert("RGB"))
    probs = pred.probabilities(image, [1, 3])
    assert probs.shape == (4, 64, 64) and np.allclose(probs[2], 0.0)
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    # frozen first epoch: the backbone's first block is never trained, the last one is after the switch
    first = load_clip(golden_weights).visual.float().state_dict()
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    assert torch.equal(ckpt["model"]["backbone." + key], first[key])
    last = f"transformer.resblocks.{desc['depth'] - 1}.mlp.c_fc.weight"
    assert not torch.equal(ckpt["model"]["backbone." + last], first[last])


def test_iters_sets_the_length_instead_of_epochs(shapes: Path, tmp_path: Path) -> None:
    """--iters (the other training commands' unit) overrides --epochs x iterations per epoch."""
    labels = read_labels_file(shapes / "labels.json")
    common = dict(images=shapes / "images", out=tmp_path / "run", class_names=NAMES, size=32, batch=8, epochs=20,
                  frozen_epochs=2, lstm_hidden=8, predict_size=32)  # fmt: skip

    def built(cfg: VitPcmConfig) -> VitPcm:
        method = VitPcm(cfg, torch.device("cpu"), MethodInputs(labels=labels, backbone=small_vit()))
        method.setup(None)
        return method

    by_epochs = built(VitPcmConfig(**common))
    by_iters = built(VitPcmConfig(**common, iters=7))
    assert by_epochs.iters == 20 * by_epochs.iters_per_epoch and by_epochs.iters_per_epoch > 1
    assert by_iters.iters == 7 and by_iters.frozen_iters == by_epochs.frozen_iters
