"""The CAM baseline (`wsss-label train-cam cam`): GAP logits and the multi-label soft margin loss by
hand, frozen stages and BatchNorm, IRN's schedule and crops, IRN's make_cam in predict, learning on
synthetic shapes, exact resume and predict through the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipseg_cli.data.labels import read_labels_file
from clipseg_cli.inference import InferenceOptions
from clipseg_cli.io.masks import load_label_map
from clipseg_cli.methods.base import MethodInputs
from clipseg_cli.methods.cam import Cam, CamConfig, CamPredictor, ResNetCAM
from clipseg_cli.segmentation.augment import place_crop, resize_long
from clipseg_cli.segmentation.deeplab import IMAGENET_NORM
from clipseg_cli.training.checkpoint import read_checkpoint
from clipseg_cli.training.engine import train
from tests.conftest import check_resume_rules, invoke, labelled_shapes, metrics_rows, one_error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_shapes(tmp_path_factory.mktemp("cam"), 6, 40, NAMES, seed=4, fill_empty=True)


def cli_args(data: Path, out: Path, *extra: object) -> list[object]:
    return ["train-cam", "cam", data / "images", "--labels", data / "labels.json", "--classes", ",".join(NAMES),
            "--arch", "resnet18", "--crop", "32", "--batch-size", "2", "--frozen-stages", "0", "--lr", "0.01",
            "--device", "cpu", "--out", out, *extra]  # fmt: skip


# -- the network and its loss by hand ------------------------------------------------------------
def test_gap_logits_cams_and_soft_margin_loss_by_hand(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ResNetCAM(18, 3).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        feats = net.backbone(x)  # (2, 512, 3, 4): output stride 16
        w = net.classifier.weight[:, :, 0, 0]  # (3, 512), no bias
        assert feats.shape == (2, 512, 3, 4) and net.classifier.bias is None
        want_logits = feats.mean(dim=(2, 3)) @ w.T
        assert torch.allclose(net.logits(x), want_logits, atol=1e-5)
        want_cams = torch.einsum("bdhw,kd->bkhw", feats, w).clamp(min=0)
        assert torch.allclose(net.cams(x), want_cams, atol=1e-5) and torch.equal(net(x), net.cams(x))

    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    method = Cam(CamConfig(out=tmp_path, class_names=NAMES), "cpu")
    method.model = net
    loss, _ = method.loss({"image": x, "labels": y}, 0)
    z = want_logits.tolist()
    by_hand = 0.0
    for zi, yi in zip(z, y.tolist()):  # multi-label soft margin: mean over classes, then over images
        by_hand += -sum(t * math.log(1 / (1 + math.exp(-v))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-v))) for v, t in zip(zi, yi)) / 3
    assert loss.item() == pytest.approx(by_hand / 2, rel=1e-5)


def test_frozen_stages_get_no_gradient_and_batchnorm_statistics_stay() -> None:
    torch.manual_seed(0)
    net = ResNetCAM(18, 3, frozen_stages=2).train()
    b = net.backbone
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = b.layer3[0].bn1.running_mean.clone()
    net.logits(torch.randn(2, 3, 32, 32)).sum().backward()
    assert torch.equal(b.layer3[0].bn1.running_mean, before)
    for frozen in (b.conv1, b.bn1, b.layer1, b.layer2):
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert all(p.grad is not None for p in (*b.layer3.parameters(), *b.layer4.parameters(), net.classifier.weight))
    backbone, head = net.trainable()
    n_trainable = sum(1 for _ in (*b.layer3.parameters(), *b.layer4.parameters()))
    assert len(backbone) == n_trainable and head == [net.classifier.weight]


def test_irn_schedule_and_optimizer(data: Path, tmp_path: Path) -> None:
    cfg = CamConfig(images=data / "images", out=tmp_path, class_names=NAMES, arch="resnet18", iters=10, lr=0.1, frozen_stages=1)
    method = Cam(cfg, "cpu", MethodInputs(labels=read_labels_file(data / "labels.json")))
    method.setup(None)
    opt = method.optimizer
    assert [g["momentum"] for g in opt.param_groups] == [0.0, 0.0]  # IRN's PolyOptimizer: no momentum
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-4]
    for it in (0, 3, 9, 10):
        method.schedule(it)
        lr = 0.1 * (1 - it / 10) ** 0.9
        assert opt.param_groups[0]["lr"] == pytest.approx(lr) and opt.param_groups[1]["lr"] == pytest.approx(10 * lr)
    assert not any(p.requires_grad for p in method.model.backbone.layer1.parameters())


def test_irn_crop_and_long_side() -> None:
    image = np.arange(3 * 5 * 2, dtype=np.float32).reshape(3, 5, 2) + 1  # no zeros inside
    for seed in range(6):
        out, valid = place_crop(image, 4, np.random.default_rng(seed))
        assert out.shape == (4, 4, 2) and valid.sum() == 3 * 4  # all 3 rows, a window of 4 of the 5 columns
        rows = np.flatnonzero(valid.any(axis=1))
        assert len(rows) == 3 and rows[-1] - rows[0] == 2  # the 3 rows kept together, somewhere in the 4
        inside = out[rows[0] : rows[0] + 3]
        assert any(np.array_equal(inside, image[:, c : c + 4]) for c in (0, 1))
        assert (out[valid == 0] == 0).all()
    assert resize_long(np.zeros((30, 60, 3), np.uint8), 90).shape == (45, 90, 3)
    assert resize_long(np.zeros((80, 20, 3), np.uint8), 40).shape == (40, 10, 3)


def test_predictor_is_irns_make_cam() -> None:
    """Each view's maps upsampled to the image rounded up to a multiple of 16, cropped, summed over
    scales and flips, divided by the class max (+1e-5); background the constant threshold."""
    torch.manual_seed(0)
    net = ResNetCAM(18, 2)
    ramp = torch.stack([torch.arange(12.0).reshape(3, 4), torch.ones(3, 4)])[None]  # (1, 2, 3, 4) at any input

    def fake_cams(x: torch.Tensor) -> torch.Tensor:
        return ramp.expand(x.shape[0], -1, -1, -1).clone()

    net.cams = fake_cams  # type: ignore[method-assign]
    image = np.zeros((40, 60, 3), np.uint8)  # rounded up: 48 x 64
    pred = CamPredictor(net, IMAGENET_NORM, ["a", "b"], torch.device("cpu"), InferenceOptions((1.0, 0.5), True), 0.3, {})
    one = F.interpolate(ramp, size=(48, 64), mode="bilinear", align_corners=False)[0, :, :40, :60]
    flipped = F.interpolate(ramp.flip(-1), size=(48, 64), mode="bilinear", align_corners=False)[0, :, :40, :60]
    total = 2 * (one + flipped)  # two scales, same maps
    want = total / (total.flatten(1).amax(1).view(-1, 1, 1) + 1e-5)
    assert np.allclose(pred.cams(image), want.numpy(), atol=1e-6)
    probs = pred.probabilities(image, [1])
    assert probs.shape == (3, 40, 60) and probs[2].max() == 0 and np.allclose(probs.sum(0), 1, atol=1e-6)
    assert np.array_equal(probs.argmax(0) == 1, want[0].numpy() > 0.3)  # class where its CAM beats the threshold


# -- learning --------------------------------------------------------------------------------------
def test_learns_to_classify_and_point_at_synthetic_shapes(tmp_path: Path) -> None:
    """A random-init ResNet-18 from image-level labels only: held-out images classified, and each
    present class's CAM peak inside that class's ground truth."""
    root = labelled_shapes(tmp_path / "train", 40, 48, NAMES, seed=0)
    test = labelled_shapes(tmp_path / "test", 16, 48, NAMES, seed=1)
    cfg = CamConfig(images=root / "images", out=tmp_path / "run", class_names=NAMES, arch="resnet18", iters=60, batch=8,
                    crop=48, lr=0.005, frozen_stages=0, save_every=1000)  # fmt: skip
    summary = train(Cam(cfg, "cpu", MethodInputs(labels=read_labels_file(root / "labels.json"))))
    assert summary["status"] == "finished"
    rows = metrics_rows(tmp_path / "run")
    assert np.mean([r["loss"] for r in rows[-10:]]) < 0.85 * np.mean([r["loss"] for r in rows[:10]])
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    pred = Cam.load_predictor(ckpt, torch.device("cpu"), InferenceOptions((1.0, 2.0), True))
    labels = json.loads((test / "labels.json").read_text())
    right = hits = present = 0
    for name, classes in labels.items():
        image = np.asarray(Image.open(test / "images" / name).convert("RGB"))
        gt = load_label_map(test / "gt" / name)
        with torch.no_grad():
            scores = pred.net.logits(torch.from_numpy(IMAGENET_NORM.apply(image))[None])[0]
        right += int(((scores > 0).numpy() == np.isin(NAMES, classes)).all())
        cams = pred.cams(image)
        for c in classes:
            k = NAMES.index(c)
            present += 1
            hits += int(gt.flat[cams[k].argmax()] == k + 1)
    print(f"synthetic: {right}/{len(labels)} images classified exactly, {hits}/{present} CAM peaks inside their class")
    # chance: 1 image in 8 (three labels of about even odds); a peak lands in its class on ~15% of the pixels
    assert right >= 0.25 * len(labels) and hits >= 0.7 * present


# -- the command line --------------------------------------------------------------------------------
def test_cli_resume_exact_then_predict(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--iters", "4", "--save-every", "3"]
    a, b = check_resume_rules(
        monkeypatch, tmp_path, 2, lambda out, *x: invoke(*cli_args(data, out, *common, *x)), ["--lr", "0.5"], "lr",
        lambda: invoke("train-cam", "cam", data / "images", "--out", tmp_path / "cut", "--resume", "--device", "cpu"),
    )  # fmt: skip
    assert a["kind"] == b["kind"] == "cam.cam" and a["iteration"] == b["iteration"] == 4
    assert a["model_config"]["frozen_stages"] == 0 and a["model_config"]["bg_threshold"] == 0.15
    assert set(a["image_labels"]) == {Path(k).stem for k in json.loads((data / "labels.json").read_text())}
    out = tmp_path / "pred"
    pred = invoke("predict", data / "images", "--checkpoint", tmp_path / "cut" / "last.pt", "--out", out, "--no-crf",
                  "--scales", "1,0.5", "--flip", "--device", "cpu")  # fmt: skip
    assert pred.exit_code == 0, pred.output
    for name, classes in json.loads((data / "labels.json").read_text()).items():
        mask = load_label_map(out / "masks" / name)
        assert mask.shape == (40, 40) and set(np.unique(mask).tolist()) <= {0} | {1 + NAMES.index(c) for c in classes}


@pytest.mark.parametrize("extra, words", [(["--resize-long", "1.2,0.5"], "--resize-long"), (["--frozen-stages", "5"], "--frozen-stages"),
                                          (["--arch", "vgg16"], "vgg16"), (["--init", "missing.pth"], "--init")])  # fmt: skip
def test_bad_options_are_one_line_errors(extra: list[str], words: str, data: Path, tmp_path: Path) -> None:
    result = invoke(*cli_args(data, tmp_path / "run", "--iters", "1", *extra))
    assert result.exit_code == 2 and words in one_error_line(result)
