"""`wsss-label train-cam dalnet`: DALNet (dense text alignment on a ViT) from image-level labels."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from clipseg_cli.cli.console import console, handle_errors
from clipseg_cli.cli import conventions as cv
from clipseg_cli.errors import EXIT_OK, ConfigError



def register(group: typer.Typer) -> None:
    cv.command(group, "dalnet", dalnet, cls=cv.command_class(warmup="--warmup-iters"), no_args_is_help=True)


def dalnet(
    images: Path = typer.Argument(..., help="Training images (folder, searched recursively)."),
    labels: Optional[Path] = cv.labels_option(),
    annotations: Optional[Path] = cv.annotations_option(),
    classes: str = cv.classes_option(),
    out: Path = cv.out_option("Run folder: last.pt, metrics.jsonl, run.json."),
    backbone: str = typer.Option("clip", "--backbone", metavar="clip|FILE", help="clip: our CLIP's image tower, fine-tuned; FILE: a timm ViT-B/16 state dict."),
    weights: Optional[Path] = cv.weights_option("CLIP checkpoint for the frozen text encoder (and --backbone clip)"),
    iters: int = cv.iters_option(20000),
    batch: int = cv.batch_size_option(4),
    lr: float = typer.Option(6e-5, "--lr", help="AdamW peak learning rate (after warm-up; poly 0.9 decay)."),
    warmup: int = cv.warmup_iters_option(1500, " Starts at 1e-6 x --lr."),
    crop: int = typer.Option(448, "--crop", help="Square training crop (a multiple of the patch size)."),
    inter_block: int = typer.Option(0, "--inter-block", help="Block (1-based) of the intermediate CAM; 0: 10 on ViT-B (depth - 2)."),
    beta: float = typer.Option(0.5, "--beta", help="Background threshold of the object-aware mask."),
    save_every: int = cv.save_every_option(1000),
    seed: int = cv.seed_option("Seed of initialisation, sampling and augmentation."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt exactly (its settings are kept)."),
    device: str = cv.device_option(),
    seg_head: bool = typer.Option(False, "--seg-head", help="The single-stage segmentation head (not implemented yet)."),
) -> None:
    """Train DALNet's CAMs: ViT + frozen CLIP text, global implicit and local explicit alignment, ToCo patch contrast."""
    raise typer.Exit(
        _run(images, labels, annotations, classes, out, backbone, weights, iters, batch, lr, warmup, crop, inter_block, beta,
             save_every, seed, resume, device, seg_head)
    )  # fmt: skip


@handle_errors(interrupted="interrupted; training state saved in last.pt, continue with --resume")
def _run(
    images: Path, labels: Optional[Path], annotations: Optional[Path], classes: str, out: Path, backbone: str, weights: Optional[Path], iters: int,
    batch: int, lr: float, warmup: int, crop: int, inter_block: int, beta: float, save_every: int, seed: int,
    resume: bool, device: str, seg_head: bool,
) -> int:  # fmt: skip
    import numpy as np

    from clipseg_cli.cam_generators import dalnet as D
    from clipseg_cli.cam_generators.vit_backbone import build_backbone
    from clipseg_cli.cli.common import load_clip_model
    from clipseg_cli.cli.training_bar import TrainingReporter, training_progress
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.refiners.base import read_label_source
    from clipseg_cli.device import resolve_device
    from clipseg_cli.segmentation.checkpoint import read_checkpoint
    from clipseg_cli.segmentation.dataset import list_images
    from clipseg_cli.segmentation.train import seed_everything

    if seg_head:
        raise ConfigError("--seg-head is not implemented yet; DALNet's CAMs are trained without it")
    for name, value, low in (("--iters", iters, 1), ("--batch-size", batch, 1), ("--crop", crop, 16), ("--save-every", save_every, 0), ("--warmup-iters", warmup, 0)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if lr <= 0 or not 0 < beta < 1:
        raise ConfigError("--lr must be positive and --beta in (0, 1)")
    last = out / D.LAST
    saved = read_checkpoint(last, "--resume") if resume and last.exists() else None
    if saved is None and last.exists():
        raise ConfigError(f"{out} already holds a training run ({D.LAST}); pass --resume to continue it or choose another --out")
    if saved is not None and saved["kind"] != D.KIND:
        raise ConfigError(f"--resume: {last} is a {saved['kind']} checkpoint, not {D.KIND}")
    class_set = load_class_set(classes)
    class_names = list(class_set.classes)
    if saved is not None:
        if list(saved["class_names"]) != class_names:
            raise ConfigError("--resume: --classes differs from the run's classes")
        tc = saved["train_config"]
        cfg = D.TrainConfig(out=out, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in tc.items() if k != "out"})
        backbone = saved["model_config"]["backbone"]
    else:
        cfg = D.TrainConfig(out=out, iters=iters, batch=batch, lr=lr, warmup=warmup, crop=crop, save_every=save_every, seed=seed)
    index = read_label_source(labels, annotations)
    found = list_images(images)
    paths, multi_hot, unknown = [], [], set()
    for key, path in sorted(found.items()):
        names = index.lookup(key)
        if not names:
            continue
        row = np.zeros(len(class_names), np.float32)
        for n in names:
            if class_set.has(n):
                row[class_set.index(n)] = 1
            else:
                unknown.add(n)
        if unknown:
            raise ConfigError(f"--labels: unknown class {sorted(unknown)[0]!r} for {key}; classes: {', '.join(class_names)}")
        paths.append(path)
        multi_hot.append(row)
    if not paths:
        raise ConfigError(f"no image under {images} has labels in {labels or annotations}")
    torch_device = resolve_device(device)
    clip, resolved = load_clip_model(weights, torch_device)
    clip.requires_grad_(False)
    text_fg, text_bg = D.text_embeddings(clip, list(class_set.prompts), torch_device)
    seed_everything(cfg.seed)
    if backbone != "clip" and not Path(backbone).is_file():
        raise ConfigError(f"--backbone {backbone}: neither 'clip' nor a file")
    try:
        vit = clip.visual.float().requires_grad_(True) if backbone == "clip" else build_backbone(backbone, None, torch_device)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"--backbone {backbone}: {str(exc).splitlines()[0][:200]}") from None
    model = D.DALNet(vit, text_fg, text_bg, backbone_spec=backbone, inter_block=(saved["model_config"]["inter_block"] if saved else inter_block) or None,
                     beta=float(saved["model_config"]["beta"]) if saved else beta)
    if cfg.crop % vit.patch_size:
        raise ConfigError(f"--crop {cfg.crop} is not a multiple of the patch size {vit.patch_size}")
    with training_progress() as progress:
        reporter = TrainingReporter(progress)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        reporter.message(
            f"dalnet on {torch_device}: {len(paths)} labelled images, {len(class_names)} classes, "
            f"backbone {backbone} ({len(vit.blocks)} blocks, intermediate CAM at block {model.inter_block}), "
            f"{params / 1e6:.2f}M trainable parameters, text from {resolved.path.name}"
        )
        reporter.start(int(saved["iteration"]) if saved else 0, cfg.iters)
        summary = D.train_dalnet(model, paths, np.stack(multi_hot), class_names, cfg, torch_device,
                                 resume=saved is not None, on_step=reporter.step)
    console.print(f"done: {summary['iteration']} iterations in {summary['seconds']:.0f} s -> {last}")
    return EXIT_OK
