"""DALNet (`wsss-label train-cam dalnet`): losses vs hand computations, the shared ViT backbone,
localisation on synthetic shapes from image-level labels only, CLI checkpoint / exact resume / predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipseg_cli.clip.model import CLIP
from clipseg_cli.methods import dalnet as D
from clipseg_cli.methods.vit_backbone import TimmViT, build_backbone, forward_tokens, patch_tokens, tiny_vit
from clipseg_cli.segmentation.synthetic import write_shapes_dataset
from tests.conftest import (
    assert_same_weights,
    interrupted_run,
    metrics_rows,
    random_clip_state,
    tiny_config,
    write_labels,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ("red", "green", "blue")


# -- losses against hand computations ------------------------------------------------------------
def test_cam_gmp_and_object_mask() -> None:
    maps = torch.tensor([[[[-1.0, 2.0], [4.0, 1.0]], [[-3.0, -1.0], [-2.0, -5.0]]]])
    cam = D.cam_from_logits(maps)
    assert torch.allclose(cam[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(cam[0, 1], torch.zeros(2, 2))
    assert torch.equal(D.gmp_logits(maps), torch.tensor([[4.0, -1.0]]))
    mask = D.object_mask(cam, torch.tensor([[1.0, 0.0]]), beta=0.5)
    assert torch.equal(mask[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.equal(D.object_mask(cam, torch.tensor([[0.0, 1.0]]), 0.5)[0], torch.zeros(2, 2))


def test_implicit_alignment_eq3() -> None:
    v = torch.tensor([[1.0, 0.0]])
    t_fg = torch.tensor([[1.0, 1.0], [0.0, 2.0]])  # cos 1/sqrt2, 0
    t_bg = torch.tensor([-1.0, 0.0])  # cos -1 -> s = 0 (clamped to 1e-6) -> log(1 - s) ~ 0
    y = torch.tensor([[1.0, 1.0]])
    s1, s2 = (1 + 1 / math.sqrt(2)) / 2, 0.5
    want = -(math.log(s1) + math.log(s2)) - math.log(1 - 1e-6)
    assert D.implicit_alignment_loss(v, t_fg, t_bg, y).item() == pytest.approx(want, rel=1e-5)
    y0 = torch.tensor([[0.0, 1.0]])
    assert D.implicit_alignment_loss(v, t_fg, t_bg, y0).item() == pytest.approx(-math.log(s2) - math.log(1 - 1e-6), rel=1e-5)


def test_explicit_alignment_eqs4_to_6() -> None:
    v_p = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # B=1, N=3
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    t_fg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t_bg = torch.tensor([0.0, -1.0])
    y = torch.tensor([[1.0, 0.0]])
    lam, tau = 0.1, 0.5

    def nce(p: float, n: float) -> float:
        return -math.log(math.exp(p / tau) / (math.exp(p / tau) + math.exp(n / tau)))

    r = 1 / math.sqrt(2)
    # foreground tokens: token0 (pos cos(v,t_red)=1, neg cos(v,t_bg)=0), token1 zero -> (0, 0), token2 (r, -r)
    fg = (nce(1, 0) + nce(0, 0) + nce(r, -r)) / 3
    # background tokens: only token1 = (0, 1): pos cos(v, t_bg) = -1, neg y.cos(v, t_fg) = 0
    bg = (nce(0, 0) + nce(-1, 0) + nce(0, 0)) / 3
    got = D.explicit_alignment_loss(v_p, mask, t_fg, t_bg, y, lam=lam, tau=tau).item()
    assert got == pytest.approx(fg + lam * bg, rel=1e-5)


def test_token_labels_and_patch_contrast() -> None:
    cam = torch.tensor([[[[0.9, 0.1], [0.4, 0.0]], [[0.2, 0.0], [0.0, 0.7]]]])  # C=2, 2x2
    lab = D.token_labels(cam, torch.tensor([[1.0, 1.0]]), low=0.35, high=0.55)
    assert lab.tolist() == [[1, 0, -1, 2]]
    # ToCo's thresholds and comparisons by default: background <= 0.25, class > 0.7 (0.7 itself ignored)
    assert D.token_labels(cam, torch.tensor([[1.0, 1.0]])).tolist() == [[1, 0, -1, -1]]
    edge = torch.tensor([[[[0.25, 0.2501], [0.7, 0.7001]]]])
    assert D.token_labels(edge, torch.tensor([[1.0]])).tolist() == [[0, -1, -1, 1]]
    assert D.token_labels(cam, torch.tensor([[0.0, 1.0]])).tolist() == [[0, 0, 0, -1]]  # only labelled classes count
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [1.0, 1.0]]])
    # valid tokens 0, 1, 3 with labels 1, 0, 2: positives are the 3 self pairs (|cos| 1);
    # negatives 6 ordered pairs: |cos| (0,1)=0, (0,3)=r, (1,3)=r, twice each.
    r = 1 / math.sqrt(2)
    want = 0.5 * (1 - 3 / 4) + 0.5 * (4 * r) / 7
    assert D.patch_contrast_loss(tokens, lab).item() == pytest.approx(want, rel=1e-5)


def test_schedule_warmup_then_poly() -> None:
    cfg = D.TrainConfig(out=Path("x"), iters=100, lr=1.0, warmup=10, warmup_ratio=1e-6, power=0.9)
    assert D.lr_at(cfg, 0) == pytest.approx(1e-6)
    assert D.lr_at(cfg, 5) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert D.lr_at(cfg, 10) == pytest.approx(1.0)
    assert D.lr_at(cfg, 55) == pytest.approx(0.5**0.9)


def test_total_loss_weights() -> None:
    torch.manual_seed(0)
    model = D.DALNet(tiny_vit(width=24, depth=3, heads=2, patch_size=4, grid=4), torch.randn(3, 8), torch.randn(8), backbone_spec="t")
    assert model.inter_block == 1
    out = model(torch.randn(2, 3, 16, 16))
    parts = model.losses(out, torch.tensor([[1.0, 0, 0], [0, 1, 1]]))
    want = parts["cls"] + parts["inter"] + parts["im"] + parts["ex"] + 0.2 * parts["ptc"]
    assert parts["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert parts["cls"].item() == pytest.approx(
        F.multilabel_soft_margin_loss(out["maps"].amax(dim=(2, 3)), torch.tensor([[1.0, 0, 0], [0, 1, 1]])).item()
    )


# -- the shared backbone ---------------------------------------------------------------------------
def test_timm_state_dict_roundtrip_and_interpolation(tmp_path: Path) -> None:
    vit = tiny_vit(width=64, depth=2, heads=1, patch_size=4, grid=4, seed=3)  # 64-d heads: what a file implies
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "blocks.1.attn.qkv.weight",
        "blocks.0.mlp.fc2.bias",
        "norm.weight",
    } <= set(state)
    state["head.weight"] = torch.zeros(10, 64)
    path = tmp_path / "vit.pt"
    torch.save(state, path)
    loaded = build_backbone(str(path), None, torch.device("cpu"))
    assert isinstance(loaded, TimmViT) and len(loaded.blocks) == 2 and loaded.patch_size == 4
    x = torch.randn(1, 3, 24, 32)  # grid 6x8, not the 4x4 of the table
    tokens, grid = patch_tokens(loaded, x)
    assert grid == (6, 8) and tokens.shape == (1, 48, 64)
    assert torch.allclose(tokens, patch_tokens(vit, x)[0])
    cls, patches, _, inter = forward_tokens(vit, torch.randn(2, 3, 16, 16), layers=(0, -1))
    assert cls.shape == (2, 64) and patches.shape == (2, 16, 64) and inter[0].shape == inter[-1].shape == (2, 17, 64)


def test_clip_tower_has_the_same_interface() -> None:
    clip = CLIP(tiny_config(vision_layers=2, vision_width=64, vision_patch_size=16))
    clip.load_state_dict(random_clip_state(vision_layers=2, dtype=torch.float32))
    tokens, grid = patch_tokens(clip.visual, torch.randn(1, 3, 32, 48))
    assert grid == (2, 3) and tokens.shape == (1, 6, 64)


# -- synthetic localisation from image-level labels ----------------------------------------------
def _load_set(root: Path) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    images, gts = [], []
    for p in sorted((root / "images").glob("*.png")):
        images.append(np.array(Image.open(p).convert("RGB")))
        gts.append(np.array(Image.open(root / "gt" / p.name)))
    labels = np.stack([[float((g == c).any()) for c in (1, 2, 3)] for g in gts]).astype(np.float32)
    return images, gts, labels


def cam_miou(predictor: D.DALNetPredictor, images: list[np.ndarray], gts: list[np.ndarray], labels: np.ndarray) -> float:
    inter, union = np.zeros(4), np.zeros(4)
    for image, gt, row in zip(images, gts, labels):
        pred = predictor.probabilities(image, [1 + c for c in range(3) if row[c]]).argmax(axis=0)
        for c in range(4):
            inter[c] += ((pred == c) & (gt == c)).sum()
            union[c] += ((pred == c) | (gt == c)).sum()
    return float((inter / union).mean())


def test_tiny_vit_localises_synthetic_shapes(tmp_path: Path) -> None:
    images, _, labels = _load_set(write_shapes_dataset(tmp_path / "ds", n=64, size=32, num_classes=3, seed=0))
    torch.manual_seed(0)
    model = D.DALNet(
        tiny_vit(width=48, depth=4, heads=3, patch_size=4, grid=8), torch.randn(3, 32), torch.randn(32), backbone_spec="tiny", proj_dim=32
    )
    cfg = D.TrainConfig(out=tmp_path / "run", iters=120, batch=8, lr=1e-3, warmup=20, crop=32, scales=(0.8, 1.2), save_every=0)
    summary = D.train_dalnet(model, images, labels, list(CLASSES), cfg, torch.device("cpu"))
    assert summary["status"] == "finished" and summary["iteration"] == 120
    predictor = D.predictor_from_checkpoint(torch.load(tmp_path / "run" / "last.pt", weights_only=True), torch.device("cpu"))
    # held-out images from another seed
    test_images, test_gts, test_labels = _load_set(write_shapes_dataset(tmp_path / "test", n=24, size=32, num_classes=3, seed=1))
    miou = cam_miou(predictor, test_images, test_gts, test_labels)
    print(f"synthetic CAM mIoU (held-out): {miou:.3f}")
    assert miou >= 0.5


# -- CLI: checkpoint, exact resume, predict --------------------------------------------------------
@pytest.fixture
def cli_setup(tmp_path: Path) -> dict[str, Path]:
    root = write_shapes_dataset(tmp_path / "ds", n=6, size=32, num_classes=3, seed=2)
    gts = {p.stem: np.array(Image.open(p)) for p in sorted((root / "gt").glob("*.png"))}
    labels = write_labels(
        tmp_path / "labels.json", {f"{k}.png": [CLASSES[c - 1] for c in (1, 2, 3) if (g == c).any()] for k, g in gts.items()}
    )
    weights = tmp_path / "clip.pt"
    torch.save(random_clip_state(vision_layers=1), weights)
    backbone = tmp_path / "vit.pt"
    torch.save(tiny_vit(width=64, depth=3, heads=1, patch_size=4, grid=4).state_dict(), backbone)
    return {"images": root / "images", "labels": labels, "weights": weights, "backbone": backbone, "tmp": tmp_path}


def _train(cli, s: dict[str, Path], out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli(
        "train-cam",
        "dalnet",
        s["images"],
        "--labels",
        s["labels"],
        "--classes",
        ",".join(CLASSES),
        "--out",
        out,
        "--backbone",
        s["backbone"],
        "--weights",
        s["weights"],
        "--iters",
        "6",
        "--batch-size",
        "2",
        "--crop",
        "32",
        "--warmup-iters",
        "2",
        "--lr",
        "1e-3",
        "--save-every",
        "2",
        "--device",
        "cpu",
        *extra,
    )


def test_cli_checkpoint_resume_exact_and_predict(cli, cli_setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    s = cli_setup
    full = s["tmp"] / "full"
    assert _train(cli, s, full).exit_code == 0
    ck = torch.load(full / "last.pt", weights_only=True)
    assert ck["kind"] == "cam.dalnet" and ck["iteration"] == 6 and ck["class_names"] == list(CLASSES)
    assert json.loads((full / "run.json").read_text())["status"] == "finished"

    part = s["tmp"] / "part"
    interrupted_run(monkeypatch, 3, part, lambda: _train(cli, s, part))  # exit 130, last.pt at iteration 3
    assert _train(cli, s, part).exit_code != 0  # refuses to overwrite without --resume
    assert _train(cli, s, part, "--resume").exit_code == 0
    assert_same_weights(full / "last.pt", part / "last.pt")
    rows = metrics_rows(part)
    assert [r["iteration"] for r in rows] == list(range(1, 7))
    full_rows = metrics_rows(full)
    # every value but the wall-clock "seconds" (which the engine logs per iteration) is equal
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in full_rows
    ]

    masks = s["tmp"] / "pred"
    result = cli(
        "predict",
        s["images"],
        "--checkpoint",
        full / "last.pt",
        "--labels",
        s["labels"],
        "--out",
        masks,
        "--scales",
        "1",
        "--no-crf",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    written = sorted((masks / "masks").glob("*.png"))
    assert len(written) == 6
    assert np.array(Image.open(written[0])).shape == (32, 32)


def test_cli_clip_backbone_and_errors(cli, cli_setup: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    s = cli_setup
    weights = s["tmp"] / "clip2.pt"
    torch.save(random_clip_state(vision_layers=3), weights)
    out = s["tmp"] / "clip-run"
    result = _train(cli, s, out, "--backbone", "clip", "--weights", weights, "--iters", "2", "--batch-size", "1",
                    "--warmup-iters", "1", "--lr", "6e-5", "--save-every", "1000")  # fmt: skip
    assert result.exit_code == 0, result.output
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["model_config"]["arch"] == "clip" and ck["model_config"]["inter_block"] == 1
    predictor = D.predictor_from_checkpoint(ck, torch.device("cpu"))
    probs = predictor.probabilities(np.zeros((40, 50, 3), np.uint8), [2])
    assert probs.shape == (4, 40, 50) and np.allclose(probs.sum(axis=0), 1) and (probs[1] == 0).all()

    bad = _train(cli, s, s["tmp"] / "bad", "--seg-head")
    assert bad.exit_code != 0 and "seg-head" in bad.output
    bad = _train(cli, s, s["tmp"] / "bad2", "--backbone", s["tmp"] / "nope.pt")
    assert bad.exit_code != 0 and "neither 'clip' nor a file" in bad.output
