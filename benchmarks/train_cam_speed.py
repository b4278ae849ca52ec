"""Seconds per training iteration of `wsss-label train-cam clims` (CAM network + frozen CLIP evaluator).

Times exactly what one iteration of the trainer does (ClimsEvaluator.similarities + clims_loss +
backward + SGD step) on random data, with a randomly initialised CLIP of ViT-B/16's architecture
(the compute is the same as with the real weights; no weights are needed). The paper's sizes are
ResNet-50, batch 16, crop 512, CLIP input 224; VOC train_aug has about 1.5 labelled classes per
image, so ``--pairs-per-image 1.5`` (each pair is two CLIP passes: X*P_k and X*(1-P_k)).

    python benchmarks/train_cam_speed.py                       # paper sizes
    python benchmarks/train_cam_speed.py --batch 2 --iters 2   # smaller, extrapolated to batch 16

Cost is linear in the batch (CAM net and CLIP both per image), so a smaller batch is scaled to 16
and the result says so.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from clipseg_cli.clip.model import CLIP, CLIPConfig
from clipseg_cli.methods import clims

VIT_B16 = CLIPConfig(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     context_length=77, vocab_size=49408, text_width=512, text_heads=8, text_layers=12)  # fmt: skip
VOC = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50", choices=list(clims.ARCHS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--pairs-per-image", type=float, default=1.5)
    ap.add_argument("--iters", type=int, default=2, help="timed iterations (after one warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    clip = CLIP(VIT_B16).to(device).eval().requires_grad_(False)
    net = clims.CAMNet(clims.ARCHS[args.arch], len(VOC)).to(device).train()
    evaluator = clims.ClimsEvaluator(clip, VOC, clims.background_prompts(VOC)).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=2.5e-4, momentum=0.9, weight_decay=1e-4)
    pairs = max(1, round(args.pairs_per_image * args.batch))
    y = torch.zeros(args.batch, len(VOC), device=device)
    for p in range(pairs):  # spread the positive pairs over the images
        y[p % args.batch, (p * 7) % len(VOC)] = 1.0

    def step() -> None:
        images = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
        rgb = torch.rand(args.batch, 3, args.crop, args.crop, device=device)
        cams = net(images)
        sims = evaluator.similarities(rgb, cams, y)
        loss, _ = clims.clims_loss(sims, cams, y, evaluator.bg_valid, clims.OPTIONS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per_iter = sum(times) / len(times)
    result = {
        "arch": args.arch, "batch": args.batch, "crop": args.crop, "clip": "ViT-B/16 architecture (random weights), input 224",
        "positive_pairs": pairs, "device": str(device), "threads": torch.get_num_threads(),
        "seconds_per_iteration": round(per_iter, 3), "timed_iterations": args.iters,
    }  # fmt: skip
    if args.batch != 16:
        result["seconds_per_iteration_at_batch_16_extrapolated"] = round(per_iter * 16 / args.batch, 2)
    s16 = result.get("seconds_per_iteration_at_batch_16_extrapolated", per_iter)
    result["paper_schedule_hours_6615_iters"] = round(s16 * 6615 / 3600, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
