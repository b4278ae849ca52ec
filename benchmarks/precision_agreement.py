"""How far `--precision bf16|fp16` masks and CAMs are from fp32 ones, on real image folders.

    python benchmarks/precision_agreement.py [--precisions bf16 fp16] [--device cpu]
        [--set NAME IMAGES LABELS WEIGHTS ...] [--vit-b16]

Runs the real command (`python -m clipseg_cli ... --save-cams`) once per precision on each
set and compares every image with the fp32 run: the largest absolute difference of the
full-size CAMs and refined CAMs, and the share of mask pixels with the same label. Default
sets: the golden images (tests/data/golden, its tiny random CLIP) and examples/images with
the same weights; --vit-b16 adds examples/images on a random ViT-B/16-sized CLIP.

No assertion: it prints numbers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"


def run(images: Path, labels: Path, weights: Path, out: Path, precision: str, device: str) -> float:
    cmd = [sys.executable, "-m", "clipseg_cli", str(images), "--labels", str(labels), "--out", str(out),
           "--weights", str(weights), "--save-cams", "--device", device, "--workers", "0",
           "--precision", precision]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{precision}: exit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return time.perf_counter() - start


def compare(reference: Path, other: Path) -> dict[str, float]:
    from clipseg_cli.io.masks import load_label_map

    cam = refined = 0.0
    same = total = 0
    worst_mask = 1.0
    for ref_npz in sorted((reference / "cams").rglob("*.npz")):
        rel = ref_npz.relative_to(reference / "cams")
        with np.load(ref_npz) as a, np.load(other / "cams" / rel) as b:
            cam = max(cam, float(np.abs(a["cam"] - b["cam"]).max()))
            refined = max(refined, float(np.abs(a["refined"] - b["refined"]).max()))
        mask_a = load_label_map(reference / "masks" / rel.with_suffix(".png"))
        mask_b = load_label_map(other / "masks" / rel.with_suffix(".png"))
        agree = mask_a == mask_b
        same += int(agree.sum())
        total += agree.size
        worst_mask = min(worst_mask, float(agree.mean()))
    return {"cam": cam, "refined": refined, "mask": same / max(1, total), "worst_mask": worst_mask}


def vit_b16_weights(folder: Path) -> Path:
    import torch

    from clipseg_cli.clip.model import CLIP, VIT_B_16_CONFIG

    torch.manual_seed(0)
    path = folder / "vit-b16.pt"
    torch.save({k: v.half() for k, v in CLIP(VIT_B_16_CONFIG).state_dict().items()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs=4, action="append", metavar=("NAME", "IMAGES", "LABELS", "WEIGHTS"))
    parser.add_argument("--vit-b16", action="store_true", help="also examples/images on a random ViT-B/16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsss-precision-") as tmp:
        tmp_path = Path(tmp)
        sets = [tuple(s) for s in args.set] if args.set else [
            ("golden (tiny CLIP)", GOLDEN / "images", GOLDEN / "labels.json", GOLDEN / "weights.pt"),
            ("examples (tiny CLIP)", ROOT / "examples" / "images", ROOT / "examples" / "labels.json", GOLDEN / "weights.pt"),
        ]  # fmt: skip
        if args.vit_b16:
            weights = vit_b16_weights(tmp_path)
            sets.append(("examples (ViT-B/16)", ROOT / "examples" / "images", ROOT / "examples" / "labels.json", weights))
        print(f"device {args.device}; differences to --precision fp32 over each set's images (full-size maps)")
        print(f"{'set':<22} {'precision':>9} {'max |cam|':>10} {'max |refined|':>14} {'mask agree':>11} "
              f"{'worst image':>12} {'seconds':>8}")  # fmt: skip
        for i, (name, images, labels, weights) in enumerate(sets):
            reference = tmp_path / f"{i}-fp32"
            base_s = run(Path(images), Path(labels), Path(weights), reference, "fp32", args.device)
            print(f"{name:<22} {'fp32':>9} {'':>10} {'':>14} {'':>11} {'':>12} {base_s:>8.1f}")
            for precision in args.precisions:
                out = tmp_path / f"{i}-{precision}"
                seconds = run(Path(images), Path(labels), Path(weights), out, precision, args.device)
                d = compare(reference, out)
                print(f"{name:<22} {precision:>9} {d['cam']:>10.4f} {d['refined']:>14.4f} {d['mask']:>11.4f} "
                      f"{d['worst_mask']:>12.4f} {seconds:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
