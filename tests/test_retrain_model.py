"""DeepLabV2 structure and --init loading (torchvision and deeplab-pytorch key layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipseg_cli.errors import ConfigError
from clipseg_cli.segmentation.deeplab import ASPP, ASPP_RATES, CAFFE_NORM, IMAGENET_NORM, build_deeplabv2
from clipseg_cli.segmentation.init_weights import apply_init, read_init

BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bn(sd: dict, prefix: str, c: int) -> None:
    sd[f"{prefix}.weight"] = torch.rand(c) + 0.5
    sd[f"{prefix}.bias"] = torch.randn(c)
    sd[f"{prefix}.running_mean"] = torch.randn(c)
    sd[f"{prefix}.running_var"] = torch.rand(c) + 0.5
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)


def torchvision_resnet(depth: int, classes: int = 1000) -> dict[str, torch.Tensor]:
    """Random values under torchvision's ResNet keys and shapes (written from its layout, not ours)."""
    sd: dict[str, torch.Tensor] = {"conv1.weight": torch.randn(64, 3, 7, 7)}
    _bn(sd, "bn1", 64)
    bottleneck = depth >= 50
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth]), 1):
        out = planes * 4 if bottleneck else planes
        for j in range(n):
            p = f"layer{i}.{j}"
            if bottleneck:
                sd[f"{p}.conv1.weight"] = torch.randn(planes, cin, 1, 1)
                sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3)
                sd[f"{p}.conv3.weight"] = torch.randn(out, planes, 1, 1)
                for k, c in ((1, planes), (2, planes), (3, out)):
                    _bn(sd, f"{p}.bn{k}", c)
            else:
                sd[f"{p}.conv1.weight"] = torch.randn(planes, cin, 3, 3)
                sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3)
                _bn(sd, f"{p}.bn1", planes)
                _bn(sd, f"{p}.bn2", planes)
            if j == 0 and (i > 1 or cin != out):
                sd[f"{p}.downsample.0.weight"] = torch.randn(out, cin, 1, 1)
                _bn(sd, f"{p}.downsample.1", out)
            cin = out
    sd["fc.weight"] = torch.randn(classes, cin)
    sd["fc.bias"] = torch.randn(classes)
    return sd


def deeplab_pytorch_resnet(blocks: tuple[int, ...], classes: int = 91, prefix: str = "", aspp: int = 0) -> dict[str, torch.Tensor]:
    """Random values under kazuto1011/deeplab-pytorch's key names (Caffe-converted DeepLab)."""
    sd: dict[str, torch.Tensor] = {f"{prefix}layer1.conv1.conv.weight": torch.randn(64, 3, 7, 7)}
    _bn(sd, f"{prefix}layer1.conv1.bn", 64)
    cin = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), 2):
        out = planes * 4
        for b in range(1, n + 1):
            p = f"{prefix}layer{stage}.block{b}"
            parts = [("reduce", planes, cin, 1), ("conv3x3", planes, planes, 3), ("increase", out, planes, 1)]
            if b == 1:
                parts.append(("shortcut", out, cin, 1))
            for name, co, ci, k in parts:
                sd[f"{p}.{name}.conv.weight"] = torch.randn(co, ci, k, k)
                _bn(sd, f"{p}.{name}.bn", co)
            cin = out
    if classes:
        sd[f"{prefix}fc.weight"] = torch.randn(classes, 2048, 1, 1)
        sd[f"{prefix}fc.bias"] = torch.randn(classes)
    for i in range(aspp):
        sd[f"{prefix}aspp.c{i}.weight"] = torch.randn(21, 2048, 3, 3)
        sd[f"{prefix}aspp.c{i}.bias"] = torch.randn(21)
    return sd


@pytest.mark.parametrize("size", [64, 65, 96])
def test_output_stride_is_8(size: int) -> None:
    model = build_deeplabv2("deeplabv2-resnet18", 5).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, size, size))
        logits = model(torch.zeros(1, 3, size, size))
    expect = (size + 7) // 8
    assert feats.shape == (1, 512, expect, expect)
    assert logits.shape == (1, 5, expect, expect)


def test_dilations_of_the_stages() -> None:
    bb = build_deeplabv2("deeplabv2-resnet50", 3).backbone
    assert bb.layer2[0].conv2.stride == (2, 2)  # torchvision style: stride in the 3x3
    assert all(b.conv2.dilation == (2, 2) and b.conv2.stride == (1, 1) for b in bb.layer3)
    assert all(b.conv2.dilation == (4, 4) and b.conv2.stride == (1, 1) for b in bb.layer4)
    assert bb.layer3[0].downsample[0].stride == (1, 1)


