"""The one generator of synthetic images: the tiny Imp's scenes, the quant eval set, the bench's and
the parity checks' test photos. Deterministic, drawn with Pillow, nothing downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: Sequence[float], fill: RGB) -> None:
    """circle/ellipse, square/rectangle, or triangle (apex up) filling box [x0, y0, x1, y1]."""
    x0, y0, x1, y1 = box
    if kind in ("circle", "ellipse"):
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif kind in ("square", "rectangle"):
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def shapes_image(background: RGB, shapes: Sequence[tuple[str, RGB, tuple[float, float, float, float]]],
                 side: int) -> Image.Image:
    """Flat shapes on a flat background; boxes as fractions of the side."""
    im = Image.new("RGB", (side, side), background)
    d = ImageDraw.Draw(im)
    for kind, colour, (x0, y0, x1, y1) in shapes:
        draw_shape(d, kind, [round(x0 * side), round(y0 * side), round(x1 * side) - 1, round(y1 * side) - 1], colour)
    return im


def photo_like(dest: Path, width: int, height: int, seed: int = 0) -> Path:
    """Write a photo-like test image to dest (PNG): colour gradients, noise and two shapes. Make it
    non-square, like photos, so the resize or padding is exercised."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 / width), (yy * 255 / height), ((xx + yy) * 128 / (width + height)) + 60], -1)
    img += rng.normal(0, 12, img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype("uint8"))
    d = ImageDraw.Draw(im)
    draw_shape(d, "ellipse", [width * 0.1, height * 0.2, width * 0.35, height * 0.55], (220, 40, 40))
    draw_shape(d, "rectangle", [width * 0.55, height * 0.5, width * 0.85, height * 0.85], (40, 60, 220))
    im.save(dest, format="PNG")
    return dest
