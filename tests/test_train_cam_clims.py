"""CLIMS (`wsss-label train-cam clims`): losses against hand computations, gradients reach the CAM
network and never CLIP, exact resume, and `wsss-label predict --labels` on its checkpoint."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_cli.methods import clims
from tests.conftest import check_resume_rules, invoke, labelled_shapes, metrics_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["boat", "train", "cat"]  # boat and train have background prompts in the data file


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_shapes(tmp_path_factory.mktemp("shapes"), 4, 40, NAMES, seed=2, fill_empty=True)


def train_args(data: Path, weights: Path, out: Path, *extra: object) -> list[object]:
    return [
        "train-cam", "clims", data / "images", "--labels", data / "labels.json", "--classes", ",".join(NAMES),
        "--weights", weights, "--arch", "resnet18", "--crop", "32", "--clip-size", "32", "--batch-size", "2",
        "--scales", "0.75,1", "--device", "cpu", "--out", out, *extra,
    ]  # fmt: skip


# -- losses vs hand computation ------------------------------------------------------------------
S = torch.tensor([[0.30, 0.20, 0.50], [0.10, -0.20, 0.40]])
Y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
LO = math.log(1e-4)  # the clamp of a cosine <= 0


def test_otm_btm_by_hand() -> None:
    otm_sum = -(math.log(0.30) + math.log(0.50) + LO)
    assert clims.otm_loss(S, Y, "mean").item() == pytest.approx(otm_sum / 3, rel=1e-5)
    assert clims.otm_loss(S, Y, "sum").item() == pytest.approx(otm_sum / 2, rel=1e-5)  # per image
    btm_sum = -(math.log(0.70) + math.log(0.50) + math.log(1 - 1e-4))  # 1 - (-0.2) = 1.2 clamps
    assert clims.btm_loss(S, Y, "mean").item() == pytest.approx(btm_sum / 3, rel=1e-5)
    assert clims.btm_loss(S, Y, "sum").item() == pytest.approx(btm_sum / 2, rel=1e-5)


def test_cbs_and_reg_by_hand() -> None:
    s_ob = torch.tensor([[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [[0.7, 0.8], [0.25, 0.35], [0.9, 0.95]]])
    valid = torch.tensor([[True, True], [True, False], [False, False]])  # class 2 has no prompts
    # image 0: class 0 (both prompts), class 2 (none); image 1: class 1 (first prompt only)
    total = -(math.log(0.9) + math.log(0.8) + math.log(0.75))
    # the authors' code: per labelled (image, class) pair the mean over its prompts, summed over pairs
    per_pair = -(math.log(0.9) + math.log(0.8)) / 2 - math.log(0.75)
    assert clims.cbs_loss(s_ob, Y, valid, "mean").item() == pytest.approx(per_pair, rel=1e-5)
    assert clims.cbs_loss(s_ob, Y, valid, "sum").item() == pytest.approx(total / 2, rel=1e-5)  # eq. 10, per image
    cams = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]]])  # (1, K=2, 2, 2)
    assert clims.reg_loss(cams).item() == pytest.approx((0.75 + 0.5) / 2)  # 1/K sum_k S_k
    sims = {"s_oo": S, "s_bo": S, "s_ob": s_ob}
    opts = {**clims.OPTIONS, "alpha": 2.0, "beta": 3.0, "gamma": 5.0, "delta": 7.0}
    loss, parts = clims.clims_loss(sims, cams, Y, valid, opts)
    expect = 2 * parts["otm"] + 3 * parts["btm"] + 5 * parts["cbs"] + 7 * parts["reg"]
    assert loss.item() == pytest.approx(expect, rel=1e-5)


def test_background_prompts_are_the_papers_or_the_users(tmp_path: Path) -> None:
    from clipseg_cli.errors import ConfigError

    # section 4.3 lists boat and train only; no other class gets words of ours
    boat, train, person, cat = clims.background_prompts(["Boat", "train", "person", "cat"])
    assert boat == ["river", "sea", "lake"] and train == ["railroad", "railway", "tree"] and person == cat == []
    assert not any(clims.background_prompts(["aeroplane", "tvmonitor", "person", "sofa", "dog"]))
    mine = tmp_path / "bg.json"
    mine.write_text(json.dumps({"Cat": ["sofa", "bed"], "boat": ["harbour"]}))
    assert clims.background_prompts(["boat", "train", "cat"], mine) == [["harbour"], [], ["sofa", "bed"]]
    mine.write_text(json.dumps({"classes": {"train": ["station"]}}))  # the shipped file's layout
    assert clims.background_prompts(["boat", "train"], mine) == [[], ["station"]]
    for text, words in [('{"unicorn": ["meadow"]}', "unicorn"), ("{not json", "not JSON"), ('{"cat": "sofa"}', "expected"),
                        ('["sofa"]', "expected")]:  # fmt: skip
        mine.write_text(text)
        with pytest.raises(ConfigError, match=words):
            clims.background_prompts(["boat", "train", "cat"], mine)


# -- gradients: CAM network yes, CLIP never --------------------------------------------------------
def clip_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_gradients_reach_cam_net_never_clip(golden_weights: Path) -> None:
    from clipseg_cli.clip.loading import load_clip

    clip = load_clip(golden_weights, "cpu")
    before = clip_digest(clip)
    torch.manual_seed(0)
    net = clims.CAMNet(18, len(NAMES))
    evaluator = clims.ClimsEvaluator(clip, NAMES, clims.background_prompts(NAMES), clip_size=32)
    assert evaluator.text_bg.shape[:2] == (3, 3) and evaluator.bg_valid.sum() == 6  # boat 3, train 3, cat none
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    images = torch.randn(2, 3, 32, 32)
    rgb = torch.rand(2, 3, 32, 32)
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    cams = net(images)
    assert cams.shape == (2, 3, 2, 2) and 0 < cams.min() and cams.max() < 1
    sims = evaluator.similarities(rgb, cams, y)
    loss, _ = clims.clims_loss(sims, cams, y, evaluator.bg_valid, clims.OPTIONS)
    loss.backward()
    assert net.classifier.weight.grad is not None and net.classifier.weight.grad.abs().sum() > 0
    assert net.backbone.conv1.weight.grad is not None and net.backbone.conv1.weight.grad.abs().sum() > 0
    # the CLIP terms alone also reach the CAM network (through the frozen CLIP)
    net.zero_grad()
    cams = net(images)
    clims.otm_loss(evaluator.similarities(rgb, cams, y)["s_oo"], y).backward()
    assert net.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in clip.parameters())
    optimizer.step()
    assert clip_digest(clip) == before


# -- training, resume, predict through the CLI ---------------------------------------------------
def test_train_resume_exact_and_predict(data: Path, golden_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from clipseg_cli.clip.loading import load_clip

    clip_before = clip_digest(load_clip(golden_weights, "cpu"))
    common = ["--iters", "4", "--lr", "1e-2", "--save-every", "3"]
    a, b = check_resume_rules(
        monkeypatch, tmp_path, 2, lambda out, *x: invoke(*train_args(data, golden_weights, out, *common, *x)), ["--alpha", "3"],
        "alpha", lambda: invoke("train-cam", "clims", data / "images", "--out", tmp_path / "cut", "--resume", "--device", "cpu"),
    )  # fmt: skip
    assert a["kind"] == b["kind"] == "cam.clims" and a["iteration"] == b["iteration"] == 4
    assert a["model_config"]["options"]["alpha"] == 10.0 and a["model_config"]["bg_prompts"][0] == ["river", "sea", "lake"]
    assert all("momentum_buffer" in s for s in b["optimizer"]["state"].values())
    rows, full_rows = metrics_rows(tmp_path / "cut"), metrics_rows(tmp_path / "full")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [r["loss"] for r in full_rows]
    assert {"otm", "btm", "cbs", "reg"} <= set(rows[0])
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["status"] == "finished" and run["kind"] == "cam.clims"
    assert clip_digest(load_clip(golden_weights, "cpu")) == clip_before

    labels = json.loads((data / "labels.json").read_text())
    out = tmp_path / "pred"
    pred = invoke("predict", data / "images", "--checkpoint", tmp_path / "full" / "last.pt",
                  "--labels", data / "labels.json", "--out", out, "--no-crf", "--scales", "1", "--device", "cpu")  # fmt: skip
    assert pred.exit_code == 0, pred.output
    for name, classes in labels.items():
        mask = np.asarray(Image.open(out / "masks" / name.replace(".png", ".png")))
        allowed = {0} | {1 + NAMES.index(c) for c in classes}
        assert set(np.unique(mask).tolist()) <= allowed, (name, np.unique(mask))
        assert mask.shape == (40, 40)


def test_predictor_probabilities_and_threshold(data: Path) -> None:
    torch.manual_seed(0)
    net = clims.CAMNet(18, 3)
    from clipseg_cli.inference import InferenceOptions
    from clipseg_cli.segmentation.deeplab import IMAGENET_NORM

    image = np.asarray(Image.open(next((data / "images").glob("*.png"))).convert("RGB"))
    pred = clims.ClimsPredictor(net, IMAGENET_NORM, NAMES, torch.device("cpu"), InferenceOptions((1.0,), True), 0.15, {})
    probs = pred.probabilities(image, [2])
    assert probs.shape == (4, 40, 40) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert probs[1].max() == 0 and probs[3].max() == 0 and probs[2].max() > probs[0].min()
    all_bg = clims.ClimsPredictor(net, IMAGENET_NORM, NAMES, torch.device("cpu"), InferenceOptions((1.0,)), 1.01, {})
    assert all_bg.probabilities(image, [1, 3]).argmax(0).max() == 0  # threshold above every CAM


@pytest.mark.parametrize("patch", [16, 32])
def test_evaluator_matches_a_hand_built_pair(patch: int, golden_weights: Path, tmp_path: Path) -> None:
    """s_oo / s_bo / s_ob of one labelled (image, class) pair = cosines of CLIP's class-token
    embedding of X*P_k and X*(1-P_k) (both at CLIP's input size) with the class's text features;
    for ViT-B/16's layout (the golden CLIP) and ViT-B/32's (the authors' evaluator), random weights."""
    import torch.nn.functional as F

    from clipseg_cli.cam.preprocess import CLIP_MEAN, CLIP_STD
    from clipseg_cli.clip.loading import load_clip
    from tests.conftest import random_clip_state

    weights = golden_weights
    if patch == 32:
        weights = tmp_path / "vit-b-32-layout.pt"
        torch.save(random_clip_state(seed=3, vision_patch_size=32), weights)
    clip = load_clip(weights, "cpu")
    assert clip.visual.patch_size == patch
    side = 2 * patch  # a 2x2 patch grid
    ev = clims.ClimsEvaluator(clip, NAMES, clims.background_prompts(NAMES), clip_size=side)
    assert ev.clip_size == side
    torch.manual_seed(1)
    rgb, cams = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 5, 5)
    y = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # image 1, class "train" (it has background words)
    with torch.no_grad():
        sims = ev.similarities(rgb, cams, y)
        x = F.interpolate(rgb[1:], size=(side, side), mode="bilinear", align_corners=False)
        p = F.interpolate(cams[1:, 1:2], size=(side, side), mode="bilinear", align_corners=False)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        v_io = clims.clip_image_embedding(clip.visual, (x * p - mean) / std)[0]
        v_ib = clims.clip_image_embedding(clip.visual, (x * (1 - p) - mean) / std)[0]
    assert v_io.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert sims["s_oo"][1, 1].item() == pytest.approx(float(v_io @ ev.text_obj[1]), abs=1e-5)
    assert sims["s_bo"][1, 1].item() == pytest.approx(float(v_ib @ ev.text_obj[1]), abs=1e-5)
    assert torch.allclose(sims["s_ob"][1, 1], ev.text_bg[1] @ v_io, atol=1e-5)
    untouched = torch.ones(2, 3, dtype=torch.bool)
    untouched[1, 1] = False
    assert torch.all(sims["s_oo"][untouched] == 0.5)


def test_predictor_caa_on_clip_attention(data: Path, golden_weights: Path) -> None:
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.inference import InferenceOptions
    from clipseg_cli.segmentation.deeplab import IMAGENET_NORM

    torch.manual_seed(0)
    net = clims.CAMNet(18, 3)
    image = np.asarray(Image.open(next((data / "images").glob("*.png"))).convert("RGB"))
    cpu, opts = torch.device("cpu"), InferenceOptions((1.0,))
    plain = clims.ClimsPredictor(net, IMAGENET_NORM, NAMES, cpu, opts, 0.15, {})
    caa = clims.ClimsPredictor(net, IMAGENET_NORM, NAMES, cpu, opts, 0.15, {}, load_clip(golden_weights, "cpu"), 0.4)
    a, b = plain.probabilities(image, [1, 3]), caa.probabilities(image, [1, 3])
    assert b.shape == a.shape == (4, 40, 40) and np.allclose(b.sum(0), 1, atol=1e-5)
    assert b[2].max() == 0 and not np.allclose(a, b)


def test_init_from_torchvision_layout_file(tmp_path: Path) -> None:
    from clipseg_cli.errors import ConfigError
    from clipseg_cli.segmentation.resnet import ResNet

    torch.manual_seed(3)
    sd = ResNet(18).state_dict()
    path = tmp_path / "resnet18-test.pth"
    torch.save({**sd, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    net, norm, note = clims.build_camnet("resnet18", NAMES, path)
    assert "torchvision ResNet-18" in note and norm.mean[0] == pytest.approx(123.675)
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k
    with pytest.raises(ConfigError, match="ResNet-18"):
        clims.build_camnet("resnet50", NAMES, path)


def test_init_from_a_cam_run_takes_backbone_and_classifier(data: Path, golden_weights: Path, tmp_path: Path) -> None:
    """`train-cam clims --init RUN/last.pt` of `train-cam cam`: the CLIMS run starts from that network
    (backbone and classifier bit for bit, the run's normalisation); other classes or arch refused."""
    from clipseg_cli.errors import ConfigError

    cam_args = ["train-cam", "cam", data / "images", "--labels", data / "labels.json", "--classes", ",".join(NAMES), "--arch",
                "resnet18", "--crop", "32", "--batch-size", "2", "--frozen-stages", "0", "--iters", "2", "--device", "cpu"]  # fmt: skip
    cam = invoke(*cam_args, "--out", tmp_path / "cam")
    assert cam.exit_code == 0, cam.output
    cam_ckpt = torch.load(tmp_path / "cam" / "last.pt", weights_only=True)
    net, norm, note = clims.build_camnet("resnet18", NAMES, tmp_path / "cam" / "last.pt")
    assert "backbone and classifier" in note and norm.to_dict() == cam_ckpt["model_config"]["normalization"]
    assert net.state_dict().keys() == cam_ckpt["model"].keys()
    for k, v in net.state_dict().items():
        assert torch.equal(v, cam_ckpt["model"][k]), k
    x = torch.randn(1, 3, 32, 32)
    ref = clims.ResNetCAM(18, 3).eval()
    ref.load_state_dict(cam_ckpt["model"])
    with torch.no_grad():  # CLIMS's maps are the sigmoid of the CAM network's class maps
        assert torch.allclose(net.eval()(x), torch.sigmoid(ref.class_maps(x)), atol=1e-6)
    with pytest.raises(ConfigError, match="classes"):
        clims.build_camnet("resnet18", ["boat", "cat", "train"], tmp_path / "cam" / "last.pt")
    with pytest.raises(ConfigError, match="--arch resnet18"):
        clims.build_camnet("resnet50", NAMES, tmp_path / "cam" / "last.pt")
    run = invoke(*train_args(data, golden_weights, tmp_path / "clims", "--iters", "1", "--init", tmp_path / "cam" / "last.pt"))
    assert run.exit_code == 0, run.output
    assert "train-cam cam" in json.loads((tmp_path / "clims" / "run.json").read_text())["init"]


def test_bad_inputs_are_one_line_errors(data: Path, golden_weights: Path, tmp_path: Path) -> None:
    no_labels = invoke("train-cam", "clims", data / "images", "--out", tmp_path / "r", "--weights", golden_weights)
    assert no_labels.exit_code == 2 and "--labels" in no_labels.output and "Traceback" not in no_labels.output
    bad = invoke(*train_args(data, golden_weights, tmp_path / "r2", "--reduction", "median"))
    assert bad.exit_code == 2 and "--reduction" in bad.output
    arch = invoke(*train_args(data, golden_weights, tmp_path / "r3", "--arch", "vgg16"))
    assert arch.exit_code == 2 and "vgg16" in arch.output