def test_aspp_sums_four_dilated_convolutions() -> None:
    torch.manual_seed(0)
    aspp = ASPP(16, 4)
    for conv in aspp.convs:
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 16, 30, 30)
    expected = sum(F.conv2d(x, c.weight, c.bias, padding=r, dilation=r) for c, r in zip(aspp.convs, ASPP_RATES))
    assert [c.dilation[0] for c in aspp.convs] == [6, 12, 18, 24]
    assert [c.kernel_size for c in aspp.convs] == [(3, 3)] * 4
    torch.testing.assert_close(aspp(x), expected)


def test_torchvision_resnet101_loads_strictly(tmp_path: Path) -> None:
    sd = torchvision_resnet(101)
    path = tmp_path / "resnet101.pth"
    torch.save(sd, path)
    init = read_init(path)
    assert (init.source, init.depth, init.style, init.norm) == ("torchvision", 101, "pytorch", IMAGENET_NORM)
    model = build_deeplabv2("deeplabv2-resnet101", 21, init.style)
    note = apply_init(model, init, "deeplabv2-resnet101")
    assert "ResNet-101" in note
    assert torch.equal(model.backbone.layer3[22].conv3.weight, sd["layer3.22.conv3.weight"])
    assert torch.equal(model.backbone.layer1[0].downsample[1].running_var, sd["layer1.0.downsample.1.running_var"])
    assert torch.equal(model.backbone.conv1.weight, sd["conv1.weight"])


def test_wrapped_and_prefixed_state_dicts_load(tmp_path: Path) -> None:
    sd = torchvision_resnet(18)
    del sd["bn1.num_batches_tracked"]  # old torchvision files lack these
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = build_deeplabv2("deeplabv2-resnet18", 3)
    apply_init(model, read_init(path), "deeplabv2-resnet18")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])


def test_key_or_shape_mismatch_is_a_config_error(tmp_path: Path) -> None:
    sd = torchvision_resnet(18)
    sd["layer2.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match="unexpected 1 key"):
        apply_init(build_deeplabv2("deeplabv2-resnet18", 3), read_init(tmp_path / "extra.pth"), "deeplabv2-resnet18")
    sd = torchvision_resnet(18)
    sd["layer2.1.conv1.weight"] = torch.zeros(128, 128, 1, 1)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match="has shape"):
        apply_init(build_deeplabv2("deeplabv2-resnet18", 3), read_init(tmp_path / "shape.pth"), "deeplabv2-resnet18")


def test_depth_mismatch_names_the_right_arch(tmp_path: Path) -> None:
    torch.save(torchvision_resnet(18), tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match="--arch deeplabv2-resnet18"):
        apply_init(build_deeplabv2("deeplabv2-resnet50", 3), read_init(tmp_path / "r18.pth"), "deeplabv2-resnet50")


@pytest.mark.parametrize("bad", [b"not a torch file", None])
def test_unreadable_init_is_a_config_error(tmp_path: Path, bad: bytes | None) -> None:
    path = tmp_path / "bad.pth"
    if bad is None:
        torch.save({"weights": [1, 2, 3]}, path)
    else:
        path.write_bytes(bad)
    with pytest.raises(ConfigError) as info:
        read_init(path)
    assert "\n" not in str(info.value)


def test_deeplab_pytorch_coco_init_maps_keys_and_builds_caffe_style(tmp_path: Path) -> None:
    sd = deeplab_pytorch_resnet(BLOCKS[50])
    torch.save(sd, tmp_path / "deeplabv1_resnet50-coco.pth")
    init = read_init(tmp_path / "deeplabv1_resnet50-coco.pth")
    assert (init.source, init.depth, init.style, init.norm) == ("deeplab-caffe", 50, "caffe", CAFFE_NORM)
    model = build_deeplabv2("deeplabv2-resnet50", 21, init.style)
    apply_init(model, init, "deeplabv2-resnet50")
    bb = model.backbone
    assert torch.equal(bb.conv1.weight, sd["layer1.conv1.conv.weight"])
    assert torch.equal(bb.bn1.running_mean, sd["layer1.conv1.bn.running_mean"])
    assert torch.equal(bb.layer2[1].conv2.weight, sd["layer3.block2.conv3x3.conv.weight"])
    assert torch.equal(bb.layer4[0].downsample[1].weight, sd["layer5.block1.shortcut.bn.weight"])
    assert torch.equal(bb.layer3[5].conv3.weight, sd["layer4.block6.increase.conv.weight"])
    assert bb.layer2[0].conv1.stride == (2, 2) and bb.layer2[0].conv2.stride == (1, 1)
    assert bb.maxpool.ceil_mode


