"""A colour key under a picture: a swatch and a name per entry, wrapped to the picture's width.

Shared by the pictures of ``wsss-label eval --visualize`` and ``wsss-label --visualize``.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

GAP = 6
LINE = 18  # pixels per line of the key
WHITE = (255, 255, 255)
TEXT = (20, 20, 20)

Entry = tuple[str, tuple[int, int, int]]


def font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _lines(draw: ImageDraw.ImageDraw, entries: Sequence[Entry], width: int, face) -> list[list[tuple[str, tuple[int, int, int], int]]]:  # type: ignore[no-untyped-def]
    lines: list[list[tuple[str, tuple[int, int, int], int]]] = [[]]
    x = GAP
    for text, color in entries:
        w = 16 + int(draw.textlength(text, font=face)) + 12
        if x + w > width and lines[-1]:
            lines.append([])
            x = GAP
        lines[-1].append((text, color, x))
        x += w
    return lines


def legend_image(entries: Sequence[Entry], width: int) -> Image.Image:
    """A white strip ``width`` wide with one swatch (outlined) and name per entry, as many lines as needed."""
    face = font()
    lines = _lines(ImageDraw.Draw(Image.new("RGB", (1, 1))), entries, width, face)
    strip = Image.new("RGB", (width, len(lines) * LINE + GAP), WHITE)
    draw = ImageDraw.Draw(strip)
    y = GAP // 2
    for line in lines:
        for text, color, x in line:
            draw.rectangle((x, y + 2, x + 12, y + 14), fill=color, outline=TEXT)
            draw.text((x + 16, y), text, fill=TEXT, font=face)
        y += LINE
    return strip
