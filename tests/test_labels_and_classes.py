"""Reading image-level labels and class sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipseg_cli.data.classes import load_background, load_class_set
from clipseg_cli.data.labels import read_labels_file, read_voc_annotations
from clipseg_cli.errors import ConfigError


def test_json_labels_keep_order_and_drop_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text('{"./a/x.jpg": ["person", "cat", "Person"], "b.png": "dog"}')
    index = read_labels_file(path)
    assert index.lookup("a/x.jpg") == ["person", "cat"]
    assert index.lookup("b.png") == ["dog"]


def test_text_and_csv_lines(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("# comment\nimage,labels\nsub/a.jpg, cat, dog\nb.jpg person\t sheep\n2007_000032 aeroplane\n")
    index = read_labels_file(path)
    assert index.lookup("sub/a.jpg") == ["cat", "dog"]
    assert index.lookup("b.jpg") == ["person", "sheep"]
    assert index.lookup("2007_000032.jpg") == ["aeroplane"]  # keys without extension match


def test_csv_header_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("image,labels\na.jpg,cat\n")
    assert read_labels_file(path).labels == {"a.jpg": ["cat"]}


@pytest.mark.parametrize("key", ["../secret.jpg", "/etc/passwd.jpg", "a/../../x.jpg"])
def test_paths_escaping_the_image_folder_are_refused(tmp_path: Path, key: str) -> None:
    path = tmp_path / "l.json"
    path.write_text(f'{{"{key}": ["cat"]}}')
    with pytest.raises(ConfigError, match="image folder"):
        read_labels_file(path)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"a.jpg": [1]}'])
def test_bad_json_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "l.json"
    path.write_text(content)
    with pytest.raises(ConfigError):
        read_labels_file(path)


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_labels_file(tmp_path / "nope.json")


def test_voc_xml_annotations(tmp_path: Path) -> None:
    (tmp_path / "2007_000032.xml").write_text(
        "<annotation><filename>2007_000032.jpg</filename>"
        "<object><name>aeroplane</name></object><object><name>person</name></object>"
        "<object><name>aeroplane</name></object></annotation>"
    )
    index = read_voc_annotations(tmp_path)
    assert index.lookup("2007_000032.jpg") == ["aeroplane", "person"]


def test_voc_builtin_set_matches_the_shared_class_sets(golden_dir: Path) -> None:
    import json

    shared = json.loads((golden_dir.parent / "class-sets.json").read_text())
    for name in ("voc", "coco"):
        cs = load_class_set(name)
        assert list(cs.classes) == shared[name]["classes"]
        assert list(cs.prompts) == shared[name]["prompt_names"]
        assert list(cs.background) == shared[name]["background"]
        assert cs.lam == shared[name]["lambda"]
    assert load_class_set("voc").synonyms[14] == ("person with clothes", "people", "human")


def test_custom_class_file_with_synonyms(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("crack: fissure, split\nrust\n# comment\n")
    cs = load_class_set(str(path))
    assert cs.classes == ("crack", "rust")
    assert cs.prompts == ("crack, fissure, split", "rust")
    assert cs.synonyms[0] == ("crack", "fissure", "split")
    assert cs.lam == 0.4 and "ground" in cs.background


def test_inline_classes_drop_clashing_background_words() -> None:
    cs = load_class_set("Tree, car")
    assert cs.classes == ("Tree", "car")
    assert cs.index("tree") == 0 and "tree" not in cs.background


def test_background_choices(tmp_path: Path) -> None:
    voc = load_class_set("voc")
    assert load_background("none", voc) == ()
    assert "keyboard" not in load_background("coco", voc)
    words = tmp_path / "bg.txt"
    words.write_text("sky\nfloor\n")
    assert load_background(str(words), voc) == ("sky", "floor")
    with pytest.raises(ConfigError):
        load_background("nothing-like-this", voc)
    with pytest.raises(ConfigError, match="not found"):
        load_class_set("missing/classes.txt")
