"""The deterministic sample stream every training run draws from, and its loader.

Sample ``g`` of a run (``g = iteration * batch + k``) is item ``perm_e[g mod n]`` of epoch
``e = g // n``; a dataset draws the sample's augmentation from ``numpy.random.default_rng([seed, g])``.
The stream is a pure function of (seed, iteration), whatever the number of loader workers, so
resuming from any iteration reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from clipseg_cli.data.images import read_rgb
from clipseg_cli.errors import ImageError

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def resolve_workers(workers: int, device: torch.device) -> int:
    """``--workers -1``: 0 on CPU, up to 4 on CUDA."""
    if workers >= 0:
        return workers
    return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)


def sample_position(g: int, n: int, seed: int, _cache: dict[tuple[int, int, int], np.ndarray] = {}) -> int:
    """Dataset index of run-wide sample ``g`` (a fresh permutation per epoch)."""
    epoch, pos = divmod(g, n)
    key = (seed, epoch, n)
    perm = _cache.get(key)
    if perm is None:
        if len(_cache) > 4:
            _cache.clear()
        perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
        _cache[key] = perm
    return int(perm[pos])


class TrainBatches(Sampler[list[tuple[int, int]]]):
    """Batches of ``(dataset index, sample number)`` for iterations ``start`` .. ``stop - 1``."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.stop):
            g0 = it * self.batch
            yield [(sample_position(g, self.n, self.seed), g) for g in range(g0, g0 + self.batch)]


def stream_loader(dataset: Dataset, batch: int, seed: int, start: int, stop: int, workers: int, device: torch.device) -> DataLoader:
    """A DataLoader over the stream of iterations ``start`` .. ``stop - 1`` of ``dataset``."""
    sampler = TrainBatches(len(dataset), batch, seed, start, stop)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers > 0 else None,
    )


def read_or_blank(read: Callable[[], T], blank: Callable[[], T]) -> tuple[T, str]:
    """``read()``, or ``blank()`` and the reason when the file is unusable: a loader worker must not
    raise, the loop stops with the message instead (one line, no worker traceback)."""
    try:
        return read(), ""
    except ImageError as exc:
        return blank(), str(exc)


def label_vector(values: Sequence[int], num_classes: int, background: bool) -> torch.Tensor:
    """Multi-hot float vector of an image's mask values (1 + c): over the ``num_classes`` classes, or
    over (background, classes...) with background set when ``background``."""
    if background:
        vec = torch.zeros(num_classes + 1)
        vec[[0, *values]] = 1.0
    else:
        vec = torch.zeros(num_classes)
        vec[[v - 1 for v in values]] = 1.0
    return vec


class LabelledImages(Dataset):
    """Training images with image-level labels, item ``(index, sample number)`` as the stream gives
    them; a subclass makes the item from the decoded image and the sample's RNG
    (``default_rng([seed, sample])``) in :meth:`make`. Items carry ``target_key`` (the label vector,
    :func:`label_vector`) and ``error``."""

    target_key = "labels"

    def __init__(self, paths: Sequence[Path], labels: Sequence[Sequence[int]], num_classes: int, seed: int, *,
                 background: bool, blank: int) -> None:  # fmt: skip
        self.paths, self.seed, self.blank = list(paths), seed, blank
        self.targets = [label_vector(values, num_classes, background) for values in labels]

    def __len__(self) -> int:
        return len(self.paths)

    def make(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
        raise NotImplementedError

    def __getitem__(self, item: tuple[int, int]) -> dict[str, object]:
        index, g = item
        rng = np.random.default_rng([self.seed, g])
        image, error = read_or_blank(lambda: read_rgb(self.paths[index]),
                                     lambda: np.zeros((self.blank, self.blank, 3), np.uint8))  # fmt: skip
        return {**self.make(image, rng), self.target_key: self.targets[index], "error": error}
