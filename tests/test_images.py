"""Decoding every kind of image to upright 8-bit RGB, and finding images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.data.images import find_images, load_rgb
from clipseg_cli.errors import ImageError


def test_modes_become_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    rgba = np.dstack([rgb, np.full((4, 6), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    grey = load_rgb(tmp_path / "grey.png")
    assert grey.shape == (4, 6, 3) and (grey[..., 0] == grey[..., 1]).all()
    assert load_rgb(tmp_path / "palette.png")[0, 0, 0] == 200
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgba.png"), rgb)
    assert abs(int(load_rgb(tmp_path / "cmyk.jpg")[0, 0, 0]) - 200) < 8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out = load_rgb(tmp_path / "deep.png")
    assert out.dtype == np.uint8
    assert list(out[0, :, 0]) == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "rotated.jpg").shape == (40, 20, 3)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"GIF89a"])
def test_corrupt_files_raise_image_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError):
        load_rgb(path)


def test_find_images_recursive_any_case_excluding_output(tmp_path: Path) -> None:
    for rel in ["a.JPG", "sub/b.png", "sub/deep/c.TIFF", "notes.txt", ".hidden.png", "out/masks/x.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert find_images(tmp_path, exclude=tmp_path / "out") == ["a.JPG", "sub/b.png", "sub/deep/c.TIFF"]


def test_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from clipseg_cli.io.atomic import write_bytes

    write_bytes(tmp_path / "sub" / "f.bin", b"x")
    mode = stat.S_IMODE((tmp_path / "sub" / "f.bin").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.bin"]


def test_label_maps_with_values_above_255_are_refused(tmp_path: Path) -> None:
    from clipseg_cli.io.masks import load_label_map, save_mask

    Image.fromarray(np.array([[0, 300]], dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ValueError, match="0..255"):
        load_label_map(tmp_path / "deep.png")
    Image.fromarray(np.array([[0, 200]], dtype=np.uint16)).save(tmp_path / "ok.png")
    assert load_label_map(tmp_path / "ok.png").tolist() == [[0, 200]]
    save_mask(tmp_path / "m.png", np.array([[0, 1, 255]], np.uint8))
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert load_label_map(tmp_path / "m.png").tolist() == [[0, 1, 255]]
