"""Sharpness-based prompt selection (CLIP-ES section 3.2.1; SPEC section 7).

For a prompt template and n images with image-level labels: CLIP zero-shot scores of each
image (its avg-token image embedding against the class set's prompts, softmax over the
class set's classes), the scores ``s_i1..s_ik`` of the image's own k classes, and

    sharpness = sum_i var(s_i.) / sum_i mean(s_i.)        (population variance)

Lower is better. Only the image embedding depends on the image, so it is computed once
per image (one forward, no gradients, kept in memory) and reused for every template; per
template only the text tower runs.

With ground truth, :func:`gt_miou` runs the full CLIP-ES pipeline once per template and
scores the masks, so sharpness can be compared with mIoU (the paper's Figure 3).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from clipseg_cli.cam.preprocess import limit_side, to_clip_tensor
from clipseg_cli.clip.model import CLIP
from clipseg_cli.clip.text import TextEncoder
from clipseg_cli.data.classes import ClassSet
from clipseg_cli.data.images import load_rgb
from clipseg_cli.errors import ConfigError, ImageError
from clipseg_cli.labeling import WorkItem

BUILTIN_TEMPLATES = ("imagenet80",)
DEFAULT_TEMPLATES = "imagenet80"

Tick = Callable[[], None]


# --------------------------------------------------------------------------- the metric


def sharpness(scores_per_image: Sequence[np.ndarray]) -> float:
    """``sum_i var(s_i) / sum_i mean(s_i)`` over images i; ``s_i`` = scores of image i's own classes.

    Population variance (ddof = 0), so an image with one class adds 0 to the numerator.
    NaN when every score is 0 (0 / 0).
    """
    arrays = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores_per_image]
    if not arrays:
        raise ValueError("sharpness needs at least one image")
    if any(a.size == 0 for a in arrays):
        raise ValueError("every image needs the score of at least one class")
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    return segment_sharpness(np.concatenate(arrays), lengths)


def segment_sharpness(flat: np.ndarray, lengths: np.ndarray) -> float:
    """:func:`sharpness` of the scores ``flat`` cut into consecutive images of ``lengths`` scores."""
    flat = np.asarray(flat, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0 or lengths.min() < 1 or lengths.sum() != flat.size:
        raise ValueError("lengths must be positive and add up to the number of scores")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    means = np.add.reduceat(flat, starts) / lengths
    deviation = flat - np.repeat(means, lengths)
    variances = np.add.reduceat(deviation * deviation, starts) / lengths
    denominator = float(means.sum())
    if denominator <= 0.0:
        return math.nan
    return float(variances.sum() / denominator)


# --------------------------------------------------------------------------- templates


def check_template(template: str, where: str) -> None:
    """A template has ``{}`` exactly once and no other ``str.format`` field."""
    if template.count("{}") != 1:
        raise ConfigError(f"{where}: a template needs '{{}}' exactly once where the class name goes: {template!r}")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        raise ConfigError(f"{where}: braces other than '{{}}' in template {template!r} (write {{{{ or }}}})") from None


def parse_templates(text: str, source: str) -> tuple[list[str], int]:
    """Templates of a file, one a line (blank lines and lines starting with ``#`` skipped).

    Returns the templates in order with duplicates dropped, and how many were dropped.
    """
    templates: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        check_template(line, f"{source}:{number}")
        if line in seen:
            duplicates += 1
            continue
        seen.add(line)
        templates.append(line)
    if not templates:
        raise ConfigError(f"{source}: no templates found (one per line, each with '{{}}')")
    return templates, duplicates


def builtin_templates(name: str = DEFAULT_TEMPLATES) -> list[str]:
    text = resources.files("clipseg_cli.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return parse_templates(text, name)[0]


def load_templates(spec: str) -> tuple[list[str], int]:
    """``imagenet80`` (CLIP's 80 ImageNet templates) or a file with one template per line."""
    if spec.lower() in BUILTIN_TEMPLATES:
        return builtin_templates(spec.lower()), 0
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"--templates must be {' or '.join(BUILTIN_TEMPLATES)} or a file; {spec} is neither")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read template file {path}: {exc}") from None
    return parse_templates(text, str(path))


# --------------------------------------------------------------------------- images


def sample_items(items: Sequence[WorkItem], limit: int | None, seed: int) -> list[WorkItem]:
    """``limit`` of the items drawn without replacement with ``seed``, kept in their order; all if fewer."""
    if limit is None or limit >= len(items):
        return list(items)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(items), size=limit, replace=False))
    return [items[int(i)] for i in chosen]


@torch.no_grad()
def image_embedding(model: CLIP, image: np.ndarray, max_side: int | None = None) -> torch.Tensor:
    """The L2-normalised avg-token embedding (E,) of an RGB uint8 image, from the CAM pass's input tensor."""
    work = limit_side(image, max_side)
    tensor = to_clip_tensor(work, model.visual.patch_size).to(model.logit_scale.device)
    feature = model.encode_image(tensor).float()[0]
    return feature / feature.norm()


