"""Image / pseudo-mask pairs and the augmented training crops made from them.

Pairing: ``IMAGES/<rel>.<ext>`` goes with ``MASKS/<rel>.png`` (or ``MASKS/masks/<rel>.png`` when
MASKS is the output folder of ``wsss-label label``). Mask values: 0 background, 1 + c for class c,
255 ignored.

Items are indexed by ``(dataset index, sample number)`` as :mod:`clipseg_cli.training.data` streams
them; an item's augmentation is drawn from ``numpy.random.default_rng([seed, sample number])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipseg_cli.data.images import image_size, list_images, read_rgb
from clipseg_cli.errors import ConfigError, ImageError
from clipseg_cli.io.masks import IGNORE_LABEL, load_label_map
from clipseg_cli.segmentation.augment import train_augment
from clipseg_cli.segmentation.deeplab import Normalization
from clipseg_cli.training.data import read_or_blank


@dataclass(frozen=True)
class Pair:
    key: str
    image: Path
    mask: Path


def resolve_masks_dir(path: Path, what: str = "MASKS") -> Path:
    """MASKS itself, or MASKS/masks when MASKS is a ``wsss-label label`` output folder."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{what} {path}: no such folder")
    sub = path / "masks"
    return sub if sub.is_dir() else path


def find_pairs(
    images: Path, masks: Path, *, skip_missing: bool = False, what: str = "MASKS", keys: Collection[str] | None = None
) -> list[Pair]:
    """Pair every image (only those whose key is in ``keys``, when given) with its mask; ConfigError
    for an image without mask unless ``skip_missing``."""
    images = Path(images)
    if not images.exists():
        raise ConfigError(f"IMAGES {images}: no such folder")
    mask_root = resolve_masks_dir(masks, what)
    found = list_images(images)
    if not found:
        raise ConfigError(f"IMAGES {images}: no images found")
    pairs, missing = [], []
    for key, img in found.items():
        if keys is not None and key not in keys:
            continue
        mask = mask_root / f"{key}.png"
        if mask.is_file():
            pairs.append(Pair(key, img, mask))
        else:
            missing.append(key)
    if missing and not skip_missing:
        raise ConfigError(
            f"{len(missing)} image(s) have no mask in {mask_root}, e.g. {missing[0]}.png "
            "(pass --skip-missing to train on the images that have one)"
        )
    if not pairs:
        raise ConfigError(f"no image in {images} has a mask in {mask_root}")
    return pairs


def check_pair_sizes(pairs: Sequence[Pair]) -> None:
    """Header-only check that every mask has its image's size; ConfigError naming the first mismatch."""
    for p in pairs:
        try:
            isize = image_size(p.image)
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
        try:
            with Image.open(p.mask) as m:
                msize = m.size
        except Exception as exc:
            raise ConfigError(f"{p.mask}: cannot read mask ({type(exc).__name__})") from None
        if isize != msize:
            raise ConfigError(f"{p.mask}: mask is {msize[0]}x{msize[1]} but its image is {isize[0]}x{isize[1]}")


def load_pair(pair: Pair, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode an image and its mask; ImageError with a one-line reason when unusable."""
    image = read_rgb(pair.image)
    try:
        mask = load_label_map(pair.mask)
    except Exception as exc:
        raise ImageError(f"{pair.mask}: cannot read mask ({str(exc)[:100]})") from None
    if mask.shape != image.shape[:2]:
        raise ImageError(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}")
    bad = (mask >= num_classes) & (mask != IGNORE_LABEL)
    if bad.any():
        raise ImageError(f"{pair.mask}: label {int(mask[bad].max())} is out of range for {num_classes - 1} classes (check --classes)")
    return image, mask


class PseudoMaskDataset(Dataset):
    """Augmented training crops; indexed by ``(dataset index, sample number)``.

    An unusable file does not raise inside a loader worker: the item carries its error message and
    the training loop stops with it (one clear line, no worker traceback). With ``keep_rgb`` an
    item also holds the augmented crop as (crop, crop, 3) uint8 RGB under ``"rgb"``.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        num_classes: int,
        norm: Normalization,
        scales: Sequence[float],
        crop: int,
        seed: int,
        keep_rgb: bool = False,
    ) -> None:
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.norm = norm
        self.scales = tuple(scales)
        self.crop = crop
        self.seed = seed
        self.keep_rgb = keep_rgb

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, object]:
        index, g = item
        rng = np.random.default_rng([self.seed, g])
        blank = (np.zeros((self.crop, self.crop, 3), np.uint8), np.full((self.crop, self.crop), IGNORE_LABEL, np.uint8))
        (image, mask), error = read_or_blank(lambda: load_pair(self.pairs[index], self.num_classes), lambda: blank)
        image, mask = train_augment(image, mask, rng, self.scales, self.crop, self.norm.mean_rgb)
        item: dict[str, object] = {
            "image": torch.from_numpy(self.norm.apply(image)),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "error": error,
        }
        if self.keep_rgb:
            # The crop as uint8 RGB (padding in the mean colour), for losses that look at the pixels (CRF).
            item["rgb"] = torch.from_numpy(np.clip(image + 0.5, 0, 255).astype(np.uint8))
        return item
