"""Build time of `wsss-label report` on synthetic run folders (cold, then incremental).

    python benchmarks/report_build.py                 # 1,000 and 10,000 images
    python benchmarks/report_build.py --sizes 2000 --workers 2 --width 500 --height 375
    python benchmarks/report_build.py --sizes 1000 --cams   # .npz with CAM arrays: heat maps too

For each size it makes a fake run folder (photos, masks with classes and ignored bands,
cams/*.npz holding ``labels`` and a float16 ``confidence`` map, run.json) and times:

- cold: an empty report/ folder: every mask read, every thumbnail and overlay rendered;
- incremental: the same build again (nothing changed: only stat() calls and the page);
- one changed: one mask rewritten, then rebuilt (one image re-read and re-rendered);
- for up to 2,000 images also a cold build in this process alone, whose CPU time per image
  says what an idle machine would take (other jobs on a shared machine slow the wall time).

The fake folder is made from 64 distinct images and masks copied round-robin (each copy is
a separate file, decoded on its own by the build), so generating 10,000 images stays quick.
Folders are kept under --root and reused by later runs.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipseg_cli.io.masks import encode_mask_png
from clipseg_cli.report import build

VARIANTS = 64
CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]  # fmt: skip


def synthetic_image(rng: np.random.Generator, w: int, h: int, cams: bool = False) -> tuple[bytes, bytes, bytes, list[str]]:
    """(photo JPEG, mask PNG, cams npz, labels) of one fake image; ``cams``: the npz also holds
    ``cam`` and ``refined`` (K, H, W) float32 as --save-cams writes them (the report draws heat maps)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.integers(0, 255, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
    mask = np.zeros((h, w), dtype=np.uint8)
    conf = np.full((h, w), 0.99, dtype=np.float32)
    labels = []
    for _ in range(int(rng.integers(1, 4))):
        c = int(rng.integers(0, len(CLASSES)))
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        rx, ry = rng.uniform(0.1, 0.35) * w, rng.uniform(0.1, 0.35) * h
        d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        mask[d < 1] = 1 + c
        band = np.abs(d - 1) < rng.uniform(0.05, 0.3)
        mask[band] = 255
        conf = np.minimum(conf, np.clip(0.7 + 0.3 * np.abs(d - 1) / 0.3, 0.5, 0.99))
        if CLASSES[c] not in labels:
            labels.append(CLASSES[c])
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=90)
    npz = io.BytesIO()
    arrays = {"labels": np.array([CLASSES.index(n) for n in labels], dtype=np.int64), "confidence": conf.astype(np.float16)}
    if cams:
        maps = np.stack([np.exp(-(((xx - w * rng.uniform(0.2, 0.8)) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 8) for _ in labels])
        arrays["cam"] = maps.astype(np.float32)
        arrays["refined"] = (maps**2).astype(np.float32)
    np.savez_compressed(npz, **arrays)
    return buf.getvalue(), encode_mask_png(mask), npz.getvalue(), labels


def make_run(folder: Path, n: int, w: int, h: int, cams: bool = False) -> Path:
    """A fake run folder with n images (reused if it is complete)."""
    out = folder / "out"
    if (out / "run.json").is_file() and len(json.loads((out / "run.json").read_text())["images"]) == n:
        return out
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    variants = [synthetic_image(rng, w, h, cams) for _ in range(VARIANTS)]
    images, masks, cams = folder / "images", out / "masks", out / "cams"
    entries = []
    for i in range(n):
        photo, mask, npz, labels = variants[i % VARIANTS]
        sub = f"{i // 1000:03d}"
        for d in (images / sub, masks / sub, cams / sub):
            d.mkdir(parents=True, exist_ok=True)
        stem = f"{sub}/img_{i:06d}"
        (images / f"{stem}.jpg").write_bytes(photo)
        (masks / f"{stem}.png").write_bytes(mask)
        (cams / f"{stem}.npz").write_bytes(npz)
        seconds = {"cam": round(float(rng.uniform(0.5, 2)), 4), "crf": round(float(rng.uniform(0.2, 1)), 4)}
        seconds["total"] = round(seconds["cam"] + seconds["crf"], 4)
        entries.append({"image": f"{stem}.jpg", "labels": labels, "seconds": seconds})
    run = {
        "tool": "wsss-label",
        "settings": {"images": str(images.resolve()), "classes": "voc", "class_names": CLASSES, "mu": 0.95, "crf": True},
        "images": entries,
        "skipped": [],
        "failed": [{"image": "broken.jpg", "reason": "not a readable image (corrupt, empty or unknown format)"}],
    }
    (out / "run.json").write_text(json.dumps(run))
    return out


def timed(label: str, fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    print(f"  {label:<13} {seconds:7.2f} s   (stats computed {result.computed}, pictures rendered {result.rendered})", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated image counts")
    ap.add_argument("--width", type=int, default=400)
    ap.add_argument("--height", type=int, default=300)
    ap.add_argument("--workers", type=int, default=None, help="pool processes (default: CPU cores)")
    ap.add_argument("--root", type=Path, default=Path("/tmp/wsss-report-bench"))
    ap.add_argument("--cams", action="store_true", help="the .npz files hold CAM arrays too: heat maps are rendered")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{cores} CPU core(s), load average {load}, workers={args.workers or cores}, images {args.width}x{args.height}")
    for n in (int(s) for s in args.sizes.split(",")):
        t = time.perf_counter()
        out = make_run(args.root / f"run-{n}{'-cams' if args.cams else ''}", n, args.width, args.height, args.cams)
        print(f"{n:,} images (fake run ready in {time.perf_counter() - t:.1f} s): {out}")
        shutil.rmtree(out / "report", ignore_errors=True)
        run = functools.partial(build, out, workers=args.workers)
        cold = timed("cold", run)
        warm = timed("incremental", run)
        mask = next((out / "masks").rglob("*.png"))
        mask.write_bytes(mask.read_bytes())  # same pixels, new mtime
        os.utime(mask, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        one = timed("one changed", run)
        if n <= 2000:  # CPU cost per image, measured in this process (workers=1)
            shutil.rmtree(out / "report", ignore_errors=True)
            before = resource.getrusage(resource.RUSAGE_SELF)
            build(out, workers=1)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(f"  CPU time of a cold build in one process: {1000 * cpu / n:.2f} ms per image "
                  f"(=> {n * cpu / n / max(1, cores):.1f} s per {n:,} images on {cores} idle core(s), pool overhead aside)")  # fmt: skip
        size = sum(f.stat().st_size for f in (out / "report").rglob("*") if f.is_file())
        print(
            f"  => {n / cold:,.0f} images/s cold ({1000 * cold / n:.2f} ms per image), incremental {warm:.2f} s, "
            f"one changed {one:.2f} s; report/ {size / 2**20:.0f} MiB, index.html "
            f"{(out / 'report' / 'index.html').stat().st_size / 2**20:.1f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
