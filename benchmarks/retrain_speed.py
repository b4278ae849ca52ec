"""Training speed of DeepLabV2 (`wsss-label retrain`) per backbone: seconds/iteration, it/s, peak memory.

One full training step per iteration (forward, confidence-guided CE on upsampled logits, backward,
SGD step) on random inputs, so the numbers leave out image decoding and augmentation. Every arch
runs in its own process so that its peak memory is its own.

    python benchmarks/retrain_speed.py                                  # resnet18/50/101, crop 129, batch 2, CPU
    python benchmarks/retrain_speed.py --archs resnet101 --crop 321 --batch 10 --iters 2   # the paper's setting
    python benchmarks/retrain_speed.py --device cuda --crop 321 --batch 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(arch: str, crop: int, batch: int, iters: int, warmup: int, device_name: str, frozen_bn: bool, threads: int) -> dict:
    import torch

    from clipseg_cli.methods.deeplab import build_optimizer
    from clipseg_cli.segmentation.deeplab import build_deeplabv2
    from clipseg_cli.segmentation.losses import confidence_guided_ce

    if threads > 0:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    model = build_deeplabv2(f"deeplabv2-{arch}", 21)
    if frozen_bn:
        model.freeze_bn()
    model.to(device).train()
    optimizer = build_optimizer(model, 2e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=gen).to(device)
    y = torch.randint(0, 21, (batch, crop, crop), generator=gen)
    y[:, : crop // 10] = 255
    y = y.to(device)

    def step() -> None:
        loss = confidence_guided_ce(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    sec = sum(times) / len(times)
    out = {
        "arch": arch,
        "device": str(device),
        "crop": crop,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "frozen_bn": frozen_bn,
        "seconds_per_iteration": round(sec, 4),
        "iterations_per_second": round(1.0 / sec, 4),
        "images_per_second": round(batch / sec, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    if device.type == "cuda":
        out["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50,resnet101", help="comma-separated: resnet18,resnet50,resnet101")
    ap.add_argument("--crop", type=int, default=129)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--train-bn", action="store_true", help="train BatchNorm (random init) instead of freezing it (--init)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    archs = [a.strip().removeprefix("deeplabv2-") for a in args.archs.split(",") if a.strip()]
    if args.one:
        print(json.dumps(measure(archs[0], args.crop, args.batch, args.iters, args.warmup, args.device, not args.train_bn, args.threads)))
        return
    print(f"{'arch':<10} {'device':<6} {'crop':>5} {'batch':>5} {'s/it':>9} {'it/s':>8} {'img/s':>8} {'peak RSS MiB':>13}")
    for arch in archs:
        cmd = [sys.executable, __file__, "--one", "--archs", arch, "--crop", str(args.crop), "--batch", str(args.batch),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--device", args.device, "--threads", str(args.threads)]  # fmt: skip
        if args.train_bn:
            cmd.append("--train-bn")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{arch:<10} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        extra = f"  cuda peak {r['peak_cuda_allocated_mib']} MiB" if "peak_cuda_allocated_mib" in r else ""
        print(
            f"{arch:<10} {r['device']:<6} {r['crop']:>5} {r['batch']:>5} {r['seconds_per_iteration']:>9.3f} "
            f"{r['iterations_per_second']:>8.3f} {r['images_per_second']:>8.2f} {r['peak_rss_mib']:>13.0f}{extra}"
        )


if __name__ == "__main__":
    main()
