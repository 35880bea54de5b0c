"""The pictures a result carries: the page with its layout boxes drawn, and every picture as JPEG base64."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .layout.base import LayoutBox

# PaddleX's server scales every returned picture to fit 2000x2000 and writes it with OpenCV's
# default JPEG quality.
OUTPUT_IMAGE_MAX = (2000, 2000)
OUTPUT_JPEG_QUALITY = 95


def jpeg_base64(image: Image.Image, max_size: tuple[int, int] = OUTPUT_IMAGE_MAX) -> str:
    """A returned picture: scaled down to fit `max_size` keeping its aspect, JPEG, base64."""
    width, height = image.size
    if width > max_size[0] or height > max_size[1]:
        factor = min(max_size[0] / width, max_size[1] / height)
        image = image.resize((max(1, int(width * factor)), max(1, int(height * factor))), Image.Resampling.BILINEAR)
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=OUTPUT_JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_PALETTE = [
    (255, 0, 0), (0, 160, 0), (0, 0, 255), (230, 140, 0), (160, 0, 200), (0, 170, 170), (200, 0, 100),
    (120, 120, 0), (0, 100, 200), (255, 90, 160), (90, 60, 20), (0, 200, 90),
]  # fmt: skip


def draw_layout(page: Image.Image, boxes: Sequence[LayoutBox]) -> Image.Image:
    """The page with every detected box outlined and labelled with its class and score."""
    out = page.convert("RGB")
    draw = ImageDraw.Draw(out)
    thickness = max(1, int(max(out.size) * 0.002))
    try:
        font: Any = ImageFont.load_default(size=int(0.018 * out.width) + 2)
    except TypeError:
        font = ImageFont.load_default()
    colors: dict[str, tuple[int, int, int]] = {}
    for box in boxes:
        color = colors.setdefault(box.label, _PALETTE[len(colors) % len(_PALETTE)])
        x1, y1, x2, y2 = (float(v) for v in box.coordinate)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=thickness)
        caption = f"{box.label} {box.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        lift = bottom - top + 2
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=color)
        draw.text((x1 + 1, y1 - lift), caption, fill=(255, 255, 255), font=font)
    return out
