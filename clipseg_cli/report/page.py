"""index.html: the summary header (rendered here) and the gallery (rendered by the page's
own script from the records embedded as JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from clipseg_cli import __version__
from clipseg_cli.report import records as rec
from clipseg_cli.report import svg
from clipseg_cli.report.assets import CSS, JS
from clipseg_cli.report.render import THUMB

SHOW_FAILURES = 500
LOW_CONFIDENCE = 0.9  # confidences below this are shown in red (mu is 0.95 by default)

COLUMN_TITLES = {
    "confidence": "mean CRF confidence of the image's pixels (n/a: no cams/*.npz with a confidence map)",
    "ignored": "share of pixels marked 255 (ignored)",
    "area": "share of pixels labelled with a class (neither background nor ignored)",
    "seconds": "seconds to label the image (CAM + CRF)",
    "iou": "the image's mIoU against its ground truth (as wsss-label eval, predicted 255 left out)",
    "labels": "image-level labels, with each class's share of the mask (bar: classes, then ignored hatched)",
    "name": "image path relative to the image folder",
}
SORT_LABELS = {
    "confidence": "confidence",
    "ignored": "ignored",
    "area": "foreground area",
    "seconds": "seconds",
    "iou": "IoU",
    "name": "name",
}


@dataclass
class PageContext:
    title: str
    out_name: str
    label_names: list[str]  # names of mask values 0..n-1 (background first)
    colours: list[str]  # '#rrggbb' per mask value
    records: list[dict[str, Any]]  # all labelled images (for the summary)
    shown: list[dict[str, Any]]  # the images on the page, in --sort order
    sort_key: str
    sort_desc: bool
    photo_base: str  # URL prefix of the photos, relative to the page
    mask_base: str
    settings: dict[str, Any] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    gt: dict[str, Any] | None = None  # eval's report over the images with GT
    gt_dir: str | None = None
    finished_at: str | None = None
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    run_id: str = ""  # names this run's marks in the browser's storage
    review: dict[str, Any] | None = None  # OUT/review.json when the page was built: marks, updated_at
    redos: list[dict[str, Any]] = field(default_factory=list)  # run.json's redo records


def _fmt_pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def _stat(value: str, key: str, title: str = "", bad: bool = False) -> str:
    cls = "stat bad" if bad else "stat"
    t = f' title="{escape(title)}"' if title else ""
    return f'<div class="{cls}"{t}><div class="v">{escape(value)}</div><div class="k">{escape(key)}</div></div>'


def _settings_line(ctx: PageContext) -> str:
    s = ctx.settings
    bits = []
    if s.get("classes"):
        bits.append(f"classes <b>{escape(str(s['classes']))}</b> ({len(ctx.label_names) - 1})")
    for key, label in (("mu", "mu"), ("lambda", "lambda"), ("crf", "CRF")):
        if key in s:
            value = s[key]
            bits.append(f"{label} <b>{escape('on' if value is True else 'off' if value is False else str(value))}</b>")
    templates = s.get("templates")
    if isinstance(templates, list) and templates:
        bits.append("template <b>" + escape(" | ".join(str(t) for t in templates)) + "</b>")
    weights = s.get("weights")
    if isinstance(weights, dict) and weights.get("path"):
        bits.append(f"weights <b>{escape(Path(str(weights['path'])).name)}</b>")
    if s.get("images"):
        bits.append(f"images <b>{escape(str(s['images']))}</b>")
    if ctx.finished_at:
        bits.append(f"finished {escape(ctx.finished_at)}" + (" (interrupted)" if ctx.interrupted else ""))
    return " · ".join(bits)


def _stats_row(ctx: PageContext) -> str:
    r = ctx.records
    confs = [x["confidence"] for x in r if x["confidence"] is not None]
    parts = [_stat(f"{len(r):,}", "images labelled")]
    if len(ctx.shown) != len(r):
        parts.append(_stat(f"{len(ctx.shown):,}", f"shown ({SORT_LABELS[ctx.sort_key]}, worst first)"))
    parts.append(_stat(f"{len(ctx.failed):,}", "failed", "images run.json lists as failed", bad=bool(ctx.failed)))
    parts.append(_stat(f"{len(ctx.skipped):,}", "skipped", "images without labels"))
    parts.append(
        _stat(
            f"{sum(confs) / len(confs):.3f}" if confs else "n/a",
            "mean confidence",
            "mean over images of the mean CRF confidence" if confs else "no confidence: the run had no CRF",
        )
    )
    parts.append(_stat(_fmt_pct(rec.median([x["ignored"] for x in r])), "median ignored"))
    parts.append(_stat(_fmt_pct(sum(x["ignored"] for x in r) / len(r) if r else None), "mean ignored"))
    if ctx.gt is not None:
        parts.append(_stat(_fmt_pct(ctx.gt["miou"]), "mIoU vs GT", f"over {ctx.gt['n_images']} image(s) with ground truth"))
    return '<div class="stats">' + "".join(parts) + "</div>"


def _charts(ctx: PageContext) -> str:
    n = len(ctx.label_names)
    hist = rec.class_histogram(ctx.records, n)
    bars = svg.class_bars(ctx.label_names, hist, ctx.colours)
    ignored = svg.histogram(rec.ignored_histogram(ctx.records), "ignored share per image", css_class="ignored-hist")
    parts = [
        _review_box(ctx),
        f'<figure id="class-hist"><figcaption>images per class · click to filter</figcaption><div class="scroll">{bars}</div></figure>',
        f'<figure id="ignored-hist"><figcaption>ignored (255) share per image · click a bar to filter</figcaption>{ignored}</figure>',
    ]
    conf = rec.confidence_histogram(ctx.records)
    if conf is not None:
        chart = svg.histogram(conf, "mean confidence per image", unit_max=1.0, unit="", colour="#0ea5e9", css_class="conf-hist")
        parts.append(
            f'<figure id="confidence-hist"><figcaption>mean CRF confidence per image · click to filter</figcaption>{chart}</figure>'
        )
    parts.append(_gt_table(ctx))
    return '<div class="charts">' + "".join(parts) + "</div>"


def _review_box(ctx: PageContext) -> str:
    """Counts of each mark (click: filter by it), where marks are kept, export / import.
    The script fills in the numbers: marks change while the page is open."""
    counts = "".join(
        f'<button type="button" class="mc {m}" data-mark="{m}" title="show only {label}">{label}<b id="n-{m}">0</b></button>'
        for m, label in (("accepted", "accepted"), ("rejected", "rejected"), ("fix", "fix"), ("none", "unmarked"))
    )
    return (
        '<figure id="review-box"><figcaption>review · click to filter</figcaption>'
        f'<div class="counts">{counts}</div>'
        '<div class="io"><button type="button" id="export" title="download the marks as review.json">export review.json</button>'
        '<label class="btn" title="load the marks of a review.json">import…'
        '<input type="file" id="import-file" class="vh" accept=".json,application/json"></label>'
        '<span id="review-status"></span></div>'
        '<p class="muted">mark with <kbd>A</kbd> accept, <kbd>R</kbd> reject, <kbd>F</kbd> fix (again: clear), '
        "here on the row of <kbd>J</kbd> / <kbd>K</kbd> or in the full-size view. The marks go to "
        "<code>OUT/review.json</code>: training (<code>retrain</code>, <code>refine train</code>, <code>train-cam</code>) "
        "leaves the rejected images out, <code>wsss-label IMAGES ... --redo rejected</code> relabels them.</p></figure>"
    )


def _legend(ctx: PageContext) -> str:
    used = sorted({label for r in ctx.records for label in r["labels"]} | {a[0] for r in ctx.records for a in r["areas"]})
    items = ['<span><span class="sw bg"></span>background (no tint)</span>']
    for label in used:
        if label == 0:
            continue
        items.append(f'<span><span class="sw" style="background:{ctx.colours[label]}"></span>{escape(ctx.label_names[label])}</span>')
    items.append('<span><span class="sw ign"></span>ignored (255, hatched)</span>')
    return '<div class="legend"><b>legend</b>' + "".join(items) + "</div>"


def _gt_table(ctx: PageContext) -> str:
    """eval's per-class table as a figure of the charts row (empty without --gt)."""
    g = ctx.gt
    if g is None:
        if ctx.gt_dir is None:
            return ""
        return (
            '<figure class="gt" id="gt-table"><figcaption>ground truth</figcaption>'
            f'<p class="muted">no image of the run has a label map in {escape(ctx.gt_dir)}</p></figure>'
        )
    rows = []
    for i, (name, row) in enumerate(g["per_class"].items()):
        if not row["in_gt"] and not row["pred_pixels"]:
            continue
        dim = "" if row["in_gt"] else ' class="dim"'
        sw = '<span class="sw bg"></span>' if i == 0 else f'<span class="sw" style="background:{ctx.colours[i]}"></span>'
        iou = _fmt_pct(row["iou"]) if row["in_gt"] else "—"
        rows.append(
            f"<tr{dim}><td>{sw}{escape(name)}{'' if row['in_gt'] else ' (not in GT)'}</td><td>{iou}</td>"
            f"<td>{_fmt_pct(row['precision'])}</td><td>{_fmt_pct(row['recall'])}</td>"
            f"<td>{row['gt_pixels']:,}</td><td>{row['pred_pixels']:,}</td></tr>"
        )
    caption = (
        f"ground truth · mIoU <b>{_fmt_pct(g['miou'], 2)}</b> · pixel accuracy {_fmt_pct(g['pixel_accuracy'], 2)}"
        f" · {g['n_images']} image(s)"
    )
    return (
        f'<figure class="gt" id="gt-table"><figcaption>{caption}</figcaption><div class="scroll">'
        '<table class="miou"><thead><tr><th>class</th><th>IoU</th><th>precision</th><th>recall</th>'
        "<th>GT px</th><th>predicted px</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
        f'<p class="muted">as <code>wsss-label eval {escape(ctx.out_name)}/masks {escape(ctx.gt_dir or "GT")}</code>: '
        f"one confusion matrix, mIoU over the {g['n_classes_in_gt']} classes in the GT, predicted 255 left out "
        f"({_fmt_pct(g['ignored_fraction'], 2)} of valid GT pixels).</p></figure>"
    )


