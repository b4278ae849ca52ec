"""Images per second of the whole `wsss-label` job on a random ViT-B/16-sized CLIP: without CRF, with
CRF, and the floor (a plain no-grad forward of the same batches), with the GPU memory peak.

    python benchmarks/gpu_throughput.py [--n 300] [--device cuda] [--batch-size N] [--precision fp32]
        [--workers N] [--cases no-crf crf floor] [--seed 0]

    python benchmarks/gpu_throughput.py --n 8 --device cpu      # a smoke run on the CPU

It generates N VOC-sized JPEGs (500x375 and 375x500, smooth random content) with 1-3 VOC labels
each and a random ViT-B/16 checkpoint (``VIT_B_16_CONFIG``), then runs the real command
(``wsss-label IMAGES --labels ... --out ... --device ...``) in a subprocess per case; every
file is written as in a real run. The subprocess records torch.cuda.max_memory_allocated()
(the peak of tensors, the whole process) when the command ends.

- job img/s: images / run.json's "seconds" (the labelling job: decoding, model, CRF, files;
  model loading and start-up left out); wall img/s: images / the subprocess's wall time.
- cam s/img: the median of run.json's per-image "cam" seconds.
- floor: embed + 12 blocks, no gradients, no attention maps kept, on the same images grouped
  into the same batches (padded size, --batch-size), inputs already on the device; bf16/fp16
  through autocast.

No assertion: it prints numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipseg_cli.clip.model import VIT_B_16_CONFIG

ROOT = Path(__file__).resolve().parents[1]
VOC_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]  # fmt: skip


def build_weights(path: Path) -> Path:
    from clipseg_cli.clip.model import CLIP

    torch.manual_seed(0)
    torch.save({k: v.half() for k, v in CLIP(VIT_B_16_CONFIG).state_dict().items()}, path)
    return path


def make_images(folder: Path, n: int, seed: int) -> Path:
    """n JPEGs, half 500x375 and half 375x500, 1-3 distinct VOC labels each; returns the labels file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    labels = {}
    for i in range(n):
        width, height = (500, 375) if i % 2 == 0 else (375, 500)
        coarse = rng.integers(0, 255, (height // 24, width // 24, 3), np.uint8)
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
        chosen = rng.choice(len(VOC_NAMES), size=int(rng.integers(1, 4)), replace=False)
        labels[f"{i:05d}.jpg"] = [VOC_NAMES[c] for c in chosen]
    path = folder.parent / "labels.json"
    path.write_text(json.dumps(labels))
    return path


# -- a case: the real command in a subprocess -------------------------------------------------


def child_cli(stats: Path, argv: list[str]) -> None:
    """Run `wsss-label argv` here and write this process's GPU memory peak to ``stats``."""
    from clipseg_cli.cli import main

    code: int | str | None = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None
        stats.write_text(json.dumps({"gpu_peak_bytes": peak}))
    sys.exit(code)


def run_case(name: str, images: Path, labels: Path, weights: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    stats = out.parent / f"{out.name}-stats.json"
    argv = [str(images), "--labels", str(labels), "--out", str(out), "--weights", str(weights),
            "--device", args.device, "--precision", args.precision, *extra]  # fmt: skip
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child-cli", str(stats), "--", *argv], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    summary = json.loads((out / "run.json").read_text())
    n = summary["counts"]["processed_this_run"]
    peak = json.loads(stats.read_text())["gpu_peak_bytes"]
    return {
        "case": name,
        "images": n,
        "job_ips": n / summary["seconds"],
        "wall_ips": n / wall,
        "cam_s": float(np.median([e["seconds"]["cam"] for e in summary["images"]])),
        "gpu_peak_mb": None if peak is None else peak / 2**20,
    }


# -- the floor ----------------------------------------------------------------------------------


def floor(images: Path, weights: Path, args: argparse.Namespace) -> dict:
    """A plain no-grad forward (embed + all blocks) of the same batches, inputs on the device."""
    from clipseg_cli.cam.pipeline import PRECISIONS, CLIPESSettings, prepare
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.data.images import load_rgb
    from clipseg_cli.device import resolve_device
    from clipseg_cli.scale.batched import default_batch_size, images_per_batch

    device = resolve_device(args.device)
    model = load_clip(weights, device)
    visual = model.visual
    batch_size = args.batch_size or default_batch_size(device)
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for path in sorted(images.glob("*.jpg")):
        prepared = prepare(load_rgb(path), CLIPESSettings())
        groups.setdefault(prepared.pixels.shape[:2], []).append(prepared.clip_input())
    batches = []
    for (h, w), tensors in groups.items():
        per = images_per_batch(batch_size, 1 + (h // 16) * (w // 16))
        batches += [torch.cat(tensors[i : i + per]).to(device) for i in range(0, len(tensors), per)]
    autocast = torch.autocast(device.type, dtype=PRECISIONS[args.precision], enabled=args.precision != "fp32")

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode(), autocast:
            tokens = visual.embed(x)
            for block in visual.blocks:
                tokens, _ = block(tokens)

    forward(batches[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x in batches:
        forward(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    n = sum(len(x) for x in batches)
    return {"case": "floor", "images": n, "job_ips": n / seconds, "wall_ips": None, "cam_s": seconds / n, "gpu_peak_mb": None}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child-cli":
        child_cli(Path(sys.argv[2]), sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images to generate")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the command's default")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--workers", type=int, default=None, help="default: the command's default")
    parser.add_argument("--cases", nargs="+", choices=["no-crf", "crf", "floor"], default=["no-crf", "crf", "floor"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wsss-gpu-throughput-") as tmp:
        tmp_path = Path(tmp)
        weights = build_weights(tmp_path / "vit-b16.pt")
        images = tmp_path / "images"
        labels = make_images(images, args.n, args.seed)
        gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else "-"
        print(f"ViT-B/16-sized random CLIP, {args.n} VOC-sized images (1-3 labels), device {args.device} ({gpu}), "
              f"precision {args.precision}, batch size {args.batch_size or 'default'}, workers "
              f"{'default' if args.workers is None else args.workers}; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        rows = []
        for case in args.cases:
            if case == "floor":
                rows.append(floor(images, weights, args))
            else:
                extra = ["--no-crf"] if case == "no-crf" else []
                rows.append(run_case(case, images, labels, weights, tmp_path / f"out-{case}", args, extra))
        print(f"{'case':<8} {'images':>6} {'job img/s':>10} {'wall img/s':>11} {'cam s/img':>10} {'GPU peak MB':>12}")
        for r in rows:
            wall = "" if r["wall_ips"] is None else f"{r['wall_ips']:.2f}"
            peak = "" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}"
            print(f"{r['case']:<8} {r['images']:>6} {r['job_ips']:>10.2f} {wall:>11} {r['cam_s']:>10.4f} {peak:>12}")


if __name__ == "__main__":
    main()
