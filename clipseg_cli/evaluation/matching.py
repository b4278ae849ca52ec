"""Pair prediction files with ground-truth files by relative path without extension."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipseg_cli.errors import ConfigError

SHOW_MISSING = 5


@dataclass(frozen=True)
class Pair:
    """One image to score: its key (relative path, no extension) and both files."""

    key: str
    pred: Path
    gt: Path


def index_folder(root: Path, suffix: str) -> dict[str, Path]:
    """``{relative/path/without/ext: file}`` for every ``*suffix`` file under ``root``.

    Hidden files and folders (e.g. ``.x.png.part`` leftovers) are skipped.
    """
    found: dict[str, Path] = {}
    for path in root.rglob("*"):
        if path.suffix.lower() != suffix or not path.is_file():
            continue
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        key = rel.with_suffix("").as_posix()
        if key in found:
            raise ConfigError(f"{root}: two files for {key!r}: {found[key].name} and {path.name}")
        found[key] = path
    return found


def pair_files(pred_dir: Path, gt_dir: Path, pred_suffix: str = ".png") -> list[Pair]:
    """Every GT label map with its prediction, sorted by key.

    A GT file without a prediction is an error that lists the first few; predictions
    without GT are ignored.
    """
    for name, folder in (("PRED", pred_dir), ("GT", gt_dir)):
        if not folder.is_dir():
            raise ConfigError(f"{name} {folder} is not a folder")
    gt = index_folder(gt_dir, ".png")
    if not gt:
        raise ConfigError(f"GT {gt_dir} holds no .png label maps")
    pred = index_folder(pred_dir, pred_suffix)
    missing = sorted(k for k in gt if k not in pred)
    if missing:
        shown = ", ".join(missing[:SHOW_MISSING]) + (", ..." if len(missing) > SHOW_MISSING else "")
        hint = ""
        sub = pred_dir / ("cams" if pred_suffix == ".npz" else "masks")
        if sub.is_dir():
            hint = f" (PRED holds a {sub.name}/ folder: pass {sub})"
        elif pred_suffix == ".png" and not pred and any(pred_dir.rglob("*.npz")):
            hint = " (PRED holds .npz CAMs: add --cams)"
        raise ConfigError(f"{len(missing)} of {len(gt)} GT files have no {pred_suffix} prediction in {pred_dir}: {shown}{hint}")
    return [Pair(key=k, pred=pred[k], gt=gt[k]) for k in sorted(gt)]
