"""Every training command and `predict` for a few iterations: seconds per iteration, peak GPU memory.

Self-contained: it writes a small synthetic dataset (coloured shapes with pseudo masks and labels)
and random weights (a CLIP and, through it, the ViT backbones) into a temporary folder, then runs
every registered method's training command (`retrain`, `refine train`, `train-cam cam|clims|dalnet|vitpcm`,
with the method's own ``smoke_args``) through the command line in this process, and `predict` on
each run's checkpoint.

    python benchmarks/train_gpu_smoke.py --device cuda                     # tiny models, fp32 and bf16
    python benchmarks/train_gpu_smoke.py --device cuda --size base         # the papers' shapes, random weights
    python benchmarks/train_gpu_smoke.py --device cpu --iters 3 --precision fp32   # a smoke check without GPU

Seconds per iteration leave out the first iteration (start-up, autotuning): they are the mean of
iterations 2..N from metrics.jsonl. Peak memory is torch's peak allocated CUDA memory of the
command (reset before each). One table row per command and precision; ``--json FILE`` also writes
them as JSON lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

NAMES = ["red", "green", "blue"]


def make_inputs(root: Path, size: str, images: int = 8) -> dict[str, Path]:
    """A synthetic dataset with labels, and a random CLIP (tiny, or ViT-B/16-shaped for ``base``)."""
    from clipseg_cli.clip.model import CLIP, VIT_B_16_CONFIG
    from clipseg_cli.io.masks import load_label_map
    from clipseg_cli.segmentation.synthetic import write_shapes_dataset

    side = 64 if size == "tiny" else 320
    data = write_shapes_dataset(root / "data", images, size=side, num_classes=3, seed=0)
    labels = {}
    for p in sorted((data / "gt").glob("*.png")):
        values = np.unique(load_label_map(p))
        labels[p.name] = [NAMES[v - 1] for v in values if 0 < v < 255] or [NAMES[0]]
    (root / "labels.json").write_text(json.dumps(labels))
    config = VIT_B_16_CONFIG  # tiny: the same layout at small widths
    if size == "tiny":
        config = dataclasses.replace(config, embed_dim=32, vision_width=64, text_width=32, text_heads=1, text_layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {k: v.half() for k, v in CLIP(config).state_dict().items()}
    torch.save(state, root / "clip.pt")
    return {"data": data, "labels": root / "labels.json", "weights": root / "clip.pt"}


def command_line(name: str, size: str, inputs: dict[str, Path], out: Path, device: str, precision: str,
                 iters: int) -> list[str]:  # fmt: skip
    """The training command of method ``name`` for ``iters`` iterations: its family's command and
    inputs, then the method's own ``smoke_args[size]`` (a method that counts epochs gets as many as
    cover ``iters`` iterations of the 8 images)."""
    import dataclasses as dc

    from clipseg_cli.methods import get_method
    from clipseg_cli.training.config import flag_of

    method = get_method(name)
    fields = {f.name: f for f in dc.fields(method.Config)}
    images, masks, labels = str(inputs["data"] / "images"), str(inputs["data"] / "masks"), str(inputs["labels"])
    args = {
        "segmenter": ["retrain", images, masks],
        "refiner": ["refine", "train", images, masks, "--method", name, "--labels", labels],
        "cam": ["train-cam", name, images, "--labels", labels],
    }[method.family]
    if "weights" in fields:
        args += [flag_of(fields["weights"]), str(inputs["weights"])]
    extra = method.smoke_args[size].split()
    args += extra
    if "iters" in fields:
        args += ["--iters", str(iters)]
    else:
        batch = int(extra[extra.index("--batch-size") + 1]) if "--batch-size" in extra else 8
        args += ["--epochs", str(-(-iters // -(-8 // batch)))]
    return [*args, "--classes", ",".join(NAMES), "--out", str(out), "--device", device, "--precision", precision,
            "--save-every", "1000"]  # fmt: skip


def invoke(args: list[str]) -> tuple[int, str]:
    """Run ``wsss-label ARGS`` in this process: the exit code and the error (its ``error:`` line, or
    the exception of a crash)."""
    from typer.testing import CliRunner

    from clipseg_cli.cli import app, route_default

    result = CliRunner().invoke(app, route_default(args))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        errors.append(f"{type(result.exception).__name__}: {result.exception}")
    return result.exit_code, " ".join(errors)


def reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def train_one(name: str, size: str, inputs: dict[str, Path], out: Path, device: str, precision: str,
              iters: int) -> dict[str, Any]:  # fmt: skip
    reset_peak(device)
    started = time.perf_counter()
    code, output = invoke(command_line(name, size, inputs, out, device, precision, iters))
    row: dict[str, Any] = {"command": name, "precision": precision, "device": device, "exit": code,
                           "wall_s": round(time.perf_counter() - started, 2), "peak_mib": peak_mib(device)}  # fmt: skip
    metrics = out / "metrics.jsonl"
    if code != 0 or not metrics.exists():
        row["error"] = output[:300]
        return row
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    seconds = [r["seconds"] for r in rows]
    row["iterations"] = len(rows)
    row["s_per_it"] = round((seconds[-1] - seconds[0]) / (len(rows) - 1), 4) if len(rows) > 1 else seconds[0]
    row["final_loss"] = round(rows[-1]["loss"], 4)
    return row


def predict_one(name: str, inputs: dict[str, Path], run: Path, out: Path, device: str) -> dict[str, Any]:
    reset_peak(device)
    args = ["predict", str(inputs["data"] / "images"), "--checkpoint", str(run / "last.pt"), "--labels",
            str(inputs["labels"]), "--out", str(out), "--scales", "1", "--no-crf", "--device", device]  # fmt: skip
    code, output = invoke(args)
    row: dict[str, Any] = {"command": f"predict ({name})", "precision": "fp32", "device": device, "exit": code,
                           "peak_mib": peak_mib(device)}  # fmt: skip
    report = out / "predict.json"
    if code != 0 or not report.exists():
        row["error"] = output[:300]
        return row
    summary = json.loads(report.read_text())
    row["iterations"] = summary["written"]
    row["s_per_it"] = round(summary["seconds"] / max(summary["written"], 1), 4)  # seconds per image
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", choices=("tiny", "base"), default="tiny")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    ap.add_argument("--only", default="", help="comma-separated method names (default: every registered one)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from clipseg_cli.methods import all_methods

    names = [n for n in all_methods() if not a.only or n in a.only.split(",")]
    missing = [n for n in names if a.size not in all_methods()[n].smoke_args]
    precisions = ["fp32", "bf16"] if a.precision == "both" else [a.precision]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="wsss-smoke-") as tmp:
        root = Path(tmp)
        inputs = make_inputs(root, a.size)
        for name in names:
            if name in missing:
                rows.append({"command": name, "exit": None, "error": "no smoke command for this method"})
                continue
            for precision in precisions:
                run = root / f"{name}-{precision}"
                rows.append(train_one(name, a.size, inputs, run, a.device, precision, a.iters))
                print(json.dumps(rows[-1]), flush=True)
            rows.append(predict_one(name, inputs, root / f"{name}-{precisions[0]}", root / f"pred-{name}", a.device))
            print(json.dumps(rows[-1]), flush=True)
    gpu = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"\n{a.size} models on {gpu} (torch {torch.__version__}); s/it: training s per iteration "
          "(iterations 2..N), predict s per image")  # fmt: skip
    print(f"{'command':<18} {'prec':<5} {'exit':>4} {'iters':>5} {'s/it':>8} {'peak MiB':>9}  note")
    for r in rows:
        print(f"{r['command']:<18} {r.get('precision', ''):<5} {str(r['exit']):>4} {r.get('iterations', ''):>5} "
              f"{r.get('s_per_it', ''):>8} {str(r.get('peak_mib', '')):>9}  {r.get('error', '')}")  # fmt: skip
    if a.json is not None:
        a.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0 if all(r.get("exit") == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
