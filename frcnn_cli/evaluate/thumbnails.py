"""Small JPEG pictures of one error for the report: the region around it, boxes drawn, as a ``data:`` URI.

The picture is cut around the box in question (three times its size, at least ``MIN_CONTEXT`` pixels of
the image) and scaled so that its longer side is ``SIDE`` pixels (a small image up to 3x), so a 20-pixel
object is as readable as a large one and a page of a hundred of them stays near a megabyte. On it: the
image's ground truth (white and black, class name below), the detections of the image scoring at least
``SHOW_SCORE`` in their class colour (thin), and the box in question thick with its label and score.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from ..data.images import load_image
from ..detect import class_colour

SIDE = 200
MIN_CONTEXT = 96
SHOW_SCORE = 0.5
QUALITY = 80
MISSED_COLOUR = (255, 40, 40)


@dataclass(frozen=True)
class Box:
    """A box to draw: original pixels ``x1 y1 x2 y2``, its class name and its score (None: ground truth)."""

    box: Sequence[float]
    label: str
    score: float | None = None


def _window(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The crop around ``box``: the box grown by its own size on every side, at least ``MIN_CONTEXT`` wide
    and high (or the whole image), inside the image."""
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1, MIN_CONTEXT / 3), max(y2 - y1, MIN_CONTEXT / 3)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = min(1.5 * w, width / 2), min(1.5 * h, height / 2)
    left = min(max(0.0, cx - half_w), width - 2 * half_w)
    top = min(max(0.0, cy - half_h), height - 2 * half_h)
    return int(left), int(top), int(round(left + 2 * half_w)), int(round(top + 2 * half_h))


def _label(draw: ImageDraw.ImageDraw, text: str, xy: tuple[float, float], colour, font, size) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 2
    x = min(max(0.0, xy[0]), max(0.0, size[0] - tw))
    y = min(max(0.0, xy[1]), max(0.0, size[1] - th))
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=colour)
    ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150 else (255, 255, 255)
    draw.text((x + 2 - left, y + 1 - top), text, fill=ink, font=font)


def _draw(image: Image.Image, boxes, to_px, *, classes, focus: Box, focus_missed: bool) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=10)
    truth, found = boxes
    for b in truth:
        x1, y1, x2, y2 = to_px(b.box)
        draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=(0, 0, 0))
        draw.rectangle((x1, y1, x2, y2), outline=(255, 255, 255))
        _label(draw, b.label, (x1, y2 + 2), (255, 255, 255), font, image.size)
    for b in sorted(found, key=lambda b: b.score or 0.0):
        draw.rectangle(to_px(b.box), outline=class_colour(b.label, classes), width=1)
    x1, y1, x2, y2 = to_px(focus.box)
    colour = MISSED_COLOUR if focus_missed else class_colour(focus.label, classes)
    draw.rectangle((x1, y1, x2, y2), outline=colour, width=3)
    text = f"missed {focus.label}" if focus_missed else f"{focus.label} {focus.score:.2f}"
    _label(draw, text, (x1, y1 - 14 if y1 >= 14 else y1 + 3), colour, font, image.size)


def thumbnail(image_path: str | os.PathLike, focus: Box, *, ground_truth: Sequence[Box] = (),
              detections: Sequence[Box] = (), classes: Sequence[str] | None = None,
              focus_missed: bool = False) -> str:
    """A ``data:image/jpeg;base64,…`` picture of ``focus`` (a detection, or a missed object when
    ``focus_missed``) in its image, with the image's ``ground_truth`` and ``detections`` scoring at least
    ``SHOW_SCORE`` drawn; boxes in original pixels."""
    pixels = load_image(image_path).permute(1, 2, 0).contiguous().numpy()
    image = Image.fromarray(pixels)
    left, top, right, bottom = _window(focus.box, *image.size)
    crop = image.crop((left, top, right, bottom))
    scale = min(SIDE / max(crop.size), 3.0)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR)

    def to_px(box):
        x1, y1, x2, y2 = ((v - o) * scale for v, o in zip(box, (left, top, left, top)))
        return x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)

    def inside(b: Box) -> bool:
        return b.box[0] < right and b.box[2] > left and b.box[1] < bottom and b.box[3] > top

    truth = [b for b in ground_truth if inside(b)]
    shown = [b for b in detections if b.score is not None and b.score >= SHOW_SCORE and b != focus and inside(b)]
    _draw(crop, (truth, shown), to_px, classes=classes, focus=focus, focus_missed=focus_missed)
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
