"""The synthetic shapes set of the demo and the tests, written in the VOC layout with two manifests.

Five classes that differ in shape, size and aspect ratio, so that both the anchors and the classifier
matter: ``circle`` (about 1:1, 24-64 px), ``bottle`` (tall, w:h about 1:3, 36-90 px high, dark cap),
``car`` (wide, about 2:1, 36-90 px long, dark wheels), ``triangle`` (pointing up or down, 26-70 px) and
``donut`` (a ring whose hole shows the background, 30-80 px). Each class has its own hue, jittered per
object and shaded across it. Backgrounds are muted gradients with clutter that is not an object
(random lines, small blobs, dull patches) and pixel noise. Objects overlap by at most about 30 % of
either box (later ones occlude earlier ones); a few run over the border (``truncated``); a third of
the images hold one or two tiny objects (6-12 px) marked ``difficult``; about 7 % hold no object.

Every box is the exact extent of the object's visible pixels, as a VOC annotator would draw it: the
XML has the 1-based inclusive corners of those pixels, the manifest the 0-based continuous box
``[col_min, row_min, col_max + 1, row_max + 1]``. Everything is a function of ``seed``: each image has
its own generator seeded by ``(seed, split, index)``, so the same call writes the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_dir
from ..errors import DataError
from .manifest import ImageRecord, Manifest, write_manifest
from .synthetic_sizes import DEFAULT_SEED, DEFAULT_TEST, DEFAULT_TRAIN

CLASSES = ("circle", "bottle", "car", "triangle", "donut")
# class -> (shortest long side, longest long side, (min w/h, max w/h)), base colour RGB
_GEOMETRY = {
    "circle": (24, 64, (0.9, 1.1)),
    "bottle": (36, 90, (0.28, 0.4)),
    "car": (36, 90, (1.8, 2.4)),
    "triangle": (26, 70, (0.95, 1.25)),
    "donut": (30, 80, (0.9, 1.1)),
}
_COLOURS = {
    "circle": (215, 45, 45), "bottle": (40, 165, 60), "car": (45, 85, 215),
    "triangle": (235, 195, 35), "donut": (185, 55, 200),
}
# another kind of set (``kind="glyphs"``), for measuring how training fits data nobody tuned it to: other
# shapes, larger and more varied objects (30-140 px), one wide class
GLYPHS = ("star", "cross", "frame", "arrow")
_GLYPH_GEOMETRY = {
    "star": (30, 110, (0.9, 1.1)),
    "cross": (30, 120, (0.75, 1.3)),
    "frame": (40, 140, (1.2, 1.8)),
    "arrow": (40, 140, (2.0, 3.0)),
}
_GLYPH_COLOURS = {"star": (230, 130, 30), "cross": (30, 170, 160), "frame": (90, 110, 170), "arrow": (150, 60, 150)}


@dataclass(frozen=True)
class Kind:
    """A family of classes: their names, geometry and base colours."""

    classes: tuple[str, ...]
    geometry: dict
    colours: dict


KINDS = {"shapes": Kind(CLASSES, _GEOMETRY, _COLOURS), "glyphs": Kind(GLYPHS, _GLYPH_GEOMETRY, _GLYPH_COLOURS)}
_EMPTY_FRACTION = 0.07
_MAX_OVERLAP = 0.3
_TINY = (6, 12)


@dataclass
class SynthObject:
    """One annotated object: ``box`` 0-based continuous in image pixels, ``label`` index into CLASSES."""

    label: int
    box: tuple[int, int, int, int]
    difficult: bool
    truncated: bool


# --------------------------------------------------------------------------------------------------
# drawing


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, x: int, y: int, w: int, h: int, flip: bool) -> None:
    """Value 1 = body, 2 = dark detail, 0 = hole; the shape fills the rectangle ``x, y, w, h``."""
    r, b = x + w - 1, y + h - 1
    if name in ("circle", "donut"):
        draw.ellipse([x, y, r, b], fill=1)
        if name == "donut":
            fx, fy = 0.26 * w, 0.26 * h
            draw.ellipse([x + fx, y + fy, r - fx, b - fy], fill=0)
    elif name == "bottle":
        draw.rectangle([x, y + 0.45 * h, r, b], fill=1)
        draw.polygon([(x, y + 0.45 * h), (x + 0.3 * w, y + 0.25 * h), (r - 0.3 * w, y + 0.25 * h),
                      (r, y + 0.45 * h)], fill=1)
        draw.rectangle([x + 0.3 * w, y, r - 0.3 * w, y + 0.25 * h], fill=1)
        draw.rectangle([x + 0.3 * w, y, r - 0.3 * w, y + 0.07 * h], fill=2)
    elif name == "car":
        draw.rectangle([x, y + 0.38 * h, r, y + 0.78 * h], fill=1)
        draw.polygon([(x + 0.15 * w, y + 0.4 * h), (x + 0.3 * w, y), (r - 0.3 * w, y),
                      (r - 0.12 * w, y + 0.4 * h)], fill=1)
        rad = 0.2 * h
        for cx in (x + 0.24 * w, r - 0.24 * w):
            draw.ellipse([cx - rad, b - 2 * rad, cx + rad, b], fill=2)
    elif name == "triangle":
        apex, base = (y, b) if not flip else (b, y)
        draw.polygon([(x + (w - 1) / 2, apex), (x, base), (r, base)], fill=1)
    else:
        _draw_glyph(draw, name, x, y, w, h, flip)


def _draw_glyph(draw: ImageDraw.ImageDraw, name: str, x: int, y: int, w: int, h: int, flip: bool) -> None:
    r, b = x + w - 1, y + h - 1
    if name == "star":
        cx, cy = x + (w - 1) / 2, y + (h - 1) / 2
        points = [(cx + (0.5 if k % 2 == 0 else 0.2) * (w - 1) * math.sin(k * math.pi / 5),
                   cy - (0.5 if k % 2 == 0 else 0.2) * (h - 1) * math.cos(k * math.pi / 5)) for k in range(10)]
        draw.polygon(points, fill=1)
    elif name == "cross":
        draw.rectangle([x + 0.35 * w, y, r - 0.35 * w, b], fill=1)
        draw.rectangle([x, y + 0.35 * h, r, b - 0.35 * h], fill=1)
    elif name == "frame":
        draw.rectangle([x, y, r, b], fill=1)
        draw.rectangle([x + 0.2 * w, y + 0.25 * h, r - 0.2 * w, b - 0.25 * h], fill=0)
    else:  # arrow, pointing right (left when flipped)
        tip, tail = (r, x) if not flip else (x, r)
        neck = tip - (0.35 * w if not flip else -0.35 * w)
        draw.rectangle([min(tail, neck), y + 0.3 * h, max(tail, neck), b - 0.3 * h], fill=1)
        draw.polygon([(neck, y), (tip, y + (h - 1) / 2), (neck, b)], fill=1)


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A muted gradient with clutter that is not an object: lines, small blobs, dull patches."""
    base = rng.uniform(70, 190) + rng.uniform(-25, 25, size=3)
    angle, amp = rng.uniform(0, 2 * math.pi), rng.uniform(10, 40)
    xs = (np.arange(width, dtype=np.float32) / width - 0.5) * (2 * amp * math.cos(angle))
    ys = (np.arange(height, dtype=np.float32) / height - 0.5) * (2 * amp * math.sin(angle))
    ramp = ys[:, None, None] + xs[None, :, None]
    pixels = np.clip(base.astype(np.float32) + ramp, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 3))):  # dull patches: shapes of no class colour
        grey = rng.uniform(60, 200) + rng.uniform(-15, 15, size=3)
        px, py = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
        pw, ph = rng.uniform(20, 60, size=2)
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([px, py, px + pw, py + ph], fill=tuple(int(v) for v in grey))
    for _ in range(int(rng.integers(3, 9))):
        pts = rng.uniform(0, 1, size=4) * (width, height, width, height)
        draw.line(list(pts), fill=tuple(int(v) for v in rng.integers(30, 230, size=3)),
                  width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(3, 11))):
        px, py, size = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, 9)
        colour = tuple(int(v) for v in rng.integers(30, 230, size=3))
        draw.ellipse([px, py, px + size, py + size], fill=colour)
    return image


