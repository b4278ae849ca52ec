"""Every learned CAM generator on synthetic shapes, through the command line: pixel mIoU of its masks.

Writes 48 training and 24 held-out images of coloured shapes (3 classes,
``clipseg_cli.segmentation.synthetic``; 128x128 for the ResNets, whose maps have stride 16, 64x64 for
the ViTs) with image-level labels taken from their ground truth and a tiny random CLIP, then for each
method runs ``wsss-label train-cam METHOD`` on the training images (random-init tiny networks, CPU),
``wsss-label predict`` on the held-out images (their labels given, no CRF) and scores the masks
against the ground truth (background and the three classes; a pixel the masks leave at 255 counts as
background). Every command line is printed.

    python benchmarks/synthetic_cams.py                       # every method
    python benchmarks/synthetic_cams.py --only cam clims      # some of them
    python benchmarks/synthetic_cams.py --iters 300 --seed 1  # longer runs, another seed

The random CLIP makes CLIMS's text-driven evaluator meaningless: its figure says how much a run
keeps (or loses) of its initial CAMs, not what CLIMS does with a real CLIP.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMES = ["red", "green", "blue"]

# Per method: image side, training options for tiny random networks (the rest are the method's
# defaults) and prediction options. The ResNets (output stride 16) get 128x128 images and IRN's test
# scales; the ViTs (patch 4 or 16) 64x64 images at one scale.
METHODS = {
    "cam": (128, "--arch resnet18 --crop 128 --frozen-stages 0 --batch-size 8 --lr 0.01", "--scales 1,0.5,1.5,2 --flip"),
    "clims": (128, "--arch resnet18 --crop 128 --clip-size 64 --scales 0.75,1,1.25 --batch-size 8", "--scales 1,0.5,1.5,2 --flip"),
    "dalnet": (64, "--crop 64 --batch-size 8 --lr 1e-3 --warmup-iters 20", "--scales 1"),
    "vitpcm": (
        64,
        "--size 64 --batch-size 8 --lstm-hidden 16 --predict-size 64 --frozen-epochs 2 --unfreeze 2 --lr-finetune 1e-3",
        "--scales 1",
    ),
}


def write_set(root: Path, n: int, seed: int, size: int) -> Path:
    from clipseg_cli.io.masks import load_label_map
    from clipseg_cli.segmentation.synthetic import write_shapes_dataset

    data = write_shapes_dataset(root, n, size=size, num_classes=3, seed=seed)
    labels = {}
    for gt in sorted((data / "gt").glob("*.png")):
        values = sorted(set(np.unique(load_label_map(gt)).tolist()) - {0, 255})
        if values:
            labels[gt.name] = [NAMES[v - 1] for v in values]
    (data / "labels.json").write_text(json.dumps(labels))
    return data


def miou(masks: Path, gt_dir: Path, keys: list[str]) -> float:
    from clipseg_cli.io.masks import load_label_map

    conf = np.zeros((4, 4), np.int64)
    for key in keys:
        gt = load_label_map(gt_dir / key).astype(np.int64)
        pred = load_label_map(masks / key).astype(np.int64)
        pred[pred > 3] = 0
        conf += np.bincount(4 * gt.ravel() + pred.ravel(), minlength=16).reshape(4, 4)
    iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
    return float(iou.mean())


def run(args: list[str]) -> None:
    from typer.testing import CliRunner

    from clipseg_cli.cli import app, route_default

    print("$ wsss-label " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = CliRunner().invoke(app, route_default(args))
    if result.exit_code != 0:
        raise SystemExit(f"exit {result.exit_code}: {result.output[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iters", type=int, default=120, help="training iterations of every method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clims-init", choices=("cam", "none"), default="cam",
                        help="CLIMS starts from the cam run's last.pt (the authors' recipe) or from random weights")  # fmt: skip
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the runs here, and reuse the finished ones found there (default: a temporary folder)")  # fmt: skip
    opts = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        work = opts.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        from tests.conftest import random_clip_state

        weights = work / "clip.pt"
        torch.save(random_clip_state(seed=opts.seed), weights)
        scores = {}
        order = [m for m in METHODS if m in opts.only]
        if "clims" in order and opts.clims_init == "cam" and "cam" not in order:
            order.insert(0, "cam")
        for name in order:
            out = work / f"run-{name}"
            side, options, predict = METHODS[name]
            train, test = write_set(work / f"train{side}", 48, 0, side), write_set(work / f"test{side}", 24, 1, side)
            keys = sorted(json.loads((test / "labels.json").read_text()))
            extra = options.split()
            if name == "clims" and opts.clims_init == "cam":
                extra += ["--init", str(work / "run-cam" / "last.pt")]
            weights_opt = [] if name in ("cam", "vitpcm") else ["--weights", str(weights)]
            if name == "vitpcm":
                backbone = work / "vit.pt"
                from clipseg_cli.methods.vit_backbone import tiny_vit

                torch.manual_seed(opts.seed)
                torch.save(tiny_vit(width=48, depth=2, heads=3, patch_size=4, grid=8).state_dict(), backbone)
                weights_opt = ["--backbone", str(backbone)]
            length = ["--epochs", str(max(1, round(opts.iters / 6)))] if name == "vitpcm" else ["--iters", str(opts.iters)]
            started = time.perf_counter()
            done = (out / "run.json").is_file() and json.loads((out / "run.json").read_text()).get("status") == "finished"
            if done:  # a finished run in --work is reused
                print(f"(reusing {out})")
            else:
                run(["train-cam", name, str(train / "images"), "--labels", str(train / "labels.json"), "--classes",
                     ",".join(NAMES), "--out", str(out), *weights_opt, *extra, *length, "--seed", str(opts.seed),
                     "--device", "cpu", "--save-every", "100000"])  # fmt: skip
            seconds = time.perf_counter() - started
            pred = work / f"pred-{name}"
            shutil.rmtree(pred, ignore_errors=True)
            run(["predict", str(test / "images"), "--checkpoint", str(out / "last.pt"), "--labels", str(test / "labels.json"),
                 "--out", str(pred), *predict.split(), "--no-crf", "--device", "cpu"])  # fmt: skip
            scores[name] = miou(pred / "masks", test / "gt", keys)
            print(f"{name}: held-out pixel mIoU {scores[name]:.3f} (training {seconds:.0f} s)", flush=True)
        print(json.dumps({k: round(v, 3) for k, v in scores.items()}))


if __name__ == "__main__":
    main()
