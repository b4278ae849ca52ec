"""`wsss-label eval-labels PRED_LABELS GT_LABELS`: image-level labels against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.common import emit_report
from clipseg_cli.cli.console import console, handle_errors


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.1f}"


def _print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"eval-labels: {report['n_images']} images", title_justify="left")
    for column in ("class", "GT", "predicted", "precision %", "recall %", "F1 %", "AP %"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in report["per_class"].items():
        if row["positives"] or row["predicted"]:
            table.add_row(name, str(row["positives"]), str(row["predicted"]), _pct(row["precision"]),
                          _pct(row["recall"]), _pct(row["f1"]), _pct(row["ap"]))  # fmt: skip
    console.print(table)
    if "sweep" in report:
        sweep = Table(title="--label-threshold sweep (the rule applied to PRED's scores)", title_justify="left")
        for column in ("threshold", "precision %", "recall %", "F1 %", "macro F1 %"):
            sweep.add_column(column, justify="right")
        for row in report["sweep"]:
            mark = " [bold green]← best[/]" if row["threshold"] == report["best_threshold"] else ""
            sweep.add_row(f"{row['threshold']:g}", _pct(row["precision"]), _pct(row["recall"]),
                          _pct(row["f1"]) + mark, _pct(row["macro_f1"]))  # fmt: skip
        console.print(sweep)
    if report["only_in_pred"] or report["only_in_gt"]:
        console.print(
            f"[dim]not scored: {report['only_in_pred']} image(s) only in PRED_LABELS, {report['only_in_gt']} only in GT_LABELS[/]"
        )
    console.print(
        f"[bold]mAP {_pct(report['map'])}%[/] over {report['n_classes_with_positives']} classes with positives; "
        f"precision {_pct(report['precision'])}%, recall {_pct(report['recall'])}%, F1 {_pct(report['f1'])}% "
        f"(all labels together), exact label sets {_pct(report['exact_match'])}%"
    )


def eval_labels(
    pred: Path = typer.Argument(..., help="Predicted labels: OUT/labels.auto.json of `--labels auto` (with scores), or any labels file."),
    gt: Path = typer.Argument(..., help="True labels: a labels file (JSON or text/CSV) or a folder of VOC XML annotations."),
    classes: str = cv.classes_option(),
    out: Optional[Path] = cv.out_option("Write the JSON report to this file ('-' for stdout).", default=None, metavar="FILE"),
) -> None:
    """Score image-level labels (e.g. those `--labels auto` chose) against true ones: per-class precision, recall, F1, AP, mAP."""
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.errors import ConfigError
    from clipseg_cli.evaluation.label_metrics import label_report, read_image_labels

    if out is not None and str(out) != "-" and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out / 'labels-eval.json'}")
    for name, path in (("PRED_LABELS", pred), ("GT_LABELS", gt)):
        if not path.exists():
            raise ConfigError(f"{name} not found: {path}")
    class_set = load_class_set(classes)
    report = label_report(read_image_labels(pred, class_set), read_image_labels(gt, class_set), class_set.classes)
    report["pred"] = str(pred)
    report["gt"] = str(gt)
    _print_report(report)
    try:
        emit_report(out, report)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None


def register(app: typer.Typer) -> None:
    cv.command(app, "eval-labels", handle_errors(eval_labels))