@dataclass
class EmbeddedImages:
    """Images that were embedded, in order, their (N, E) normalised features and the failures."""

    items: list[WorkItem]
    features: torch.Tensor
    failed: list[dict[str, str]] = field(default_factory=list)


def embed_images(
    model: CLIP, root: Path, items: Sequence[WorkItem], max_side: int | None = None, on_image: Tick | None = None
) -> EmbeddedImages:
    """One forward per image; an unreadable image is recorded as failed and left out."""
    kept: list[WorkItem] = []
    features: list[torch.Tensor] = []
    failed: list[dict[str, str]] = []
    for item in items:
        try:
            features.append(image_embedding(model, load_rgb(root / item.rel), max_side))
            kept.append(item)
        except ImageError as exc:
            failed.append({"image": item.rel, "reason": str(exc)})
        except (RuntimeError, ValueError, MemoryError, OSError) as exc:
            failed.append({"image": item.rel, "reason": f"{type(exc).__name__}: {_first_line(exc)}"})
        if on_image is not None:
            on_image()
    dim = model.visual.proj.shape[1]
    stacked = torch.stack(features) if features else torch.zeros(0, dim, device=model.logit_scale.device)
    return EmbeddedImages(kept, stacked, failed)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no detail"


# --------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class TemplateScore:
    template: str
    sharpness: float
    miou: float | None = None
    invalid: str | None = None  # why it was not scored (too long for CLIP): never recommended


def too_long_templates(templates: Sequence[str], class_set: ClassSet) -> dict[str, str]:
    """The templates whose prompt for some class exceeds CLIP's 77 tokens, with the reason.

    CLIP would cut such a prompt, losing the class name: every class would get the same
    text, and the "sharpness" of that template would be meaningless (and, being flat, low).
    """
    from clipseg_cli.clip.tokenizer import template_too_long

    problems = {t: template_too_long(t, class_set.prompts) for t in templates}
    return {t: f"too long: {p}" for t, p in problems.items() if p is not None}


