"""Seconds per DALNet training iteration at ViT-B/16 size (random weights; 20 VOC classes, 512-d text).

    python benchmarks/train_cam_dalnet_speed.py [--crop 448] [--batch 4] [--iters 3] [--device cpu]
        [--backbone timm|clip] [--threads N]

One forward + losses + backward + AdamW step per iteration, on random images (data loading not
timed); the first iteration is a warm-up and not counted. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
from _timing import step_seconds

from clipseg_cli.methods.dalnet import DALNet
from clipseg_cli.methods.vit_backbone import TimmViT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crop", type=int, default=448)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", choices=("timm", "clip"), default="timm")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    if a.backbone == "timm":
        vit = TimmViT(768, 12, 12, 16, 14)
    else:
        from clipseg_cli.clip.model import CLIP, CLIPConfig

        vit = CLIP(CLIPConfig(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)).visual
    model = DALNet(vit, torch.randn(20, 512), torch.randn(512), backbone_spec=a.backbone).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    x = torch.randn(a.batch, 3, a.crop, a.crop, device=device)
    y = (torch.rand(a.batch, 20, device=device) < 0.15).float()
    y[:, 0] = 1

    def step(_: int) -> None:
        loss = model.losses(model(x), y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = step_seconds(step, a.iters, device)
    timed = times[1:]
    print(
        json.dumps(
            {
                "backbone": f"{a.backbone} ViT-B/16",
                "crop": a.crop,
                "batch": a.batch,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "iterations": len(timed),
                "seconds_per_iteration": round(sum(timed) / len(timed), 3),
                "warmup_seconds": round(times[0], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
