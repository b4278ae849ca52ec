"""Running an evaluation over paired files: one pass, one accumulator, optional pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from clipseg_cli.errors import ConfigError
from clipseg_cli.evaluation.cam_sweep import DEFAULT_THRESHOLDS, CamSweep, cam_prediction
from clipseg_cli.evaluation.confusion import ConfusionAccumulator, LabelRangeError
from clipseg_cli.evaluation.matching import Pair
from clipseg_cli.evaluation.readers import read_cams, read_label_map
from clipseg_cli.evaluation.report import cam_report, mask_report
from clipseg_cli.evaluation.visualize import iou_bar_chart, save_side_by_side, sweep_chart

Tick = Callable[[], None]

PICTURES = "images"
BAR_CHART = "per_class_iou.png"
SWEEP_CHART = "cam_threshold_sweep.png"


def _tick(on_image: Tick | None) -> None:
    if on_image is not None:
        on_image()


def _bad_pair(pair: Pair, exc: ValueError, n_classes: int) -> ConfigError:
    text = str(exc)
    if isinstance(exc, LabelRangeError):
        where = pair.gt if exc.which == "GT" else pair.pred
        text = f"{where}: {exc}; --classes has {n_classes} classes"
        return ConfigError(text)
    return ConfigError(f"{pair.key}: {text} (prediction {pair.pred}, GT {pair.gt})")


def picture_path(out_dir: Path, key: str) -> Path:
    return out_dir / PICTURES / f"{key}.png"


def evaluate_masks(
    pairs: Sequence[Pair],
    class_names: Sequence[str],
    pred_ignore: str = "exclude",
    visualize: Path | None = None,
    on_image: Tick | None = None,
) -> dict[str, Any]:
    """Score predicted label maps against GT label maps; returns the report dict."""
    names = ["background", *class_names]
    acc = ConfusionAccumulator(len(names))
    for pair in pairs:
        gt = read_label_map(pair.gt)
        pred = read_label_map(pair.pred)
        try:
            acc.add(gt, pred)
        except ValueError as exc:
            raise _bad_pair(pair, exc, len(class_names)) from None
        if visualize is not None:
            save_side_by_side(picture_path(visualize, pair.key), gt, pred, class_names, pred_ignore, title=pair.key)
        _tick(on_image)
    report = mask_report(names, acc.matrix(pred_ignore), acc.n_images, acc.valid_pixels, acc.pred_ignored_pixels, pred_ignore)
    if visualize is not None:
        _bar_chart(visualize, report)
    return report


def evaluate_cams(
    pairs: Sequence[Pair],
    class_names: Sequence[str],
    cam_key: str = "refined",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    on_image: Tick | None = None,
) -> dict[str, Any]:
    """Sweep the background threshold over saved CAMs in one pass; returns the report dict."""
    names = ["background", *class_names]
    sweep = CamSweep(len(names), tuple(thresholds))
    for pair in pairs:
        gt = read_label_map(pair.gt)
        saved = read_cams(pair.pred, cam_key)
        try:
            sweep.add(gt, saved.cams, saved.labels)
        except ValueError as exc:
            raise _bad_pair(pair, exc, len(class_names)) from None
        _tick(on_image)
    return cam_report(names, sweep.matrices(), sweep.thresholds, sweep.n_images, sweep.valid_pixels, cam_key)


def visualize_cams(
    pairs: Sequence[Pair],
    class_names: Sequence[str],
    report: dict[str, Any],
    out_dir: Path,
    cam_key: str = "refined",
    on_image: Tick | None = None,
) -> None:
    """Pictures of the CAM predictions at the report's best threshold, and the charts."""
    threshold = report["best_threshold"]
    for pair in pairs:
        gt = read_label_map(pair.gt)
        saved = read_cams(pair.pred, cam_key)
        pred = cam_prediction(saved.cams, saved.labels, threshold)
        save_side_by_side(picture_path(out_dir, pair.key), gt, pred, class_names, title=f"{pair.key}  t={threshold:.2f}")
        _tick(on_image)
    _bar_chart(out_dir, report, title=f"per-class IoU of CAMs at t = {threshold:.2f}")
    sweep_chart(
        out_dir / SWEEP_CHART,
        [row["threshold"] for row in report["sweep"]],
        [row["miou"] for row in report["sweep"]],
        threshold,
    )


def _bar_chart(out_dir: Path, report: dict[str, Any], title: str = "per-class IoU") -> None:
    per_class = report["per_class"]
    names = list(per_class)
    iou_bar_chart(
        out_dir / BAR_CHART,
        names,
        [per_class[n]["iou"] for n in names],
        [per_class[n]["in_gt"] for n in names],
        report["miou"],
        title=title,
    )
