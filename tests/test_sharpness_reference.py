"""`wsss-label sharpness` against an independent reference computation.

The reference below re-does everything with plain torch ops on the model's parameters: the
CLIP-ES preprocessing, the ViT image tower (positional table interpolated and rounded to
float16, avg-token embedding), the text tower, the softmax over the class set's prompts and
the metric, in a direct per-template, per-image loop. It shares no code with the search
beyond the tokenizer and the loaded parameters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipseg_cli.clip.loading import load_clip
from clipseg_cli.clip.model import VisionTransformer
from clipseg_cli.clip.tokenizer import tokenize
from clipseg_cli.data.classes import load_class_set
from tests.conftest import make_image, random_clip_state, write_labels

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
TEMPLATES = ["a clean origami {}.", "a photo of a {}.", "itap of my {}.", "the {} in a video game.", "art of the {}."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- the reference


def ref_image_tensor(path: Path, max_side: int | None) -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
        w, h = img.size
    img = img.resize((16 * max(1, math.ceil(w / 16)), 16 * max(1, math.ceil(h / 16))), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - MEAN) / STD


def ref_layer_norm(x: torch.Tensor, ln) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_block(x: torch.Tensor, blk, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """One residual attention block on (B, n, d) tokens."""
    b, n, d = x.shape
    a = ref_layer_norm(x, blk.ln_1)
    q, k, v = (a @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias).split(d, dim=-1)
    hd = d // heads
    q, k, v = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if mask is not None:
        att = att + mask
    o = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + o @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
    m = ref_layer_norm(x, blk.ln_2) @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias
    m = m * torch.sigmoid(1.702 * m)
    return x + m @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias


@torch.no_grad()
def ref_image_feature(model, image: torch.Tensor) -> torch.Tensor:
    vis = model.visual
    d = vis.conv1.weight.shape[0]
    p = vis.conv1.weight.shape[-1]
    patches = F.conv2d(image[None], vis.conv1.weight, stride=p)[0]  # (D, gh, gw)
    gh, gw = patches.shape[1:]
    tokens = patches.reshape(d, gh * gw).T
    side = int(round((vis.positional_embedding.shape[0] - 1) ** 0.5))
    grid_pos = vis.positional_embedding[1:].T.reshape(1, d, side, side)
    grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bilinear", align_corners=False)
    pos = torch.cat([vis.positional_embedding[:1], grid_pos.reshape(d, gh * gw).T]).half().float()
    x = torch.cat([vis.class_embedding[None], tokens]) + pos
    x = ref_layer_norm(x, vis.ln_pre)[None]
    heads = max(1, d // 64)
    for blk in vis.transformer.resblocks:
        x = ref_block(x, blk, heads, None)
    x = ref_layer_norm(x[0], vis.ln_post)
    f = x[1:].mean(0) @ vis.proj
    return f / f.norm()


@torch.no_grad()
def ref_text_features(model, texts: list[str]) -> torch.Tensor:
    ids = tokenize(texts, model.positional_embedding.shape[0])
    width = model.token_embedding.weight.shape[1]
    ctx = ids.shape[1]
    mask = torch.full((ctx, ctx), float("-inf")).triu(1)
    x = model.token_embedding.weight[ids] + model.positional_embedding
    for blk in model.transformer.resblocks:
        x = ref_block(x, blk, max(1, width // 64), mask)
    x = ref_layer_norm(x, model.ln_final)
    f = x[torch.arange(len(texts)), ids.argmax(dim=-1)] @ model.text_projection
    return f / f.norm(dim=-1, keepdim=True)


def reference_sharpness(model, prompts: list[str], images: list[tuple[Path, list[int]]], templates: list[str],
                        max_side: int | None = 1024) -> dict[str, float]:  # fmt: skip
    feats = [ref_image_feature(model, ref_image_tensor(path, max_side)) for path, _ in images]
    scale = float(model.logit_scale.exp())
    out = {}
    for template in templates:
        text = ref_text_features(model, [template.format(p) for p in prompts])
        variances, means = 0.0, 0.0
        for feat, (_, labels) in zip(feats, images):
            probs = torch.softmax(scale * (text @ feat), dim=0).double().numpy()
            own = probs[labels]
            variances += float(np.var(own))
            means += float(np.mean(own))
        out[template] = variances / means
    return out


# --------------------------------------------------------------------------- the checks


def _run_cli(cli, images: Path, labels: Path, weights: Path, templates: list[str], tmp_path: Path, *extra: str):
    tfile = tmp_path / "templates.txt"
    tfile.write_text("\n".join(templates) + "\n")
    report = tmp_path / "report.json"
    result = cli("sharpness", images, "--labels", labels, "--weights", weights, "--templates", tfile,
                 "--out", report, "--device", "cpu", *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


def _compare(report: dict, reference: dict[str, float]) -> None:
    got = {r["template"]: r["sharpness"] for r in report["results"]}
    assert set(got) == set(reference)
    for template, value in reference.items():
        assert got[template] == pytest.approx(value, rel=1e-5, abs=1e-12), template
    ref_order = sorted(reference, key=lambda t: reference[t])
    assert [r["template"] for r in report["results"]] == ref_order
    assert len(set(np.round(list(reference.values()), 8))) == len(reference)  # a ranking with no near-ties


def test_golden_weights_and_images_match_the_reference(cli, golden_dir: Path, golden_weights: Path, tmp_path: Path) -> None:
    labels_file = golden_dir / "labels.json"
    report = _run_cli(cli, golden_dir / "images", labels_file, golden_weights, TEMPLATES, tmp_path)

    model = load_clip(golden_weights)
    voc = load_class_set("voc")
    labels = json.loads(labels_file.read_text())
    images = [(golden_dir / "images" / name, [voc.index(c) for c in names]) for name, names in sorted(labels.items())]
    _compare(report, reference_sharpness(model, list(voc.prompts), images, TEMPLATES))
    assert report["n_images"] == 5


def test_other_random_weights_images_and_classes_match_the_reference(cli, tmp_path: Path) -> None:
    weights = tmp_path / "random.pt"
    torch.save(random_clip_state(seed=11, embed_dim=48, vision_width=128, vision_layers=5, text_width=64, text_layers=3),
               weights)  # fmt: skip
    images = tmp_path / "images"
    classes = ["cat", "dog: puppy", "bird: avian, fowl", "boat", "traffic light", "person: people"]
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(2)
    labels: dict[str, list[str]] = {}
    names = ["cat", "dog", "bird", "boat", "traffic light", "person"]
    for i, size in enumerate([(70, 90), (33, 47), (120, 150), (64, 64), (18, 200), (95, 41)]):
        make_image(images / f"img{i}.png", size, seed=10 + i)
        labels[f"img{i}.png"] = list(rng.choice(names, size=int(rng.integers(1, 4)), replace=False))
    labels_file = write_labels(tmp_path / "labels.json", labels)
    # --max-side 96 scales the 120x150 and 18x200 images down first, as labelling does
    report = _run_cli(cli, images, labels_file, weights, TEMPLATES, tmp_path,
                      "--classes", str(tmp_path / "classes.txt"), "--max-side", "96")  # fmt: skip

    model = load_clip(weights)
    custom = load_class_set(str(tmp_path / "classes.txt"))
    assert custom.prompts[2] == "bird, avian, fowl"  # synonym-fused prompt names
    pairs = [(images / name, [custom.index(c) for c in names_]) for name, names_ in sorted(labels.items())]
    _compare(report, reference_sharpness(model, list(custom.prompts), pairs, TEMPLATES, max_side=96))


def test_each_image_is_embedded_once_whatever_the_number_of_templates(
    cli, other_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    for i, size in enumerate([(40, 56), (70, 30), (33, 33)]):
        make_image(images / f"{i}.png", size, seed=i)
    make_image(images / "unlabelled.png", (20, 20))
    labels = write_labels(tmp_path / "labels.json", {"0.png": ["cat", "dog"], "1.png": ["car"], "2.png": ["bus", "car"]})
    calls: list[tuple[int, ...]] = []
    original = VisionTransformer.embed

    def counting_embed(self, image, *args, **kwargs):
        calls.append(tuple(image.shape))
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(VisionTransformer, "embed", counting_embed)
    report = _run_cli(cli, images, labels, other_weights, TEMPLATES, tmp_path)
    assert len(report["results"]) == len(TEMPLATES)
    assert sorted(calls) == sorted([(1, 3, 48, 64), (1, 3, 80, 32), (1, 3, 48, 48)])  # one forward per image
    calls.clear()
    _run_cli(cli, images, labels, other_weights, TEMPLATES[:1], tmp_path)
    assert len(calls) == 3
