"""Seconds per training iteration of ViT-PCM at ViT-B/16 size (random init, no weights needed).

    python benchmarks/train_cam_vitpcm_speed.py [--size 384] [--batch 8] [--iters 3] [--device cpu]

Times one optimisation step (main branch + affine/mosaic equivariance branch, forward + backward +
Adam) in both phases of the schedule: backbone frozen, and the last 4 blocks training. Prints JSON.
"""

from __future__ import annotations

import argparse
import json

import torch
from _timing import step_seconds

from clipseg_cli.methods.vit_backbone import TimmViT
from clipseg_cli.methods.vitpcm import PatchClassMapper, vitpcm_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--lstm-hidden", type=int, default=256)
    ap.add_argument("--unfreeze", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    vit = TimmViT(width=768, depth=12, heads=12, patch_size=16, grid=args.size // 16)
    model = PatchClassMapper(vit, args.classes + 1, args.lstm_hidden).to(device).train()
    model.set_trainable_blocks(0)
    opt = torch.optim.Adam(
        [
            {"params": model.head_parameters()},
            {"params": model.finetune_parameters(args.unfreeze)},
        ],
        lr=1e-4,
    )
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    targets = torch.zeros(args.batch, args.classes + 1, device=device)
    targets[:, 0] = 1
    targets[:, 1] = 1
    result = {
        "size": args.size,
        "batch": args.batch,
        "grid": args.size // 16,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for phase, blocks in (
        ("frozen", 0),
        (f"finetune_last_{args.unfreeze}", args.unfreeze),
    ):
        model.set_trainable_blocks(blocks)

        def step(i: int) -> None:
            loss, _ = vitpcm_loss(model, images, targets, i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times = step_seconds(step, args.iters, device)
        steady = times[1:] or times
        result[phase] = {
            "seconds_per_iteration": round(sum(steady) / len(steady), 3),
            "images_per_second": round(args.batch * len(steady) / sum(steady), 3),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