def template_text_features(
    model: CLIP, class_set: ClassSet, templates: Sequence[str], batch_texts: int = 256
) -> Iterator[tuple[str, torch.Tensor]]:
    """Per template, the (C, E) normalised text features of the class set's (synonym-fused) prompts.

    The texts ``template.format(prompt)`` of several templates go through the text tower
    together (about ``batch_texts`` at a time); each template's features are exactly those
    of ``TextEncoder(model, [template]).encode(class_set.prompts)``.
    """
    encoder = TextEncoder(model, ["{}"], batch_size=batch_texts)
    prompts = list(class_set.prompts)
    per_call = max(1, batch_texts // max(1, len(prompts)))
    for start in range(0, len(templates), per_call):
        group = list(templates[start : start + per_call])
        features = encoder.encode([t.format(p) for t in group for p in prompts])
        yield from zip(group, features.reshape(len(group), len(prompts), -1))


@torch.no_grad()
def class_probabilities(model: CLIP, image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """(N, C) softmax over the classes of ``exp(logit_scale) * cosine`` (softmax in float64)."""
    logits = model.logit_scale.exp().float() * image_features.float() @ text_features.float().T
    return torch.softmax(logits.double(), dim=-1).cpu().numpy()


def score_templates(
    model: CLIP,
    class_set: ClassSet,
    image_features: torch.Tensor,
    labels: Sequence[Sequence[int]],
    templates: Sequence[str],
    on_template: Tick | None = None,
) -> list[TemplateScore]:
    """Sharpness of each template (in the order given) over images with features and class indices."""
    if len(labels) != image_features.shape[0] or not labels:
        raise ValueError("one label list per image, and at least one image")
    lengths = np.array([len(lab) for lab in labels], dtype=np.int64)
    rows = np.repeat(np.arange(len(labels)), lengths)
    cols = np.array([c for lab in labels for c in lab], dtype=np.int64)
    results = []
    for template, text_features in template_text_features(model, class_set, templates):
        probs = class_probabilities(model, image_features, text_features)
        results.append(TemplateScore(template, segment_sharpness(probs[rows, cols], lengths)))
        if on_template is not None:
            on_template()
    return results


def rank_results(results: Sequence[TemplateScore]) -> list[TemplateScore]:
    """Ascending sharpness (best first); ties keep the given order, NaN and invalid templates go last."""

    def key(i: int) -> tuple:
        r = results[i]
        return (r.invalid is not None, math.isnan(r.sharpness), r.sharpness, i)

    order = sorted(range(len(results)), key=key)
    return [results[i] for i in order]


# --------------------------------------------------------------------------- ground truth


def rankdata(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given their average rank (as scipy.stats.rankdata's default)."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation over the pairs where both are numbers; None if undefined."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None and not math.isnan(a) and not math.isnan(b)]
    if len(pairs) < 2:
        return None
    rx = rankdata([a for a, _ in pairs])
    ry = rankdata([b for _, b in pairs])
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if denominator == 0.0:
        return None
    return float((dx * dy).sum() / denominator)


@dataclass(frozen=True)
class GTImage:
    item: WorkItem
    gt: Path


def pair_with_gt(items: Sequence[WorkItem], gt_dir: Path) -> list[GTImage]:
    """The items that have a ``GT/<rel without extension>.png`` label map."""
    from clipseg_cli.evaluation.matching import index_folder

    if not gt_dir.is_dir():
        raise ConfigError(f"--gt {gt_dir} is not a folder")
    found = index_folder(gt_dir, ".png")
    if not found:
        raise ConfigError(f"--gt {gt_dir} holds no .png label maps")
    return [GTImage(item, found[item.stem]) for item in items if item.stem in found]


def gt_miou(
    model: CLIP,
    class_set: ClassSet,
    root: Path,
    images: Sequence[GTImage],
    templates: Sequence[str],
    crf: bool = True,
    max_side: int | None = 1024,
    on_step: Tick | None = None,
) -> dict[str, float | None]:
    """mIoU of the CLIP-ES pseudo masks against the GT, per template (the full pipeline each time).

    Pixels a mask marks 255 (CRF confidence below mu) are left out, as ``wsss-label eval`` does
    by default. An unreadable GT map, a size mismatch or a label value outside the class set
    is a ConfigError.
    """
    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.evaluation.confusion import ConfusionAccumulator, metrics_from_confusion
    from clipseg_cli.evaluation.readers import read_label_map

    predictors = {
        t: CLIPESPredictor(model, class_set, CLIPESSettings(templates=(t,), lam=class_set.lam, crf=crf, max_side=max_side))
        for t in templates
    }
    accumulators = {t: ConfusionAccumulator(1 + len(class_set)) for t in templates}
    for entry in images:
        try:
            image = load_rgb(root / entry.item.rel)
        except ImageError as exc:
            raise ConfigError(f"{entry.item.rel}: {exc}") from None
        gt = read_label_map(entry.gt)
        if gt.shape != image.shape[:2]:
            raise ConfigError(f"{entry.gt}: GT size {gt.shape[1]}x{gt.shape[0]} differs from the image's "
                              f"{image.shape[1]}x{image.shape[0]} ({entry.item.rel})")  # fmt: skip
        for template in templates:
            mask = predictors[template].predict(image, entry.item.labels).mask
            try:
                accumulators[template].add(gt, mask)
            except ValueError as exc:
                raise ConfigError(f"{entry.gt}: {exc}; --classes has {len(class_set)} classes") from None
            if on_step is not None:
                on_step()
    return {t: metrics_from_confusion(accumulators[t].matrix("exclude")).miou for t in templates}


# --------------------------------------------------------------------------- the chart


def plot_ranking(
    dest: str | os.PathLike[str],
    ranked: Sequence[TemplateScore],
    title: str = "prompt sharpness (lower is better)",
    correlation: float | None = None,
) -> None:
    """Horizontal bars of sharpness, best at the top; with mIoU, a sharpness-vs-mIoU scatter beside."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from clipseg_cli.io.atomic import atomic_path

    n = len(ranked)
    with_gt = any(r.miou is not None for r in ranked)
    height = max(3.0, 0.24 * n + 1.4)
    fig = Figure(figsize=(13.0 if with_gt else 8.0, height))
    ax = fig.add_subplot(1, 2, 1) if with_gt else fig.add_subplot()
    values = [0.0 if math.isnan(r.sharpness) else r.sharpness for r in ranked]
    colors = ["tab:green" if i == 0 else "tab:blue" for i in range(n)]
    ax.barh(range(n), values, color=colors)
    ax.set_yticks(range(n), [r.template for r in ranked], fontsize=8)
    ax.margins(y=0.01)
    ax.invert_yaxis()
    ax.set_xlabel("sharpness")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if with_gt:
        scatter = fig.add_subplot(1, 2, 2)
        points = [(r.sharpness, 100.0 * r.miou) for r in ranked if r.miou is not None and not math.isnan(r.sharpness)]
        scatter.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
        best = ranked[0]
        if best.miou is not None and not math.isnan(best.sharpness):
            scatter.scatter([best.sharpness], [100.0 * best.miou], color="tab:green", zorder=3)
            scatter.annotate(best.template, (best.sharpness, 100.0 * best.miou), fontsize=8,
                             xytext=(4, 4), textcoords="offset points")  # fmt: skip
        scatter.set_xlabel("sharpness")
        scatter.set_ylabel("mIoU (%)")
        rho = "n/a" if correlation is None else f"{correlation:+.3f}"
        scatter.set_title(f"sharpness vs mIoU: Spearman rho = {rho}")
        scatter.grid(alpha=0.3)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
