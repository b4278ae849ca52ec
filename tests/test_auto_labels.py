"""`--labels auto`: CLIP chooses each image's labels; the rule, the scores, the file, resume.

The end-to-end tests fix what CLIP sees: each test image is one flat colour whose embedding
is set to a unit axis, and each class / background text to a chosen vector, so every softmax
score is known in advance (computed here with numpy from the cosines) and the rule's answer
is worked out by hand in the comments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_cli.auto_labels import choose_labels
from clipseg_cli.clip.text import TextEncoder
from clipseg_cli.data.labels import read_labels_file
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.masks import load_label_map
from tests.conftest import make_image, write_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the rule ---------------------------------------------------------------------------------
def test_choose_labels_keeps_classes_above_threshold_best_first():
    assert choose_labels([0.05, 0.6, 0.2], best_background=0.1, threshold=0.1) == [1, 2]


def test_choose_labels_keeps_the_top_class_below_threshold_when_it_beats_the_background():
    # nothing above 0.5; the top class (0.3) beats the best background word (0.25)
    assert choose_labels([0.3, 0.1, 0.05], best_background=0.25, threshold=0.5) == [0]
    # a tie with the background word is not a loss
    assert choose_labels([0.3, 0.1], best_background=0.3, threshold=0.5) == [0]


def test_choose_labels_gives_nothing_when_a_background_word_wins_and_nothing_passes():
    assert choose_labels([0.3, 0.1], best_background=0.4, threshold=0.5) == []


def test_choose_labels_keeps_a_class_above_threshold_even_when_a_background_word_is_top():
    assert choose_labels([0.35, 0.05], best_background=0.6, threshold=0.3) == [0]


# -- the scores are CLIP-ES's softmax -----------------------------------------------------------
@pytest.mark.parametrize("synonyms", ["sentence", "cam"])
def test_scores_are_the_softmax_of_the_clip_es_embedding(golden_weights: Path, tmp_path: Path, synonyms: str):
    from clipseg_cli.auto_labels import LabelScorer
    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.cam.preprocess import to_clip_tensor
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.data.classes import load_class_set

    model = load_clip(golden_weights, "cpu")
    class_set = load_class_set("voc")
    template = "a photo of a {}."
    scorer = LabelScorer(CLIPESPredictor(model, class_set, CLIPESSettings(templates=(template,), synonyms=synonyms)))
    image = np.asarray(Image.open(make_image(tmp_path / "image.png", (40, 56), seed=3)))

    scores = scorer.score(image)

    # Independently: the avg-token embedding of the image, text features of every prompt (or of
    # every synonym with synonyms=cam, a class's score then summed), softmax of
    # exp(logit_scale) * cosine over all of them and the 25 background words.
    with torch.no_grad():
        e = model.encode_image(to_clip_tensor(image, 16)).float()[0].numpy().astype(np.float64)
    e /= np.linalg.norm(e)
    groups = [list(s) for s in class_set.synonyms] if synonyms == "cam" else [[p] for p in class_set.prompts]
    texts = [t for g in groups for t in g] + list(class_set.background)
    features = TextEncoder(model, [template]).encode(texts).numpy().astype(np.float64)
    logits = float(model.logit_scale.exp()) * features @ e
    p = np.exp(logits - logits.max())
    p /= p.sum()
    sizes = [len(g) for g in groups]
    per_class = np.add.reduceat(p[: sum(sizes)], np.cumsum([0] + sizes[:-1]))
    np.testing.assert_allclose(scores.classes, per_class, atol=1e-5)
    np.testing.assert_allclose(scores.background, p[sum(sizes) :], atol=1e-5)
    assert scores.classes.sum() + scores.background.sum() == pytest.approx(1.0, abs=1e-6)


# -- end to end with known scores --------------------------------------------------------------
CLASSES = "cat,dog,bird"
BACKGROUND = ["grass", "sky"]
THRESHOLD = 0.3
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "white": (230, 230, 230)}
AXIS = {"red": 0, "green": 1, "blue": 2, "white": 3}
# Cosine of each text with each image's embedding (the image's axis). Each column is shifted by
# a constant (red -0.45, green -0.48, blue -0.3, white -0.45 from 0.9/0.8/0/0.2/0, ...), which
# leaves the softmax unchanged and keeps every text vector within unit length.
COSINES = {
    #          red    green  blue   white
    "cat":   (0.45, -0.02, 0.2, 0.4),
    "dog":   (0.35, -0.02, -0.3, -0.45),
    "bird":  (-0.45, 0.02, -0.3, -0.45),
    "grass": (-0.25, 0.0, -0.3, 0.45),
    "sky":   (-0.45, 0.0, 0.3, -0.45),
}  # fmt: skip
TEXTS = list(COSINES)  # classes first, then the background words, as the softmax sees them


def text_vector(name: str, dim: int) -> torch.Tensor:
    v = np.zeros(dim)
    v[:4] = COSINES[name]
    v[10 + TEXTS.index(name)] = np.sqrt(1.0 - np.sum(v[:4] ** 2))  # unit length, distinct texts
    return torch.tensor(v, dtype=torch.float32)


def expected_scores(colour: str, logit_scale: float) -> np.ndarray:
    logits = logit_scale * np.array([COSINES[t][AXIS[colour]] for t in TEXTS])
    p = np.exp(logits - logits.max())
    return p / p.sum()


# With exp(logit_scale) = 14.30 (the golden weights) the scores (cat, dog, bird | grass, sky) are
#   red:   0.81, 0.19, 0.00 | 0.00, 0.00 -> cat is above 0.3, dog is not -> [cat]
#   green: 0.16, 0.16, 0.28 | 0.21, 0.21 -> bird is top, under 0.3, and beats the background
#          words -> [bird] by the top-1 rule
#   blue:  0.19, 0.00, 0.00 | 0.00, 0.81 -> sky is top and cat (under 0.3) loses to it -> no label
#   white: 0.33, 0.00, 0.00 | 0.67, 0.00 -> grass is top, but cat is above 0.3 -> [cat]
# (the test checks these claims against the exact softmax too)
EXPECTED = {"red.png": ["cat"], "green.png": ["bird"], "white.png": ["cat"]}


@pytest.fixture
def known_clip(monkeypatch: pytest.MonkeyPatch, golden_weights: Path):
    """CLIP with set embeddings and text features; returns the embedding calls made."""
    import clipseg_cli.prompt_search as prompt_search

    state = torch.load(golden_weights, weights_only=True)
    dim = state["text_projection"].shape[1]
    calls: list[str] = []

    def embedding(model, image, max_side=None):  # noqa: ANN001, ANN202
        colour = min(COLOURS, key=lambda c: np.abs(image.reshape(-1, 3).mean(0) - COLOURS[c]).sum())
        calls.append(colour)
        e = torch.zeros(dim)
        e[AXIS[colour]] = 1.0
        return e

    def encode(self, names):  # noqa: ANN001, ANN202
        return torch.stack([text_vector(n, dim) for n in names]) if names else torch.zeros(0, dim)

    monkeypatch.setattr(prompt_search, "image_embedding", embedding)
    monkeypatch.setattr(TextEncoder, "encode", encode)
    calls_scale = float(state["logit_scale"].float().exp())
    return calls, calls_scale


def flat_image(path: Path, colour: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), COLOURS[colour], np.uint8)).save(path)
    return path


@pytest.fixture
def auto_run(cli, golden_weights: Path, tmp_path: Path):
    background = tmp_path / "background.txt"
    background.write_text("\n".join(BACKGROUND) + "\n")

    def _run(images: Path, out: Path, *extra: str | Path, labels: str | Path = "auto"):
        return cli(images, "--labels", labels, "--classes", CLASSES, "--background", background, "--out", out,
                   "--weights", golden_weights, "--device", "cpu", "--workers", "0", *extra)  # fmt: skip

    return _run


def test_auto_labels_follow_the_rule_and_are_written_for_reuse(tmp_path: Path, known_clip, auto_run):
    calls, scale = known_clip
    images = tmp_path / "images"
    for colour in COLOURS:
        flat_image(images / f"{colour}.png", colour)
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"

    result = auto_run(images, out, "--label-threshold", str(THRESHOLD))

    assert result.exit_code == 1, result.output  # broken.png failed, the rest are done
    auto = json.loads((out / "labels.auto.json").read_text())
    assert sorted(auto) == ["blue.png", "green.png", "red.png", "white.png"]  # broken.png could not be scored
    for colour in COLOURS:
        p = expected_scores(colour, scale)
        entry = auto[f"{colour}.png"]
        assert entry["labels"] == EXPECTED.get(f"{colour}.png", [])
        for i, name in enumerate(("cat", "dog", "bird")):
            assert entry["scores"].get(name, 0.0) == pytest.approx(p[i], abs=2e-6 if p[i] >= 1e-4 else 1e-4)
        assert list(entry["scores"].values()) == sorted(entry["scores"].values(), reverse=True)
        assert entry["background"] == pytest.approx(p[3:].max(), abs=2e-6)
        assert entry["background_word"] == BACKGROUND[int(p[3:].argmax())]
    # the hand-worked cases really are the edge cases they claim to be
    green, blue, white = (expected_scores(c, scale) for c in ("green", "blue", "white"))
    assert green[2] < THRESHOLD and green[2] == green.max()
    assert blue[:3].max() < blue[3:].max() and blue[:3].max() < THRESHOLD
    assert white[3:].max() > white[:3].max() and white[0] > THRESHOLD

    run = json.loads((out / "run.json").read_text())
    assert {e["image"]: e["labels"] for e in run["images"]} == EXPECTED
    assert run["settings"]["labels"] == "auto" and run["settings"]["label_threshold"] == THRESHOLD
    [skipped] = run["skipped"]
    assert skipped["image"] == "blue.png" and skipped["reason"].startswith("no class above threshold 0.3")
    assert "'sky'" in skipped["reason"]
    assert [f["image"] for f in run["failed"]] == ["broken.png"]
    for name, labels in EXPECTED.items():
        mask = load_label_map(out / "masks" / name)
        allowed = {0, 255} | {1 + "cat,dog,bird".split(",").index(n) for n in labels}
        assert set(np.unique(mask)) <= allowed
    assert not (out / "masks" / "blue.png").exists()
    # the file is a labels file: --labels reads it back, with the same labels
    index = read_labels_file(out / "labels.auto.json")
    assert index.labels == {k: v["labels"] for k, v in auto.items()}


def test_auto_labels_resume_keep_their_labels_and_score_only_new_images(tmp_path: Path, known_clip, auto_run):
    calls, _ = known_clip
    images = tmp_path / "images"
    for colour in ("red", "blue"):
        flat_image(images / f"{colour}.png", colour)
    out = tmp_path / "out"
    assert auto_run(images, out, "--label-threshold", str(THRESHOLD)).exit_code == 0
    assert sorted(calls) == ["blue", "red"]
    before = (out / "labels.auto.json").read_bytes()
    mask_time = (out / "masks" / "red.png").stat().st_mtime_ns

    calls.clear()
    again = auto_run(images, out, "--label-threshold", str(THRESHOLD))
    assert again.exit_code == 0, again.output
    assert calls == []  # nothing scored again
    assert (out / "labels.auto.json").read_bytes() == before
    assert (out / "masks" / "red.png").stat().st_mtime_ns == mask_time

    flat_image(images / "white.png", "white")
    more = auto_run(images, out, "--label-threshold", str(THRESHOLD))
    assert more.exit_code == 0, more.output
    assert calls == ["white"]  # only the new image
    auto = json.loads((out / "labels.auto.json").read_text())
    assert auto["white.png"]["labels"] == ["cat"] and auto["red.png"] == json.loads(before)["red.png"]


def test_auto_labels_threshold_is_decisive(tmp_path: Path, known_clip, auto_run):
    calls, _ = known_clip
    images = tmp_path / "images"
    flat_image(images / "red.png", "red")
    out = tmp_path / "out"
    assert auto_run(images, out, "--label-threshold", "0.3").exit_code == 0
    before = (out / "labels.auto.json").read_bytes()
    calls.clear()

    other = auto_run(images, out, "--label-threshold", "0.1")

    assert other.exit_code == 2
    assert "label_threshold 0.3 -> 0.1" in other.output and "--overwrite" in other.output
    assert calls == [] and (out / "labels.auto.json").read_bytes() == before
    # --overwrite chooses again: at 0.1, red's dog (0.19) is a label too
    redo = auto_run(images, out, "--label-threshold", "0.1", "--overwrite")
    assert redo.exit_code == 0, redo.output
    assert json.loads((out / "labels.auto.json").read_text())["red.png"]["labels"] == ["cat", "dog"]


def test_corrected_auto_labels_are_read_back_with_labels(tmp_path: Path, known_clip, auto_run):
    images = tmp_path / "images"
    for colour in ("red", "white"):
        flat_image(images / f"{colour}.png", colour)
    out = tmp_path / "out"
    assert auto_run(images, out, "--label-threshold", "0.1").exit_code == 0
    path = out / "labels.auto.json"
    auto = json.loads(path.read_text())
    assert auto["red.png"]["labels"] == ["cat", "dog"]
    white_time = (out / "masks" / "white.png").stat().st_mtime_ns

    auto["red.png"]["labels"] = ["dog"]  # a user's correction
    path.write_text(json.dumps(auto))
    result = auto_run(images, out, labels=path)

    assert result.exit_code == 0, result.output
    assert "1 finished image(s) have other labels now and are redone" in result.output
    run = json.loads((out / "run.json").read_text())
    assert {e["image"]: e["labels"] for e in run["images"]} == {"red.png": ["dog"], "white.png": ["cat"]}
    assert (out / "masks" / "white.png").stat().st_mtime_ns == white_time


def test_label_threshold_needs_labels_auto_and_a_probability(tmp_path: Path, auto_run, cli):
    images = tmp_path / "images"
    flat_image(images / "red.png", "red")
    labels = write_labels(tmp_path / "labels.json", {"red.png": ["cat"]})
    wrong = auto_run(images, tmp_path / "a", "--label-threshold", "0.2", labels=labels)
    assert wrong.exit_code == 2 and "--label-threshold needs --labels auto" in wrong.output
    high = auto_run(images, tmp_path / "b", "--label-threshold", "1.5")
    assert high.exit_code == 2 and "--label-threshold must be in [0, 1)" in high.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_labels_reader_takes_auto_entries_and_rejects_objects_without_labels(tmp_path: Path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"a.jpg": {"labels": ["cat", "dog"], "scores": {"cat": 0.9}}, "b.jpg": ["bird"]}))
    assert read_labels_file(path).labels == {"a.jpg": ["cat", "dog"], "b.jpg": ["bird"]}
    path.write_text(json.dumps({"a.jpg": {"scores": {"cat": 0.9}}}))
    with pytest.raises(ConfigError, match='without "labels"'):
        read_labels_file(path)


# -- --list ----------------------------------------------------------------------------------------
def test_list_restricts_the_run_to_the_listed_images(tmp_path: Path, cli, golden_weights: Path):
    images = tmp_path / "images"
    for i, name in enumerate(("a.png", "b.png", "sub/c.png")):
        make_image(images / name, (20, 24), seed=i)
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"], "b.png": ["dog"], "sub/c.png": ["cat"]})
    listing = tmp_path / "list.txt"
    listing.write_text("# the images to do\na\nsub/c.png extra fields are ignored\nmissing\n")

    result = cli(images, "--labels", labels, "--list", listing, "--out", tmp_path / "out", "--weights", golden_weights,
                 "--device", "cpu", "--workers", "0")  # fmt: skip

    assert result.exit_code == 1, result.output  # "missing" is listed but not there
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [e["image"] for e in run["images"]] == ["a.png", "sub/c.png"]
    assert run["skipped"] == []  # b.png is not listed: left alone, not "skipped"
    assert run["failed"] == [{"image": "missing", "reason": "in --list but no such image in the folder"}]
    assert not (tmp_path / "out" / "masks" / "b.png").exists()


def test_labels_chosen_before_ctrl_c_are_kept_and_bound_to_their_threshold(
    tmp_path: Path, known_clip, auto_run, monkeypatch: pytest.MonkeyPatch
):
    import clipseg_cli.prompt_search as prompt_search

    calls, _ = known_clip
    images = tmp_path / "images"
    for colour in ("blue", "red", "white"):  # scored in path order: blue, red, white
        flat_image(images / f"{colour}.png", colour)
    out = tmp_path / "out"
    embedding = prompt_search.image_embedding

    def stop_at_white(model, image, max_side=None):  # noqa: ANN001, ANN202
        e = embedding(model, image, max_side)
        if calls[-1] == "white":
            raise KeyboardInterrupt
        return e

    monkeypatch.setattr(prompt_search, "image_embedding", stop_at_white)
    stopped = auto_run(images, out, "--label-threshold", "0.3")
    assert stopped.exit_code == 130
    assert sorted(json.loads((out / "labels.auto.json").read_text())) == ["blue.png", "red.png"]
    assert not (out / "masks").exists()

    monkeypatch.setattr(prompt_search, "image_embedding", embedding)
    other = auto_run(images, out, "--label-threshold", "0.1")
    assert other.exit_code == 2 and "label_threshold 0.3 -> 0.1" in other.output
    calls.clear()
    resumed = auto_run(images, out, "--label-threshold", "0.3")
    assert resumed.exit_code == 0, resumed.output
    assert calls == ["white"]
    run = json.loads((out / "run.json").read_text())
    assert {e["image"]: e["labels"] for e in run["images"]} == {"red.png": ["cat"], "white.png": ["cat"]}
