"""Image-level labels chosen by CLIP (``--labels auto``) for images that have none.

Each image is scored with the embedding CLIP-ES's softmax uses (the mean of the final patch
tokens, :func:`clipseg_cli.prompt_search.image_embedding`) against the text features the
CAM pass uses for every class of the set plus the background words
(:meth:`CLIPESPredictor.text_set`): a softmax of ``exp(logit_scale) * cosine`` over
[all classes] + [background words]. With ``--synonyms cam`` a class has one text per synonym;
its score is the sum of theirs.

The labels of an image (:func:`choose_labels`): every class whose score is above the
threshold, and the top class even below it unless a background word scores higher. An image
left with no label is skipped.

The choice is written to ``OUT/labels.auto.json``, which ``--labels`` reads back::

    {"2007_000032.jpg": {"labels": ["aeroplane", "person"],
                         "scores": {"aeroplane": 0.91, "person": 0.12, "car": 0.003},
                         "background": 0.041, "background_word": "sky"}}

``scores`` lists the classes scoring at least :data:`SCORE_FLOOR` (and every label), best
first; ``background`` is the best background word's score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from clipseg_cli.errors import ConfigError
from clipseg_cli.io.atomic import write_json

if TYPE_CHECKING:  # torch and the model load only when images are scored
    from clipseg_cli.cam.pipeline import CLIPESPredictor

AUTO_LABELS_FILE = "labels.auto.json"
DEFAULT_LABEL_THRESHOLD = 0.1
SCORE_DIGITS = 6
SCORE_FLOOR = 1e-4  # smaller class scores are left out of the file (read back as 0)
NO_LABEL = "no class above threshold"


@dataclass(frozen=True)
class ImageScores:
    """Softmax scores of one image: per class (C,) and per background word (M,); together they sum to 1."""

    classes: np.ndarray
    background: np.ndarray

    @property
    def best_background(self) -> float:
        return float(self.background.max()) if self.background.size else 0.0


def choose_labels(class_scores: Sequence[float] | np.ndarray, best_background: float, threshold: float) -> list[int]:
    """Class indices, best first: those scoring above ``threshold``, and the top class when it
    scores at least as high as the best background word (whatever the threshold)."""
    scores = np.asarray(class_scores, dtype=np.float64)
    order = [int(c) for c in np.argsort(-scores, kind="stable")]
    kept = [c for c in order if scores[c] > threshold]
    if order and order[0] not in kept and scores[order[0]] >= best_background:
        kept.insert(0, order[0])
    return kept


class LabelScorer:
    """Scores images against every class of the predictor's set and its background words."""

    def __init__(self, predictor: CLIPESPredictor) -> None:
        self.predictor = predictor
        n_classes = len(predictor.class_set)
        self.features, self.rows = predictor.text_set(range(n_classes))
        self.n_class_rows = sum(len(r) for r in self.rows)

    def score(self, image: np.ndarray) -> ImageScores:
        from clipseg_cli.prompt_search import class_probabilities, image_embedding

        model = self.predictor.model
        embedding = image_embedding(model, image, self.predictor.settings.max_side)
        probs = class_probabilities(model, embedding[None], self.features)[0]
        classes = np.array([probs[r].sum() for r in self.rows], dtype=np.float64)
        return ImageScores(classes, probs[self.n_class_rows :])


def auto_entry(scores: ImageScores, labels: Sequence[int], class_names: Sequence[str], background: Sequence[str]) -> dict[str, Any]:
    """The ``labels.auto.json`` entry of one image."""
    order = np.argsort(-scores.classes, kind="stable")
    kept = set(labels)
    listed = {class_names[c]: round(float(scores.classes[c]), SCORE_DIGITS) for c in order if scores.classes[c] >= SCORE_FLOOR or c in kept}
    entry: dict[str, Any] = {"labels": [class_names[c] for c in labels], "scores": listed,
                             "background": round(scores.best_background, SCORE_DIGITS)}  # fmt: skip
    if scores.background.size:
        entry["background_word"] = background[int(scores.background.argmax())]
    return entry


def no_label_reason(entry: Mapping[str, Any], threshold: float) -> str:
    """Why an image got no label: ``no class above threshold 0.1 (best: cat 0.04 < background word 'grass' 0.71)``."""
    scores = entry.get("scores") or {}
    detail = ""
    if scores:
        name, value = next(iter(scores.items()))
        word = entry.get("background_word")
        detail = f" (best: {name} {value:.3g} < background word {word!r} {entry.get('background', 0):.3g})"
    return f"{NO_LABEL} {threshold:g}{detail}"


def read_auto_labels(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of an earlier ``labels.auto.json`` ({} when there is none)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}): fix or delete it, or use --overwrite") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("labels"), list) for v in data.values()):
        raise ConfigError(f'{path}: expected {{"image": {{"labels": [...], ...}}}}: fix or delete it, or use --overwrite')
    return data


def write_auto_labels(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    write_json(path, {k: entries[k] for k in sorted(entries)})


@dataclass
class AutoLabelRun:
    """What :func:`label_images` did: new entries by image, and the images that could not be read."""

    entries: dict[str, dict[str, Any]]
    failed: dict[str, str]


def label_images(
    scorer: LabelScorer,
    root: Path,
    rels: Sequence[str],
    threshold: float,
    on_image: Callable[[str, dict[str, Any] | None], None] | None = None,
    result: AutoLabelRun | None = None,
) -> AutoLabelRun:
    """Score and label the images ``rels`` under ``root``. Entries are added to ``result`` as
    they are made, so a caller keeps them when interrupted; ``on_image(rel, entry or None)``."""
    from clipseg_cli.data.images import load_rgb
    from clipseg_cli.labeling import IMAGE_FAILURES, failure_reason

    result = result if result is not None else AutoLabelRun({}, {})
    class_set = scorer.predictor.class_set
    for rel in rels:
        entry = None
        try:
            scores = scorer.score(load_rgb(root / rel))
        except IMAGE_FAILURES as exc:
            result.failed[rel] = failure_reason(exc)
        else:
            labels = choose_labels(scores.classes, scores.best_background, threshold)
            entry = auto_entry(scores, labels, class_set.classes, class_set.background)
            result.entries[rel] = entry
        if on_image is not None:
            on_image(rel, entry)
    return result
