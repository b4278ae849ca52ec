"""Seconds per training iteration of `wsss-label refine train` (WeakCLIP) at ViT-B/16 size.

A randomly initialised CLIP with ViT-B/16's shapes (built here, no weights file), VOC's 20 classes
with the class set's prompts (21 texts with background), 8 context vectors, decoder width 256.
One iteration = what the trainer's step does: frozen image tower (no grad), learnable prompt
through the frozen text tower, pyramid adapter, co-attention matching, decoder, eq. 12 + eq. 13
(dense CRF of every image on the CPU), backward, AdamW step. Inputs are random crops and seeds,
so image decoding and augmentation are left out. Also times the parts of one iteration.

    python benchmarks/refine_speed.py                                # crop 224, batch 2, CPU
    python benchmarks/refine_speed.py --crop 320 --batch 4 --iters 3
    python benchmarks/refine_speed.py --device cuda --crop 512 --batch 8   # the paper's setting
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from clipseg_cli.clip.model import VIT_B_16_CONFIG

VIT_B_16 = dict(VIT_B_16_CONFIG.__dict__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crop", type=int, default=224, help="square crop, a multiple of 32")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument(
        "--predict",
        default="500x375",
        help="also time prediction of one WIDTHxHEIGHT image at scale 1 (no CRF); '' skips",
    )
    args = ap.parse_args()

    from clipseg_cli.clip.model import CLIP, CLIPConfig
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.methods.weakclip import WeakCLIP

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(**VIT_B_16)).eval().requires_grad_(False)
    voc = load_class_set("voc")
    model = WeakCLIP.create(clip, voc.classes, voc.prompts, {"context": 8, "decoder_dim": 256}).to(device).train()
    optimizer = torch.optim.AdamW(model.learnable_parameters(), lr=1e-4, weight_decay=3e-5)
    rng = np.random.default_rng(0)
    b, s, k = args.batch, args.crop, len(voc.classes) + 1
    images = torch.randn(b, 3, s, s, device=device)
    labels = torch.zeros(b, k, dtype=torch.bool)
    labels[:, 0] = True
    labels[:, 1 + rng.choice(20, 2, replace=False)] = True
    seeds = torch.from_numpy(rng.choice([0, 255, *np.flatnonzero(labels[0].numpy())[1:]], (b, s, s)))
    batch = {
        "mask": seeds,
        "labels": labels,
        "rgb": torch.from_numpy(rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8)),
    }

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def step() -> dict[str, float]:
        t0 = sync()
        with torch.no_grad():
            model.image_features(images)
        t1 = sync()
        logits = model(images)  # includes the frozen image tower again: parts are measured separately
        t2 = sync()
        loss, _ = model.training_loss(logits, batch)
        t3 = sync()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t4 = sync()
        return {"image_tower": t1 - t0, "forward": t2 - t1, "loss_with_crf": t3 - t2, "backward_and_step": t4 - t3}

    for _ in range(args.warmup):
        step()
    parts = [step() for _ in range(args.iters)]
    per = {key: float(np.mean([p[key] for p in parts])) for key in parts[0]}
    iteration = per["forward"] + per["loss_with_crf"] + per["backward_and_step"]
    out = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "crop": s,
        "batch": b,
        "classes": k,
        "learnable_parameters": sum(p.numel() for p in model.learnable_parameters()),
        "seconds_per_iteration": round(iteration, 3),
        "images_per_second": round(b / iteration, 3),
        "parts_seconds": {key: round(v, 3) for key, v in per.items()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    if args.predict:
        from clipseg_cli.inference import multiscale_probs

        width, height = (int(v) for v in args.predict.lower().split("x"))
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        model.eval()
        times = []
        for _ in range(args.warmup + args.iters):
            t0 = sync()
            multiscale_probs(model, model.normalization, image, device)
            times.append(sync() - t0)
        out["predict_seconds_per_image"] = {
            "size": args.predict,
            "scales": [1.0],
            "seconds": round(float(np.mean(times[args.warmup :])), 3),
        }
    if device.type == "cuda":
        out["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(json.dumps(out, indent=2))
    print(f"WeakCLIP refine train, ViT-B/16 size, crop {s}, batch {b}, {out['threads']} thread(s), {device}: "
          f"{iteration:.2f} s per iteration")  # fmt: skip


if __name__ == "__main__":
    main()
