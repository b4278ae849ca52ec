"""Small inline SVG charts for the summary header (no plotting library, no script needed)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

INK = "#334155"
MUTED = "#94a3b8"
GRID = "#e2e8f0"
BAR = "#6366f1"


def _num(v: float) -> str:
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def class_bars(
    names: Sequence[str],
    counts: Sequence[int],
    colours: Sequence[str],
    width: int = 360,
    row: int = 17,
    label_width: int = 110,
) -> str:
    """Horizontal bars of images per class (label value order in ``names``/``counts``), most
    frequent first; classes with no image are left out. Each bar is a ``<g class="bar"
    data-label="v">`` the page's script makes clickable (filter by that class)."""
    rows = sorted((i for i, c in enumerate(counts) if c > 0), key=lambda i: (-counts[i], i))
    if not rows:
        return '<p class="muted">no labels</p>'
    top = max(counts[i] for i in rows)
    plot = width - label_width - 44
    height = row * len(rows) + 4
    parts = [
        (
            f'<svg class="chart" role="img" aria-label="images per class" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        )
    ]
    for k, i in enumerate(rows):
        y = 2 + k * row
        w = max(1.5, plot * counts[i] / top)
        name = escape(names[i])
        parts.append(
            f'<g class="bar" data-label="{i}"><title>{name}: {counts[i]} image(s)</title>'
            f'<rect x="0" y="{y}" width="{width}" height="{row}" fill="transparent"/>'
            f'<text x="{label_width - 6}" y="{y + row * 0.72:.1f}" text-anchor="end" fill="{INK}">{name}</text>'
            f'<rect x="{label_width}" y="{y + 2}" width="{_num(w)}" height="{row - 4}" rx="2" '
            f'fill="{colours[i]}" stroke="rgba(0,0,0,.25)"/>'
            f'<text x="{label_width + w + 4:.1f}" y="{y + row * 0.72:.1f}" fill="{INK}">{counts[i]}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram(
    counts: Sequence[int],
    label: str,
    unit_max: float = 100.0,
    unit: str = "%",
    width: int = 320,
    height: int = 130,
    colour: str = BAR,
    css_class: str = "",
) -> str:
    """Vertical histogram of equal bins spanning 0..``unit_max`` with an x axis in ``unit``."""
    n = len(counts)
    top = max(counts) if counts and max(counts) > 0 else 1
    left, right, bottom, head = 30, 18, 22, 8
    pw, ph = width - left - right, height - bottom - head
    bw = pw / max(n, 1)
    cls = f"chart {css_class}".strip()
    parts = [
        (
            f'<svg class="{cls}" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        ),
        f'<line x1="{left}" y1="{head + ph}" x2="{left + pw}" y2="{head + ph}" stroke="{MUTED}"/>',
        f'<line x1="{left}" y1="{head}" x2="{left + pw}" y2="{head}" stroke="{GRID}" stroke-dasharray="3 3"/>',
        f'<text x="{left - 4}" y="{head + 4}" text-anchor="end" fill="{INK}">{top}</text>',
        f'<text x="{left - 4}" y="{head + ph}" text-anchor="end" fill="{INK}">0</text>',
    ]
    step = unit_max / max(n, 1)
    for k, c in enumerate(counts):
        h = ph * c / top
        x = left + k * bw
        lo, hi = k * step, (k + 1) * step
        # One <g class="bin" data-bin="k"> per bin, the whole column clickable (the page filters by it).
        parts.append(
            f'<g class="bin" data-bin="{k}"><title>{_num(lo)}–{_num(hi)}{unit}: {c} image(s)</title>'
            f'<rect x="{x:.2f}" y="{head}" width="{bw:.2f}" height="{ph}" fill="transparent"/>'
            f'<rect x="{x + 0.75:.2f}" y="{head + ph - h:.2f}" width="{max(bw - 1.5, 0.5):.2f}" height="{h:.2f}" '
            f'fill="{colour}"/></g>'
        )
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + pw * frac
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" fill="{INK}">{_num(unit_max * frac)}{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)