def _problems(ctx: PageContext) -> str:
    out = []
    for items, what, cls in ((ctx.failed, "failed", "fail"), (ctx.skipped, "skipped", "")):
        if not items:
            continue
        lis = "".join(
            f"<li><code>{escape(str(f.get('image', '?')))}</code> {escape(str(f.get('reason', '')))}</li>" for f in items[:SHOW_FAILURES]
        )
        more = f"<li>… and {len(items) - SHOW_FAILURES} more in run.json</li>" if len(items) > SHOW_FAILURES else ""
        out.append(f'<details class="{cls}"><summary>{len(items)} {what} image(s)</summary><ul>{lis}{more}</ul></details>')
    for note in ctx.notes:
        out.append(f'<p class="muted note">{escape(note)}</p>')
    return '<div class="problems">' + "".join(out) + "</div>" if out else ""


def _toolbar(ctx: PageContext) -> str:
    hist = rec.class_histogram(ctx.shown, len(ctx.label_names))
    options = ['<option value="-1">all classes</option>']
    for label in range(1, len(ctx.label_names)):
        if hist[label]:
            options.append(f'<option value="{label}">{escape(ctx.label_names[label])} ({hist[label]})</option>')
    keys = ["confidence", "ignored", "area", "seconds", "name"] + (["iou"] if ctx.gt_dir else [])
    sort_options = "".join(f'<option value="{k}">{SORT_LABELS[k]}</option>' for k in keys)
    return (
        '<nav class="toolbar">'
        f'<label>class <select id="class-filter">{"".join(options)}</select></label>'
        '<input id="search" type="search" placeholder="filter by name" aria-label="filter by name">'
        '<label>mark <select id="mark-filter"><option value="">any</option><option value="none">unmarked</option>'
        '<option value="accepted">accepted</option><option value="rejected">rejected</option><option value="fix">fix</option></select></label>'
        f'<label>sort <select id="sort-key">{sort_options}</select></label>'
        '<button id="sort-dir" type="button">worst first</button>'
        f'<span id="count" data-count="{len(ctx.shown)}">{len(ctx.shown)} images</span><span id="active"></span>'
        '<span class="keys"><kbd>J</kbd> <kbd>K</kbd> move · <kbd>Enter</kbd> enlarge · '
        "<kbd>A</kbd> <kbd>R</kbd> <kbd>F</kbd> mark</span></nav>"
    )


