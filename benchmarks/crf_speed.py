"""Dense CRF: seconds per image for pydensecrf and the torch backend, and how well they agree.

Speed: the photos in examples/images resized to 500x375, with 2, 3 and 4 labels (background +
1..3 CAM-like maps: a random 16-pixel grid, bilinearly upsampled, min-max normalised, as the
pipeline's refined CAMs look), CLIP-ES's CRF settings (10 iterations). pydensecrf is
single-threaded; torch is timed with 1 thread and with torch's default, and on CUDA when
there is a GPU (one image at a time, and all of them in one dense_crf_torch_batch call).

Agreement: the pipeline's CRF step (``mask_from_refined``: background = 1 - max, CRF, 255
below mu = 0.95) with each backend, on the golden images (the golden run's refined CAMs,
stored at every second pixel, bilinearly upsampled to full size) and the example photos at
their own size (3 CAM-like maps). Mask agreement counts 255 too; confidence = max of Q.

    python benchmarks/crf_speed.py
    python benchmarks/crf_speed.py --repeats 3 --skip-agreement
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from clipseg_cli.cam.normalize import resize_maps
from clipseg_cli.cam.pipeline import CLIPESSettings, mask_from_refined
from clipseg_cli.data.images import load_rgb
from clipseg_cli.postprocess.crf import dense_crf
from clipseg_cli.postprocess.crf_torch import dense_crf_torch, dense_crf_torch_batch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
EXAMPLES = sorted((ROOT / "examples" / "images").glob("*.jpg"))
SIZE = (500, 375)  # width, height


def cam_like(height: int, width: int, maps: int, seed: int) -> np.ndarray:
    """(maps, H, W) float32 in [0, 1]: a random 16-pixel grid, bilinearly upsampled, min-max normalised."""
    grid = np.random.default_rng(seed).random((maps, height // 16 + 1, width // 16 + 1)).astype(np.float32) ** 3
    refined = resize_maps(grid, height, width)
    low, high = refined.min(axis=(1, 2), keepdims=True), refined.max(axis=(1, 2), keepdims=True)
    return (refined - low) / (high - low)


def crf_probs(refined: np.ndarray) -> np.ndarray:
    """What mask_from_refined gives the CRF: [1 - max refined, refined]."""
    return np.concatenate([1.0 - refined.max(axis=0, keepdims=True), refined]).astype(np.float32)


def timed(fn, repeats: int, sync=lambda: None) -> float:  # noqa: ANN001
    """Best (least) seconds of ``repeats`` calls after one warm-up call: on a shared machine the
    least disturbed call is the closest to what the code costs."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(repeats: int, cuda: bool) -> None:
    cases = []  # (n_labels, image, probs)
    for i, path in enumerate(EXAMPLES):
        image = np.ascontiguousarray(cv2.resize(load_rgb(path), SIZE, interpolation=cv2.INTER_AREA))
        for maps in (1, 2, 3):
            cases.append((maps + 1, image, crf_probs(cam_like(SIZE[1], SIZE[0], maps, seed=10 * i + maps))))
    default_threads = torch.get_num_threads()
    columns = {"pydensecrf": {}, "torch, 1 thread": {}, f"torch, {default_threads} threads": {}}
    for n_labels, image, probs in cases:
        columns["pydensecrf"].setdefault(n_labels, []).append(timed(lambda: dense_crf(image, probs), repeats))
        for threads, name in ((1, "torch, 1 thread"), (default_threads, f"torch, {default_threads} threads")):
            torch.set_num_threads(threads)
            seconds = timed(lambda: dense_crf(image, probs, backend="torch"), repeats)
            columns[name].setdefault(n_labels, []).append(seconds)
        torch.set_num_threads(default_threads)
    if cuda:
        sync = torch.cuda.synchronize
        gpu = [(n, torch.from_numpy(im).cuda(), torch.from_numpy(p).cuda()) for n, im, p in cases]
        columns["torch, CUDA"] = {}
        for n_labels, image, probs in gpu:
            seconds = timed(lambda: dense_crf_torch(image, probs), repeats, sync)
            columns["torch, CUDA"].setdefault(n_labels, []).append(seconds)
        batch_seconds = timed(lambda: dense_crf_torch_batch([g[1] for g in gpu], [g[2] for g in gpu]), repeats, sync)
        columns[f"torch, CUDA, batch of {len(gpu)}"] = {n: [batch_seconds / len(gpu)] for n in (2, 3, 4)}
    print(f"\nseconds per {SIZE[0]}x{SIZE[1]} image (best of {repeats} after a warm-up, mean over {len(EXAMPLES)} photos)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if cuda else ""))  # fmt: skip
    print("labels  " + "".join(f"{name:>26}" for name in columns))
    for n_labels in (2, 3, 4):
        print(f"{n_labels:>6}  " + "".join(f"{np.mean(col[n_labels]):>26.3f}" for col in columns.values()))


def agreement() -> None:
    cases = []  # (name, image, refined, labels)
    for stem in json.loads((GOLDEN / "labels.json").read_text()):
        stem = Path(stem).stem
        expected = np.load(GOLDEN / "expected" / f"{stem}.npz")
        image = load_rgb(GOLDEN / "images" / f"{stem}.png")
        half = np.cumsum(np.cumsum(expected["refined_q16_d2"].astype(np.int64), axis=-2), axis=-1) / 65535.0
        refined = resize_maps(half.astype(np.float32), *image.shape[:2])
        cases.append((f"golden/{stem}", image, refined, [int(c) for c in expected["labels"]]))
    for i, path in enumerate(EXAMPLES):
        image = load_rgb(path)
        cases.append((f"examples/{path.stem}", image, cam_like(*image.shape[:2], 3, seed=i), [7, 11, 14]))
    print("\nagreement, torch vs pydensecrf (pipeline CRF step, mu = 0.95)")
    print(f"{'image':<28}{'size':>10}{'labels':>8}{'mask agree %':>14}{'max |conf diff|':>17}")
    for name, image, refined, labels in cases:
        mask_ref, conf_ref = mask_from_refined(image, refined, labels, CLIPESSettings(crf_backend="pydensecrf"))
        mask, conf = mask_from_refined(image, refined, labels, CLIPESSettings(crf_backend="torch"))
        size = f"{image.shape[1]}x{image.shape[0]}"
        print(f"{name:<28}{size:>10}{len(labels) + 1:>8}{100 * (mask == mask_ref).mean():>14.4f}"
              f"{np.abs(conf - conf_ref).max():>17.2e}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per image (the least is kept)")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    if not args.skip_speed:
        speed(args.repeats, torch.cuda.is_available())
    if not args.skip_agreement:
        agreement()


if __name__ == "__main__":
    main()
