"""End-to-end throughput (decode + CAM + CAA + CRF + write) of `wsss-label` for --workers 0/1/2,
and the memory of the main process and of its workers, on a random ViT-B/16-sized CLIP.

    python benchmarks/pipeline_throughput.py [--images 6] [--workers 0 1 2] [--labels 1]
        [--size 500x375] [--big 2] [--long 0] [--long-model tiny]

Each case runs the real command (`python -m clipseg_cli ... --workers N`) in a fresh process
over the same generated JPEGs, sampling the memory of its process tree every 0.2 s (PSS and
RSS from /proc; workers are the processes under the main one, forkserver included).

- throughput: images per second between the first and the last finished mask (steady state:
  model loading and pool start-up left out) and over the whole job (run.json's seconds);
  the ratio is to --workers 1.
- --big N: N images of 2048x1536, scaled to --max-side 1024 (3072 tokens), peak memory.
- --long N: N images at --workers 2 (with --long-model tiny, a small random CLIP, so 1,000
  images take minutes), printing memory against images done: it must stay flat.

No assertion: it prints numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipseg_cli.clip.model import VIT_B_16_CONFIG

ROOT = Path(__file__).resolve().parents[1]

VIT_B_16 = dict(VIT_B_16_CONFIG.__dict__)
TINY = dict(VIT_B_16, embed_dim=32, vision_width=64, text_width=32, text_heads=1, text_layers=2)
VOC_LABELS = ["cat", "person", "dog", "car"]


def build_weights(folder: Path, config: dict, name: str) -> Path:
    from clipseg_cli.clip.model import CLIP, CLIPConfig

    path = folder / f"{name}.pt"
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(**config))
    torch.save({k: v.to(torch.float16) for k, v in model.state_dict().items()}, path)
    return path


def make_images(folder: Path, n: int, size: tuple[int, int], n_labels: int, seed: int = 0) -> Path:
    """n smooth random JPEGs (so the CRF has edges to follow) and a labels file."""
    width, height = size
    rng = np.random.default_rng(seed)
    labels = {}
    for i in range(n):
        coarse = rng.integers(0, 255, (max(2, height // 24), max(2, width // 24), 3), np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        name = f"{i:05d}.jpg"
        img.save(folder / name, quality=90)
        labels[name] = [VOC_LABELS[(i + k) % len(VOC_LABELS)] for k in range(n_labels)]
    path = folder.parent / f"{folder.name}-labels.json"
    path.write_text(json.dumps(labels))
    return path


# -- memory of a process tree, from /proc -----------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process ended
        return []
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                kids = []
            found += kids
            frontier += kids
    return found


def _memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB; PSS shares pages between the processes that map them."""
    rss = pss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


class Sampler(threading.Thread):
    """Samples the main process and every process under it until stopped."""

    def __init__(self, pid: int, masks: Path, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.masks, self.period = pid, masks, period
        self.samples: list[dict] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            main_rss, main_pss = _memory_mb(self.pid)
            kids = [_memory_mb(c) for c in _children(self.pid)]
            done = len(list(self.masks.glob("*.png"))) if self.masks.is_dir() else 0
            self.samples.append(
                {
                    "t": time.time(),
                    "done": done,
                    "main_rss": main_rss,
                    "worker_rss": max((r for r, _ in kids), default=0.0),
                    "total_pss": main_pss + sum(p for _, p in kids),
                    "total_rss": main_rss + sum(r for r, _ in kids),
                }
            )
            self.stopped.wait(self.period)


def run_case(images: Path, labels: Path, weights: Path, out: Path, workers: int, max_side: int = 1024, threads: int = 0) -> dict:
    cmd = [sys.executable, "-m", "clipseg_cli", str(images), "--labels", str(labels), "--out", str(out),
           "--weights", str(weights), "--device", "cpu", "--workers", str(workers), "--max-side", str(max_side)]  # fmt: skip
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env)
        sampler = Sampler(proc.pid, out / "masks")
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the kernel's peak RSS of the main process
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stopped.set()
        sampler.join()
        wall = time.time() - start
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"workers {workers}: exit {proc.returncode}\n{err.read().decode()[-2000:]}")
    summary = json.loads((out / "run.json").read_text())
    n = summary["counts"]["processed_this_run"]
    times = sorted(p.stat().st_mtime for p in (out / "masks").glob("*.png"))
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    entries = [e["seconds"] for e in summary["images"]]
    samples = sampler.samples
    return {
        "workers": workers,
        "images": n,
        "wall_s": wall,
        "job_s": summary["seconds"],
        "job_ips": n / summary["seconds"],
        "steady_ips": steady,
        "cam_s": float(np.median([e["cam"] for e in entries])),
        "crf_s": float(np.median([e["crf"] for e in entries])),
        # ru_maxrss covers the main process's whole life; the samples may miss a short peak
        "main_rss_mb": max(usage.ru_maxrss / 1024, max((s["main_rss"] for s in samples), default=0.0)),
        "worker_rss_mb": max((s["worker_rss"] for s in samples), default=0.0),
        "total_pss_mb": max((s["total_pss"] for s in samples), default=0.0),
        "samples": samples,
    }


