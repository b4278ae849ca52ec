"""Seconds per image for CAM+CAA and CRF, and peak memory, on a random ViT-B/16-sized CLIP.

    python benchmarks/label_speed.py [--size 500x375] [--labels 1 2 3 4] [--repeats 5]
                                     [--gradcam fused|autograd] [--device cpu|cuda]

Also times one plain no-grad pass of the 12 vision blocks over the same tokens, the yardstick
of the speed issue; the two are interleaved and the minimum of the repeats is reported, so
load from other processes hurts both alike. Each label count runs in a fresh process so the
peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

from clipseg_cli.clip.model import VIT_B_16_CONFIG

VIT_B_16 = dict(VIT_B_16_CONFIG.__dict__)


def measure(size: tuple[int, int], n_labels: int, repeats: int, device: str, gradcam: str) -> dict[str, float]:
    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.cam.preprocess import to_clip_tensor
    from clipseg_cli.clip.model import CLIP, CLIPConfig
    from clipseg_cli.data.classes import load_class_set

    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**VIT_B_16)).eval().requires_grad_(False).to(device)
    classes = load_class_set("voc")
    predictor = CLIPESPredictor(model, classes, CLIPESSettings(lam=classes.lam, gradcam=gradcam))  # type: ignore[arg-type]
    width, height = size
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (height // 8, width // 8, 3), np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    labels = [7, 14, 11, 12][:n_labels]
    predictor.predict(image, labels)  # warm-up: text features, allocator
    tokens = to_clip_tensor(image).to(device)

    def plain_pass() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            x = model.visual.embed(tokens)
            for block in model.visual.blocks:
                x, _ = block(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    cam, crf, plain = [], [], []
    for _ in range(repeats):
        plain.append(plain_pass())
        result = predictor.predict(image, labels)
        cam.append(result.seconds["cam"])
        crf.append(result.seconds["crf"])
    grid = (tokens.shape[-2] // 16) * (tokens.shape[-1] // 16)
    return {
        "labels": n_labels,
        "tokens": grid + 1,
        "cam_caa_s": min(cam),
        "crf_s": min(crf),
        "plain_12_blocks_s": min(plain),
        "cam_over_plain": min(cam) / min(plain),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT")
    parser.add_argument("--labels", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gradcam", choices=["fused", "autograd"], default="fused")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.child:
        print(json.dumps(measure(size, args.labels[0], args.repeats, args.device, args.gradcam)))  # type: ignore[arg-type]
        return
    print(
        f"ViT-B/16-sized random CLIP, {args.size} image, device {args.device}, "
        f"{args.gradcam} Grad-CAM, torch threads {torch.get_num_threads()}"
    )
    print(f"{'labels':>6} {'tokens':>6} {'CAM+CAA s':>10} {'CRF s':>7} {'plain 12 blocks s':>18} {'ratio':>6} {'peak RSS MB':>12}")
    for n in args.labels:
        cmd = [sys.executable, __file__, "--child", "--size", args.size, "--labels", str(n),
               "--repeats", str(args.repeats), "--device", args.device, "--gradcam", args.gradcam]  # fmt: skip
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(
            f"{row['labels']:>6} {row['tokens']:>6} {row['cam_caa_s']:>10.3f} {row['crf_s']:>7.3f} "
            f"{row['plain_12_blocks_s']:>18.3f} {row['cam_over_plain']:>6.2f} {row['peak_rss_mb']:>12.0f}"
        )


if __name__ == "__main__":
    main()
