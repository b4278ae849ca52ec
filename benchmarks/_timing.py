"""Timing one training step for the speed benchmarks (imported as ``_timing`` from the scripts)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def step_seconds(step: Callable[[int], object], iters: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Wall seconds of each ``step(i)``, i = 0 .. warmup + iters - 1: the first ``warmup`` are start-up
    and autotuning, to be left out of averages. CUDA work is synchronised before and after each."""
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times