def print_flatness(result: dict, n: int) -> None:
    """Memory against images done, in tenths of the run, and the drift over its second half."""
    samples = [s for s in result["samples"] if s["done"] > 0]
    if not samples:
        return
    print(f"\nmemory over a long run: {n} images, --workers {result['workers']}")
    print(f"{'images done':>12} {'main RSS MB':>12} {'worker RSS MB':>14} {'total PSS MB':>13}")
    for tenth in range(1, 11):
        target = n * tenth / 10
        row = min(samples, key=lambda s: abs(s["done"] - target))
        print(f"{row['done']:>12} {row['main_rss']:>12.0f} {row['worker_rss']:>14.0f} {row['total_pss']:>13.0f}")
    half = [s for s in samples if s["done"] >= n / 2]
    if len(half) > 2 and half[-1]["done"] > half[0]["done"]:
        slope = np.polyfit([s["done"] for s in half], [s["total_pss"] for s in half], 1)[0]
        print(f"drift over the second half: {slope * 100:+.1f} MB of total PSS per 100 images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="images per throughput case")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels", type=int, default=1, help="labels per image")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the command (0: torch's default)")
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the generated images")
    parser.add_argument("--big", type=int, default=0, help="also N images of 2048x1536 at --max-side 1024")
    parser.add_argument("--big-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--long", type=int, default=0, help="also a flatness run over N images at --workers 2")
    parser.add_argument("--long-model", choices=["tiny", "vit-b16"], default="tiny")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="wsss-throughput-") as tmp:
        tmp_path = Path(tmp)
        weights = build_weights(tmp_path, VIT_B_16, "vit-b16")
        print(f"ViT-B/16-sized random CLIP, {args.images} images of {args.size}, {args.labels} label(s) each; "
              f"{os.cpu_count()} CPUs, torch threads {args.threads or torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        images = tmp_path / "images"
        images.mkdir()
        labels = make_images(images, args.images, size, args.labels)  # type: ignore[arg-type]
        results = [run_case(images, labels, weights, tmp_path / f"out-{w}", w, threads=args.threads) for w in args.workers]
        base = next((r for r in results if r["workers"] == 1), results[0])
        print(f"{'workers':>7} {'steady img/s':>12} {'vs w1':>6} {'job img/s':>10} {'wall s':>7} {'cam s':>6} "
              f"{'crf s':>6} {'main RSS MB':>12} {'worker RSS MB':>14} {'total PSS MB':>13}")  # fmt: skip
        for r in results:
            print(
                f"{r['workers']:>7} {r['steady_ips']:>12.3f} {r['steady_ips'] / base['steady_ips']:>6.2f} "
                f"{r['job_ips']:>10.3f} {r['wall_s']:>7.1f} {r['cam_s']:>6.2f} {r['crf_s']:>6.2f} "
                f"{r['main_rss_mb']:>12.0f} {r['worker_rss_mb']:>14.0f} {r['total_pss_mb']:>13.0f}"
            )

        if args.big:
            big = tmp_path / "big"
            big.mkdir()
            big_labels = make_images(big, args.big, (2048, 1536), args.labels, seed=1)
            print(f"\n--max-side 1024: {args.big} images of 2048x1536 (worked on at 1024x768, 3072 tokens)")
            print(f"{'workers':>7} {'cam s':>6} {'crf s':>6} {'main RSS MB':>12} {'worker RSS MB':>14} {'total PSS MB':>13}")
            for w in args.big_workers:
                r = run_case(big, big_labels, weights, tmp_path / f"big-out-{w}", w, max_side=1024)
                print(f"{w:>7} {r['cam_s']:>6.2f} {r['crf_s']:>6.2f} {r['main_rss_mb']:>12.0f} "
                      f"{r['worker_rss_mb']:>14.0f} {r['total_pss_mb']:>13.0f}")  # fmt: skip

        if args.long:
            long_weights = weights if args.long_model == "vit-b16" else build_weights(tmp_path, TINY, "tiny")
            many = tmp_path / "many"
            many.mkdir()
            many_labels = make_images(many, args.long, size, args.labels, seed=2)  # type: ignore[arg-type]
            r = run_case(many, many_labels, long_weights, tmp_path / "many-out", 2)
            print(f"\n({args.long_model} CLIP: {r['steady_ips']:.2f} images/s steady)")
            print_flatness(r, args.long)


if __name__ == "__main__":
    main()
