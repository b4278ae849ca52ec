"""The deterministic sample stream every training run draws from, and its loader.

Sample ``g`` of a run (``g = iteration * batch + k``) is item ``perm_e[g mod n]`` of epoch
``e = g // n``; a dataset draws the sample's augmentation from ``numpy.random.default_rng([seed, g])``.
The stream is a pure function of (seed, iteration), whatever the number of loader workers, so
resuming from any iteration reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import os
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


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


def stream_loader(
    dataset: Dataset, batch: int, seed: int, start: int, stop: int, workers: int, device: torch.device
) -> DataLoader:
    """A DataLoader over the stream of iterations ``start`` .. ``stop - 1`` of ``dataset``."""
    sampler = TrainBatches(len(dataset), batch, seed, start, stop)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if workers > 0 else None,
    )