def _table_head(ctx: PageContext) -> str:
    def th(key: str | None, label: str, title: str = "") -> str:
        t = f' title="{escape(title)}"' if title else ""
        s = f' data-sort="{key}"' if key else ""
        return f"<th{s}{t}>{label}</th>"

    cells = [
        th(None, "#"),
        th(None, "photo · pseudo mask"),
        th("name", "image", COLUMN_TITLES["name"]),
        th("area", "labels · area", COLUMN_TITLES["labels"] + "; sorts by " + COLUMN_TITLES["area"]),
        th("ignored", "ignored", COLUMN_TITLES["ignored"]),
        th("confidence", "confidence", COLUMN_TITLES["confidence"]),
        th("seconds", "seconds", COLUMN_TITLES["seconds"]),
    ]
    if ctx.gt_dir:
        cells += [th("iou", "IoU", COLUMN_TITLES["iou"]), th(None, "GT")]
    return "<thead><tr>" + "".join(cells) + "</tr></thead>"


# The full-size overlay of a VOC palette mask is the mask PNG itself under this filter, so no
# overlay has to be rendered per image: background (black) becomes transparent, classes keep
# their colour at 60 % opacity, and ignored pixels (255, the only palette colour with
# R, G >= 224 and B >= 192) are replaced by white/dark stripes. Works in sRGB values; the
# image is drawn pixelated so scaling makes no in-between colours.
_HATCH_TILE = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='8' height='8'%3E"
    "%3Crect width='8' height='8' fill='%23000' fill-opacity='.45'/%3E"
    "%3Cpath d='M-2,2 l4,-4 M0,8 l8,-8 M6,10 l4,-4' stroke='%23fff' stroke-width='2.2'/%3E%3C/svg%3E"
)
MASK_FILTER = (
    '<svg width="0" height="0" style="position:absolute" aria-hidden="true" focusable="false">'
    '<filter id="mask-overlay" x="0" y="0" width="1" height="1" color-interpolation-filters="sRGB">'
    '<feComponentTransfer in="SourceGraphic" result="thr">'
    '<feFuncR type="discrete" tableValues="0 0 0 0 0 0 0 1"/><feFuncG type="discrete" tableValues="0 0 0 0 0 0 0 1"/>'
    '<feFuncB type="discrete" tableValues="0 0 0 1"/><feFuncA type="identity"/></feComponentTransfer>'
    '<feColorMatrix in="thr" type="matrix" values="0 0 0 0 1 0 0 0 0 1 0 0 0 0 1 1 1 1 0 -2" result="ign"/>'
    '<feColorMatrix in="SourceGraphic" type="matrix" values="1 0 0 0 0 0 1 0 0 0 0 0 1 0 0 4 4 4 0 0" result="any"/>'
    '<feComposite in="any" in2="ign" operator="out" result="cls"/>'
    '<feComponentTransfer in="cls" result="tint"><feFuncA type="linear" slope="0.6"/></feComponentTransfer>'
    f'<feImage href="{_HATCH_TILE}" x="0" y="0" width="8" height="8" result="tile"/>'
    '<feTile in="tile" result="hatch"/>'
    '<feComposite in="hatch" in2="ign" operator="in" result="hatched"/>'
    '<feMerge><feMergeNode in="tint"/><feMergeNode in="hatched"/></feMerge>'
    "</filter></svg>"
)


