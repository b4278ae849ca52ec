"""Peak memory of labelling one large image, per pixel: what ``--max-pixels`` is chosen from.

    python benchmarks/image_memory.py [--megapixels 4 16 36] [--labels 1 3] [--save-cams] [--visualize]

Each case runs in a fresh process: a tiny random CLIP is built (the model's own memory does
not depend on the image's pixel count once ``--max-side`` scales the model's input down), the
peak RSS is read, then one image is decoded, labelled (CAM, CAA, CRF at ``--max-side``) and its
files written as ``wsss-label`` writes them; the growth of the peak RSS is the image's cost.
Printed: megapixels, labels, the growth in MB and in bytes per pixel.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def measure(image: str, n_labels: int, save_cams: bool, visualize: bool, max_side: int) -> dict[str, float]:
    import torch

    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.clip.model import CLIP, CLIPConfig
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.labeling import LabelJob, OutputLayout, WorkItem

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = CLIPConfig(embed_dim=32, image_resolution=224, vision_layers=2, vision_width=64, vision_patch_size=16,
                        context_length=77, vocab_size=49408, text_width=32, text_heads=1, text_layers=1)  # fmt: skip
    classes = load_class_set("voc")
    predictor = CLIPESPredictor(CLIP(config).eval().requires_grad_(False), classes, CLIPESSettings(max_side=max_side))
    labels = tuple(range(n_labels))
    item = WorkItem(Path(image).name, labels, tuple(classes.classes[i] for i in labels))
    with tempfile.TemporaryDirectory() as out:
        job = LabelJob(Path(image).parent, OutputLayout(Path(out)), predictor, save_cams=save_cams, visualize=visualize,
                       max_pixels=None)  # fmt: skip
        small = WorkItem("warm.png", labels, item.names)
        job.process(small)  # the model at --max-side, text features, thread pools: not the pixels' cost
        before = _peak_mb()
        job.process(item)
        after = _peak_mb()
    return {"before_mb": before, "after_mb": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[4.0, 16.0, 36.0])
    parser.add_argument("--labels", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--save-cams", action="store_true")
    parser.add_argument("--visualize", action="store_true")
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.save_cams, args.visualize, args.max_side)))
        return
    from PIL import Image

    print(f"max_side={args.max_side} save_cams={args.save_cams} visualize={args.visualize}")
    print(f"{'MP':>6} {'labels':>6} {'growth MB':>10} {'bytes/pixel':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        warm = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(warm).resize((args.max_side, args.max_side)).save(Path(tmp) / "warm.png")
        for mp in args.megapixels:
            side = int(round((mp * 1e6) ** 0.5))
            path = Path(tmp) / f"{side}.png"
            base = rng.integers(0, 255, (max(2, side // 64), max(2, side // 64), 3), dtype=np.uint8)
            Image.fromarray(base).resize((side, side), Image.Resampling.BILINEAR).save(path, compress_level=1)
            for k in args.labels:
                flags = [f"--max-side={args.max_side}"] + ["--save-cams"] * args.save_cams + ["--visualize"] * args.visualize
                proc = subprocess.run([sys.executable, __file__, "--child", str(path), str(k), *flags],
                                      capture_output=True, text=True, check=True)  # fmt: skip
                got = json.loads(proc.stdout.strip().splitlines()[-1])
                growth = got["after_mb"] - got["before_mb"]
                print(f"{side * side / 1e6:6.1f} {k:6d} {growth:10.0f} {growth * 2**20 / (side * side):12.1f}")


if __name__ == "__main__":
    main()