def _paint(canvas: np.ndarray, owner: np.ndarray, k: int, name: str, rect, flip, rng, kind: Kind) -> None:
    """Draw one object into ``canvas`` (float H x W x 3) and mark its pixels ``k`` in ``owner``."""
    height, width = owner.shape
    layer = Image.new("L", (width, height), 0)
    _draw_shape(ImageDraw.Draw(layer), name, *rect, flip)
    values = np.asarray(layer)
    rows, cols = np.nonzero(values)
    colour = np.asarray(kind.colours[name], dtype=np.float32) + rng.uniform(-30, 30, size=3).astype(np.float32)
    shade = rng.uniform(-30, 30) * ((cols - rect[0]) / max(rect[2], 1) - 0.5)
    canvas[rows, cols] = np.clip(colour[None, :] + shade[:, None].astype(np.float32), 0, 255)
    detail = values[rows, cols] == 2
    canvas[rows[detail], cols[detail]] = rng.uniform(20, 55)
    owner[rows, cols] = k


def _overlap(a, b) -> float:
    """Intersection area of two ``(x, y, w, h)`` rectangles."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(iw, 0) * max(ih, 0)


def _place(rng, names, width, height, tiny: bool, kind: Kind = KINDS["shapes"]):
    """Rectangles ``(x, y, w, h)`` with overlaps of at most 30 % of either (tiny ones: none, inside)."""
    placed: list[tuple[str, tuple[int, int, int, int], bool]] = []
    covered: list[float] = []
    for name in names:
        lo, hi, (amin, amax) = kind.geometry[name]
        if tiny:
            lo, hi = _TINY
        long_side, aspect = rng.uniform(lo, hi), rng.uniform(amin, amax)
        w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
        w, h = min(max(int(round(w)), 3), width), min(max(int(round(h)), 3), height)
        spill = 0.2 if not tiny and rng.random() < 0.15 else 0.0
        for _ in range(30):
            x = int(rng.integers(-int(spill * w), width - w + int(spill * w) + 1))
            y = int(rng.integers(-int(spill * h), height - h + int(spill * h) + 1))
            rect = (x, y, w, h)
            inter = [_overlap(rect, other) for _, other, _ in placed]
            limit = 0.0 if tiny else _MAX_OVERLAP
            if sum(inter) <= limit * w * h and all(
                c + i <= limit * o[2] * o[3] for c, i, (_, o, _) in zip(covered, inter, placed)
            ):
                covered = [c + i for c, i in zip(covered, inter)] + [sum(inter)]
                placed.append((name, rect, bool(rng.random() < 0.5)))
                break
    return placed


def render_image(rng: np.random.Generator, width: int, height: int,
                 kind: Kind = KINDS["shapes"]) -> tuple[np.ndarray, list[SynthObject]]:
    """One image ``uint8 [H, W, 3]`` and its objects, boxes exactly around each object's visible pixels."""
    classes = kind.classes
    canvas = np.asarray(_background(rng, height, width), dtype=np.float32).copy()
    owner = np.full((height, width), -1, dtype=np.int32)
    objects: list[tuple[str, tuple[int, int, int, int], bool, bool]] = []
    if rng.random() >= _EMPTY_FRACTION:
        count = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))
        names = [classes[int(i)] for i in rng.integers(0, len(classes), size=count)]
        objects = [(n, r, f, False) for n, r, f in _place(rng, names, width, height, tiny=False, kind=kind)]
        if rng.random() < 0.35:
            names = [classes[int(i)] for i in rng.integers(0, len(classes), size=int(rng.integers(1, 3)))]
            tiny = _place_tiny(rng, names, width, height, [r for _, r, _, _ in objects], kind)
            objects += [(n, r, f, True) for n, r, f in tiny]
    for k, (name, rect, flip, _) in enumerate(objects):
        _paint(canvas, owner, k, name, rect, flip, rng, kind)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(3, 8))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    result = []
    for k, (name, (x, y, w, h), _, difficult) in enumerate(objects):
        rows, cols = np.nonzero(owner == k)
        if len(rows) < 6:  # fully hidden: nothing an annotator could box
            continue
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        truncated = x < 0 or y < 0 or x + w > width or y + h > height
        result.append(SynthObject(classes.index(name), box, difficult, truncated))
    return image, result