def _viewer(ctx: PageContext) -> str:
    marks = "".join(
        f'<button type="button" class="mb {m}" data-mark="{m}" title="{m} ({key}; again: clear)">{label} <kbd>{key}</kbd></button>'
        for m, label, key in (("accepted", "✓ accept", "A"), ("rejected", "✗ reject", "R"), ("fix", "fix", "F"))
    )
    return (
        '<div id="viewer" class="viewer" hidden role="dialog" aria-modal="true" aria-label="full-size view">'
        '<div class="vbar"><button id="v-prev" type="button" title="previous (←)">←</button>'
        '<span id="v-pos"></span><button id="v-next" type="button" title="next (→)">→</button>'
        '<strong id="v-name"></strong><span class="muted" id="v-which"></span><span class="sp"></span>'
        '<label title="what is laid over the photo: the mask, the GT (G), the errors vs GT (E), a CAM (C)">show '
        '<select id="v-layer"></select></label>'
        '<label><input type="checkbox" id="v-overlay" checked> overlay <kbd title="the letter O">O</kbd></label>'
        '<label>opacity <input type="range" id="v-alpha" min="0" max="100" value="100"></label>'
        '<span><button id="v-zout" type="button" title="zoom out (-)">−</button>'
        '<button id="v-zoom" type="button" title="fit (Z; or double-click the picture)">100%</button>'
        '<button id="v-zin" type="button" title="zoom in (+; or the mouse wheel; drag to pan)">+</button></span>'
        '<a id="v-mask" href="#" target="_blank" rel="noopener">mask PNG</a>'
        '<button id="v-close" type="button" title="close (Esc)">✕</button></div>'
        f'<div class="vmarks" id="v-marks">{marks}'
        '<input id="v-note" type="text" maxlength="2000" aria-label="note" placeholder="note (optional)"> <kbd>N</kbd></div>'
        '<div class="vbody"><div class="stage"><div class="stack">'
        '<img id="v-photo" class="photo" alt=""><img id="v-ov" class="ov" alt="overlay"></div></div>'
        '<aside class="vinfo"><div id="v-info"></div><p class="vkeys"><kbd>←</kbd> <kbd>→</kbd> step · '
        '<kbd title="the letter O">O</kbd> overlay · <kbd>G</kbd> GT · <kbd>E</kbd> errors vs GT · <kbd>C</kbd> next CAM · '
        "<kbd>+</kbd> <kbd>-</kbd> zoom (or the wheel), drag to pan, <kbd>Z</kbd> fit · <kbd>A</kbd> <kbd>R</kbd> <kbd>F</kbd> mark · "
        "<kbd>N</kbd> note · <kbd>Esc</kbd> close</p></aside></div></div>" + MASK_FILTER
    )