def test_deeplab_pytorch_msc_model_brings_its_aspp(tmp_path: Path) -> None:
    sd = deeplab_pytorch_resnet(BLOCKS[50], classes=0, prefix="base.", aspp=4)
    torch.save(sd, tmp_path / "msc.pth")
    init = read_init(tmp_path / "msc.pth")
    model = build_deeplabv2("deeplabv2-resnet50", 21, init.style)
    assert "ASPP head" in apply_init(model, init, "deeplabv2-resnet50")
    assert torch.equal(model.head.convs[3].bias, sd["base.aspp.c3.bias"])
    other = build_deeplabv2("deeplabv2-resnet50", 5, init.style)
    assert "afresh" in apply_init(other, init, "deeplabv2-resnet50")


def test_frozen_batchnorm_stays_frozen_in_train_mode() -> None:
    model = build_deeplabv2("deeplabv2-resnet18", 3)
    model.freeze_bn()
    model.train()
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert not model.backbone.bn1.training
    assert torch.equal(before, model.backbone.bn1.running_mean)
    assert model.backbone.bn1.weight.grad is None


class _ScaleLogits(torch.nn.Module):
    """Logits that depend only on the input's size: (a, b) at full size 8x8, (c, d) at half size, on a
    grid of half the input side; flipped inputs give the same constants."""

    def __init__(self, full: tuple[float, float], half: tuple[float, float]) -> None:
        super().__init__()
        self.full, self.half = full, half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.full if x.shape[-1] == 8 else self.half
        out = torch.empty(x.shape[0], 2, x.shape[-2] // 2, x.shape[-1] // 2)
        out[:, 0], out[:, 1] = values
        return out


def test_deeplab_fuses_scales_by_the_max_of_the_logits() -> None:
    """DeepLab's reference MSC: pixel-wise max of the views' logits, then the softmax; the other
    predictors average the views' softmax. Worked by hand with constant logits."""
    import math

    import numpy as np

    from clipseg_cli.inference import InferenceOptions, multiscale_probs
    from clipseg_cli.methods.deeplab import DeepLabPredictor
    from clipseg_cli.methods.refiner import RefinerPredictor

    image = np.zeros((8, 8, 3), np.uint8)
    model = _ScaleLogits(full=(1.0, 0.0), half=(0.0, 3.0))
    # max: logits (max(1, 0), max(0, 3)) = (1, 3) -> p(class 1) = e^3 / (e^1 + e^3)
    want_max = math.exp(3) / (math.exp(1) + math.exp(3))
    # mean: (softmax(1, 0) + softmax(0, 3)) / 2 for class 1
    want_mean = (1 / (1 + math.e) + math.exp(3) / (1 + math.exp(3))) / 2
    for flip in (False, True):
        got = multiscale_probs(model, IMAGENET_NORM, image, torch.device("cpu"), (0.5, 1.0), flip, fuse="max")
        assert got.shape == (2, 8, 8) and np.allclose(got[1], want_max, atol=1e-6)
        got = multiscale_probs(model, IMAGENET_NORM, image, torch.device("cpu"), (0.5, 1.0), flip)
        assert np.allclose(got[1], want_mean, atol=1e-6)
    assert DeepLabPredictor.fuse == "max" and RefinerPredictor.fuse == "mean"
    predictor = DeepLabPredictor(model, IMAGENET_NORM, ["a"], torch.device("cpu"), InferenceOptions((1.0, 0.5), True))
    assert np.allclose(predictor.probabilities(image)[1], want_max, atol=1e-6)


def test_deeplab_max_is_taken_on_the_logit_grid_of_scale_one() -> None:
    """As MSC: the half-scale logits are resized to the scale-1 logit grid, maxed there, and only
    the result is resized to the image (not each view to the image first)."""
    import numpy as np

    from clipseg_cli.inference import multiscale_probs

    torch.manual_seed(0)
    full, half = torch.randn(1, 3, 3, 3), torch.randn(1, 3, 2, 2)

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (full if x.shape[-1] == 12 else half).clone()

    image = np.zeros((12, 12, 3), np.uint8)
    got = multiscale_probs(Net(), IMAGENET_NORM, image, torch.device("cpu"), (0.5, 1.0), fuse="max")
    on_grid = torch.maximum(full, F.interpolate(half, size=(3, 3), mode="bilinear", align_corners=False))
    want = F.interpolate(on_grid, size=(12, 12), mode="bilinear", align_corners=False).softmax(dim=1)[0]
    assert np.allclose(got, want.numpy(), atol=1e-6)
    at_image = torch.maximum(*(F.interpolate(v, size=(12, 12), mode="bilinear", align_corners=False) for v in (full, half)))
    assert not np.allclose(got, at_image.softmax(dim=1)[0].numpy(), atol=1e-3)