def _place_tiny(rng, names, width, height, others, kind: Kind):
    """Tiny objects inside the image, 2 px clear of every other object."""
    placed = []
    for name, rect, flip in _place(rng, names, width, height, tiny=True, kind=kind):
        grown = (rect[0] - 2, rect[1] - 2, rect[2] + 4, rect[3] + 4)
        if all(_overlap(grown, o) == 0 for o in others):
            placed.append((name, rect, flip))
            others = [*others, rect]
    return placed


# --------------------------------------------------------------------------------------------------
# files


def _xml(image_id: str, filename: str, width: int, height: int, objects: list[SynthObject],
         classes: tuple[str, ...] = CLASSES) -> bytes:
    """A VOC annotation with 1-based inclusive corners."""
    root = ET.Element("annotation")
    for tag, text in (("folder", "synth"), ("filename", filename)):
        ET.SubElement(root, tag).text = text
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "frcnn synthetic shapes"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(root, "object")
        for tag, text in (("name", classes[obj.label]), ("pose", "Unspecified"),
                          ("truncated", str(int(obj.truncated))), ("difficult", str(int(obj.difficult)))):
            ET.SubElement(node, tag).text = text
        bndbox = ET.SubElement(node, "bndbox")
        x1, y1, x2, y2 = obj.box
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root, space="\t")
    return (ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")


def _image_size(rng: np.random.Generator, image_size: tuple[int, int]) -> tuple[int, int]:
    """Width, height about ``image_size`` (+-15 %), a fifth of them portrait."""
    w, h = (int(round(s * rng.uniform(0.85, 1.15))) for s in image_size)
    return (h, w) if rng.random() < 0.2 else (w, h)




def make_synthetic_set(out_dir: Path, *, n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST,
                       seed: int = DEFAULT_SEED, image_size: tuple[int, int] = (256, 192),
                       kind: str = "shapes", n_val: int = 0) -> tuple[Path, Path]:
    """Write the set under ``out_dir``; return the paths of ``trainval.json`` and ``test.json``.

    Layout: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml``, ``ImageSets/Main/{trainval,test}.txt``,
    ``classes.txt``; ids ``000000``… (trainval first). ``image_size`` is (width, height). Images and XML
    are written into a staging folder beside ``out_dir`` and moved in when all are written
    (``atomic.atomic_dir``): a full disk or an error half-way leaves nothing of this call in ``out_dir``.
    The manifests are written last and atomically, so their presence means the set is complete.
    ``kind``: ``"shapes"`` (the demo's and the tests' five classes) or ``"glyphs"`` (four other
    classes, 30-140 px: ``GLYPHS``), for measuring training on a set it was not tuned to. ``n_val`` > 0
    also writes ``val.json`` (ids after the test images; for validation during training).
    """
    family = KINDS[kind]
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    splits = (("trainval", 0, n_train, 0), ("test", 1, n_test, n_train))
    if n_val > 0:
        splits += (("val", 2, n_val, n_train + n_test),)
    records: dict[str, list[ImageRecord]] = {}
    with atomic_dir(out_dir) as staging:
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (staging / sub).mkdir(parents=True, exist_ok=True)
        (staging / "classes.txt").write_text("\n".join(family.classes) + "\n", encoding="utf-8")
        for split, code, count, offset in splits:
            records[split] = [_write_image(staging, f"{offset + i:06d}", np.random.default_rng([seed, code, i]),
                                           image_size, family) for i in range(count)]
            ids = "".join(rec.id + "\n" for rec in records[split])
            (staging / "ImageSets" / "Main" / f"{split}.txt").write_text(ids, encoding="utf-8")
        for split, *_ in splits:  # an older set's manifests go first: never beside half-replaced images
            (out_dir / f"{split}.json").unlink(missing_ok=True)
    paths = []
    for split, *_ in splits:
        path = out_dir / f"{split}.json"
        write_manifest(path, Manifest(name=f"synth-{split}", classes=list(family.classes),
                                      root=str(out_dir.resolve()), images=records[split]))
        paths.append(path)
    return paths[0], paths[1]


_WRITES = ("JPEGImages", "Annotations", "ImageSets", "classes.txt", "trainval.json", "test.json", "val.json")


def check_replaceable(out_dir: Path) -> None:
    """A ``DataError`` when ``out_dir`` holds a file or folder a synthetic set writes (``JPEGImages``, …) but is not
    a synthetic set itself (its ``classes.txt``, moved in with the images, names another class list): a user's
    VOC-style dataset, whose same-named images and XML the set would replace."""
    taken = [name for name in _WRITES if (out_dir / name).exists()]
    if not taken:
        return
    with contextlib.suppress(OSError, UnicodeDecodeError):
        names = (out_dir / "classes.txt").read_text(encoding="utf-8").split()
        if any(names == list(family.classes) for family in KINDS.values()):
            return
    raise DataError(f"{out_dir} holds {out_dir / taken[0]}, and it is not a synthetic set of frcnn (its classes.txt "
                    "names no synthetic class list): a synthetic set would replace the same-named images and XML "
                    "there; give an empty or new folder")


def _write_image(out_dir: Path, image_id: str, rng: np.random.Generator,
                 image_size: tuple[int, int], kind: Kind) -> ImageRecord:
    width, height = _image_size(rng, image_size)
    pixels, objects = render_image(rng, width, height, kind)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=92)
    filename = f"{image_id}.jpg"
    (out_dir / "JPEGImages" / filename).write_bytes(buffer.getvalue())
    xml = _xml(image_id, filename, width, height, objects, kind.classes)
    (out_dir / "Annotations" / f"{image_id}.xml").write_bytes(xml)
    return ImageRecord(
        id=image_id, path=f"JPEGImages/{filename}", width=width, height=height,
        boxes=[[float(v) for v in obj.box] for obj in objects], labels=[obj.label for obj in objects],
        difficult=[obj.difficult for obj in objects], truncated=[obj.truncated for obj in objects],
    )