def page_data(ctx: PageContext) -> dict[str, Any]:
    """The JSON the page's script reads."""
    return {
        "title": ctx.title,
        "classes": ctx.label_names,
        "colours": ctx.colours,
        "photo_base": ctx.photo_base,
        "mask_base": ctx.mask_base,
        "has_gt": ctx.gt_dir is not None,
        "sort": {"key": ctx.sort_key, "desc": ctx.sort_desc},
        "thumb": THUMB,
        "low_confidence": LOW_CONFIDENCE,
        "bins": rec.IGNORED_BINS,  # of the ignored and confidence histograms (the page filters by them)
        "run_id": ctx.run_id,
        "review": ctx.review,
        "redos": ctx.redos,
        "images": ctx.shown,
    }


def embed_json(obj: Any) -> str:
    """JSON safe inside a <script> element (no '<' that could close it)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_page(ctx: PageContext) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f'<meta name="generator" content="wsss-label {escape(__version__)} report">'
        f"<title>{escape(ctx.title)}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><h1>Pseudo-mask review · <code>{escape(ctx.out_name)}</code></h1>'
        f'<p class="sub">{_settings_line(ctx)}</p></header>'
        '<section class="summary">'
        + _stats_row(ctx)
        + _charts(ctx)
        + _legend(ctx)
        + _problems(ctx)
        + "</section>"
        + _toolbar(ctx)
        + '<main><table class="gallery" id="gallery">'
        + _table_head(ctx)
        + '<tbody id="rows"></tbody></table><p id="empty" class="empty" hidden>no image matches</p><div id="more"></div></main>'
        + _viewer(ctx)
        + f'<script type="application/json" id="report-data">{embed_json(page_data(ctx))}</script>'
        + f"<script>{JS}</script></body></html>\n"
    )


def colour_list(n_labels: int, palette: Sequence[Sequence[int]]) -> list[str]:
    return [svg.hex_colour(palette[i]) for i in range(n_labels)]
