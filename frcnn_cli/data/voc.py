"""VOC XML annotations (a VOCdevkit, or any folder of VOC-XML files and images) to manifests.

Coordinates: VOC corners are 1-based inclusive pixels, so ``xmin..xmax`` becomes the 0-based continuous
``xmin - 1 .. xmax`` (docs/architecture.md); float coordinates are taken as they are. A box may stick
out of the image by at most ``CLIP_TOLERANCE`` (5) pixels, e.g. a 0-based annotation with xmin = 0 that
becomes x1 = -1: it is clipped to the image with a warning. Further out it is an error. ``xmax < xmin``
is an error (``xmax == xmin`` is a valid one-pixel-wide box). ``difficult``/``truncated`` default to 0.

Every image is decoded (JPEGs at 1/8 scale, which still reads every byte) so that unreadable and
truncated files are found now, not hours into training. All problems are collected and reported in one
``DataError``. XML is parsed with ElementTree after an expat pass that refuses DOCTYPE and ENTITY
declarations, so entity expansion ("billion laughs") and external entities are never reached.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from ..callbacks import OnNote, Progress
from ..errors import DataError
from .decode import open_image
from .manifest import ImageRecord, Manifest, split_manifest
from .manifest import PrepareReport as PrepareReport  # re-exported: the prepare summary

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CLIP_TOLERANCE = 5.0  # pixels a box may reach outside the image and still be clipped (with a warning)
MAX_SHOWN = 10  # problems listed in one error message

_log = logging.getLogger(__name__)


@dataclass
class VocObject:
    """One ``<object>``; ``box`` is the raw 1-based inclusive ``(xmin, ymin, xmax, ymax)`` of the XML."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False


@dataclass
class VocAnnotation:
    """One XML file: the ``<size>`` it claims (None where absent) and its well-formed objects."""

    width: int | None
    height: int | None
    objects: list[VocObject] = field(default_factory=list)


@dataclass
class _Item:
    id: str
    xml: Path
    image: Path
    rel: str  # image path relative to the manifest root, with forward slashes


class _Unsafe(Exception):
    """A DOCTYPE or ENTITY declaration met by the guard parser."""


def _refuse(*_args: object) -> None:
    raise _Unsafe


def _parse_xml(path: Path) -> ET.Element:
    """The root element of ``path``; DOCTYPE/ENTITY declarations and malformed XML are DataErrors."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: the annotation is missing; add it or drop the image") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the annotation ({exc.strerror or exc}); check it") from None
    guard = expat.ParserCreate()
    guard.StartDoctypeDeclHandler = guard.EntityDeclHandler = _refuse
    try:
        guard.Parse(data, True)
        return ET.fromstring(data)
    except _Unsafe:
        raise DataError(f"{path}: has a DOCTYPE or ENTITY declaration, which frcnn refuses (entity "
                        "expansion attacks); remove the declaration from the file") from None
    except (expat.ExpatError, ET.ParseError) as exc:
        raise DataError(f"{path}: malformed XML ({exc}); fix or delete the file") from None


def _number(text: str | None) -> float | None:
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _flag(obj: ET.Element, tag: str, where: str, problems: list[str]) -> bool:
    text = (obj.findtext(tag) or "").strip().lower()
    value = _number(text)
    if value is None and text not in ("", "true", "yes", "false", "no"):
        problems.append(f"{where}: <{tag}> {text!r} is not 0 or 1; fix the tag")
    return value != 0 if value is not None else text in ("true", "yes")


def _size(root: ET.Element, tag: str, path: Path, problems: list[str]) -> int | None:
    text = (root.findtext(f"size/{tag}") or "").strip()
    value = _number(text)
    if value is not None and value >= 0 and value == int(value):
        return int(value)
    if text:
        problems.append(f"{path}: <size><{tag}> {text!r} is not a whole number; fix it or remove <size>")
    return None


def _parse_object(obj: ET.Element, where: str, problems: list[str]) -> VocObject | None:
    name = (obj.findtext("name") or "").strip()
    if not name:
        problems.append(f"{where}: has no <name>; add the class name or delete the object")
        return None
    where = f"{where} ({name})"
    bndbox = obj.find("bndbox")
    if bndbox is None:
        problems.append(f"{where}: has no <bndbox>; add the box or delete the object")
        return None
    coords = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = bndbox.findtext(tag)
        value = _number(text)
        if value is None:
            what = "is missing" if text is None else f"{text.strip()!r} is not a number"
            problems.append(f"{where}: <bndbox> {tag} {what}; fix the box or delete the object")
            return None
        coords.append(value)
    difficult = _flag(obj, "difficult", where, problems)
    return VocObject(name, tuple(coords), difficult, _flag(obj, "truncated", where, problems))


def _parse_annotation(path: Path) -> tuple[VocAnnotation | None, list[str]]:
    """The annotation and the problems of one file (an object's problem drops the object, not the file)."""
    try:
        root = _parse_xml(path)
    except DataError as exc:
        return None, [str(exc)]
    if root.tag != "annotation":
        return None, [f"{path}: the root element is <{root.tag}>, not <annotation>; not a VOC annotation"]
    problems: list[str] = []
    ann = VocAnnotation(_size(root, "width", path, problems), _size(root, "height", path, problems))
    for j, obj in enumerate(root.findall("object"), start=1):
        parsed = _parse_object(obj, f"{path}, object {j}", problems)
        if parsed is not None:
            ann.objects.append(parsed)
    return ann, problems


def parse_voc_xml(path: str | os.PathLike) -> VocAnnotation:
    """Parse one VOC XML file; any problem in it raises a ``DataError`` naming the file and the object."""
    ann, problems = _parse_annotation(Path(path))
    if problems or ann is None:
        raise problems_error(problems)
    return ann


def _image_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """``((width, height), None)`` for a decodable image, else ``(None, problem)``."""
    if not path.is_file():
        return None, f"{path}: the image is missing; add it or delete its annotation"
    try:
        with open_image(path, "shrink it (or delete it and its XML) and run frcnn prepare again") as img:
            size = img.size
            img.draft(img.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))  # JPEG: reads every byte
            img.load()
    except DataError as exc:  # over frcnn's size limit
        return None, str(exc)
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"{path}: unreadable or truncated image ({exc}); replace it or delete it and its XML"
    return (int(size[0]), int(size[1])), None


def _inspect_all(items: list[_Item], errors: list[str], progress: Progress | None) -> list[tuple]:
    """``(item, annotation, size)`` for every item, parsed and decoded on a few threads, in order."""
    out = []
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        results = pool.map(lambda it: (_parse_annotation(it.xml), _image_size(it.image)), items)
        for done, (item, ((ann, problems), (size, problem))) in enumerate(zip(items, results), start=1):
            errors.extend(problems + ([problem] if problem else []))
            out.append((item, ann, size))
            if progress is not None:
                progress(done, len(items))
    return out


def _convert_box(raw: tuple, size: tuple[int, int], where: str, errors: list[str], warn: OnNote) -> list | None:
    """1-based inclusive ``raw`` -> 0-based continuous box clipped to the image, or None (error logged)."""
    xmin, ymin, xmax, ymax = raw
    for axis, lo, hi in (("x", xmin, xmax), ("y", ymin, ymax)):
        if hi < lo:
            errors.append(f"{where}: {axis}max {hi:g} < {axis}min {lo:g}; fix the box or delete the object")
            return None
    width, height = size
    box = [xmin - 1.0, ymin - 1.0, float(xmax), float(ymax)]
    clipped = [min(max(v, 0.0), float(lim)) for v, lim in zip(box, (width, height, width, height))]
    off = max(abs(a - b) for a, b in zip(box, clipped))
    shown = f"({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})"
    if off > CLIP_TOLERANCE or clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        errors.append(f"{where}: box {shown} lies {off:g} px outside the {width}x{height} image; "
                      "fix the box or delete the object")
        return None
    if off > 0:
        hint = " (0-based coordinates? VOC's are 1-based)" if min(xmin, ymin) == 0 else ""
        warn(f"{where}: box {shown} reaches {off:g} px outside the {width}x{height} image{hint}; clipped")
    return clipped


def _make_record(item: _Item, ann: VocAnnotation, size: tuple[int, int], class_index: dict[str, int],
                 errors: list[str], warn: OnNote) -> ImageRecord:
    claimed = (ann.width, ann.height)
    if 0 in claimed:
        warn(f"{item.xml}: <size> is {ann.width}x{ann.height}; using the image's {size[0]}x{size[1]}")
    elif None not in claimed and claimed != size:
        errors.append(f"{item.xml}: <size> says {ann.width}x{ann.height} but {item.image} is "
                      f"{size[0]}x{size[1]}; fix <size> (or the boxes, if the image was resized or rotated)")
    rec = ImageRecord(item.id, item.rel, size[0], size[1], boxes=[], labels=[], difficult=[], truncated=[])
    for j, obj in enumerate(ann.objects, start=1):
        where = f"{item.xml}, object {j} ({obj.name})"
        if obj.name not in class_index:
            errors.append(f"{where}: unknown class {obj.name!r}; add it to the class list or fix the name")
            continue
        box = _convert_box(obj.box, size, where, errors, warn)
        if box is not None:
            rec.boxes.append(box)
            rec.labels.append(class_index[obj.name])
            rec.difficult.append(obj.difficult)
            rec.truncated.append(obj.truncated)
    return rec


def problems_error(errors: list[str]) -> DataError:
    if len(errors) == 1:
        return DataError(errors[0])
    more = f"\n  ... and {len(errors) - MAX_SHOWN} more" if len(errors) > MAX_SHOWN else ""
    listed = "\n  ".join(errors[:MAX_SHOWN])
    return DataError(f"{len(errors)} problems in the data; fix them and run prepare again:\n  {listed}{more}")


def _build(name: str, root: str, items: list[_Item], classes: list[str] | None,
           warn: OnNote, progress: Progress | None) -> Manifest:
    """Parse, decode and validate every item; ``classes=None`` discovers them (sorted) from the XML."""
    errors: list[str] = []
    inspected = _inspect_all(items, errors, progress)
    if classes is None:
        classes = sorted({obj.name for _, ann, _ in inspected if ann is not None for obj in ann.objects})
        if not classes and not errors:
            errors.append(f"no <object> in any of the {len(items)} annotations; nothing to train on")
    class_index = {c: i for i, c in enumerate(classes)}
    records = [_make_record(item, ann, size, class_index, errors, warn)
               for item, ann, size in inspected if ann is not None and size is not None]
    if errors:
        raise problems_error(errors)
    return Manifest(name=name, classes=list(classes), root=root, images=records)


def _rel(path: Path, base: str) -> str:
    return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()


def _year_dir(root: Path, year: int) -> Path:
    for candidate in (root / f"VOC{year}", root):
        if candidate.name == f"VOC{year}" and candidate.is_dir():
            return candidate
    raise DataError(f"no folder {root / f'VOC{year}'}; give --root the VOCdevkit folder holding VOC{year}/ "
                    f"(Annotations, JPEGImages, ImageSets/Main) or the VOC{year} folder itself")


def _split_ids(year_dir: Path, split: str) -> list[str]:
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{path} does not exist (splits found: {', '.join(have) or 'none'}); "
                        "choose another --split or check --root")
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()  # BOM and CRLF too
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise DataError(f"{path} lists no images; check the file")
    return ids


def prepare_voc(root: str | os.PathLike, years: Sequence[int], split: str, *,
                on_warning: OnNote | None = None, progress: Progress | None = None) -> Manifest:
    """A VOCdevkit split as a manifest with the 20 VOC classes; several years give their union (07+12).

    ``root`` holds ``VOC2007/`` etc. or is the ``VOC<year>`` folder itself. The manifest root is the
    year folder for one year, their common parent for several.
    """
    root = Path(root)
    years = list(dict.fromkeys(int(y) for y in years))
    if not years:
        raise DataError("no --year given; use e.g. --year 2007 or --year 2007,2012")
    year_dirs = [_year_dir(root, y) for y in years]
    base = os.path.commonpath([os.path.abspath(d) for d in year_dirs])
    items = []
    for year_dir in year_dirs:
        for i in dict.fromkeys(_split_ids(year_dir, split)):  # an id in two years: write_manifest refuses
            xml, image = year_dir / "Annotations" / f"{i}.xml", year_dir / "JPEGImages" / f"{i}.jpg"
            items.append(_Item(i, xml, image, _rel(image, base)))
    name = f"voc{'+'.join(map(str, years))}-{split}"
    return _build(name, base, items, list(VOC_CLASSES), on_warning or _log.warning, progress)


def _read_lines(path: Path, what: str) -> list[str]:
    """The non-blank lines of a small text file, stripped; unreadable or empty is a DataError."""
    try:
        # "utf-8-sig": a byte-order mark (Notepad's default) is not part of the first name; CRLF ends lines
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the {what} file {path} ({exc}); give a text file") from None
    if not lines:
        raise DataError(f"the {what} file {path} is empty; give one {what} name per line")
    return lines


def read_class_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines skipped); duplicates and a background entry are errors."""
    names = _read_lines(Path(path), "class")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"class file {path} lists {', '.join(dupes)} more than once; keep one line per class")
    if any(n.lower() in ("__background__", "background") for n in names):
        raise DataError(f"class file {path} lists a background class; leave it out (frcnn adds it itself)")
    return names


def _scan(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """Files under ``folder`` (nested too, hidden ones skipped) by stem; a repeated stem is an error."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give the folder that holds the {what}")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(f"{found[path.stem]} and {path} have the same name {path.stem!r}; images and "
                            "annotations are matched by name, so rename one")
        found[path.stem] = path
    if not found:
        raise DataError(f"no {what} ({'/'.join(suffixes)}) in {folder}; check the folder")
    return found


def _folder_items(images_dir: Path, annotations_dir: Path, split_file: Path | None, warn: OnNote) -> list:
    images = _scan(images_dir, IMAGE_SUFFIXES, "images")
    xmls = _scan(annotations_dir, (".xml",), "VOC XML annotations")
    if split_file is not None:
        suffixes = IMAGE_SUFFIXES + (".xml",)
        keep = [Path(s).stem if Path(s).suffix.lower() in suffixes else s
                for s in (line.split()[0] for line in _read_lines(split_file, "image"))]
        unknown = [s for s in keep if s not in xmls or s not in images]
        if unknown:
            raise DataError(f"split file {split_file} names {len(unknown)} image(s) without both an image "
                            f"and an XML (first: {unknown[0]!r}); fix the list")
        images, xmls = {s: images[s] for s in keep}, {s: xmls[s] for s in keep}
    orphans = sorted(set(images) - set(xmls))
    if orphans:
        warn(f"{len(orphans)} image(s) have no XML in {annotations_dir} and are left out (first: "
             f"{images[orphans[0]]}); an XML without <object> keeps one as an image without objects")
    missing = [f"{xmls[s]}: no image {s}{'/'.join(IMAGE_SUFFIXES)} in {images_dir}; add the image or delete "
               "the annotation" for s in sorted(xmls) if s not in images]
    if missing:
        raise problems_error(missing)
    base = os.path.abspath(images_dir)
    return [_Item(s, xmls[s], images[s], _rel(images[s], base)) for s in sorted(xmls)]


def prepare_folder(images_dir: str | os.PathLike, annotations_dir: str | os.PathLike, *,
                   classes: Sequence[str] | None = None, split_file: str | os.PathLike | None = None,
                   val_fraction: float | None = None, seed: int = 0, name: str | None = None,
                   on_warning: OnNote | None = None, progress: Progress | None = None,
                   ) -> Manifest | tuple[Manifest, Manifest]:
    """A folder of images and VOC-XML files (matched by file stem, flat or nested) as a manifest.

    ``classes=None`` discovers the names from the XML (sorted). ``split_file`` keeps only the stems it
    lists. With ``val_fraction`` returns ``(train, val)``, disjoint and deterministic in ``seed``
    (``split_manifest``). Image paths are relative to ``images_dir``, the manifest root.
    """
    images_dir, annotations_dir = Path(images_dir), Path(annotations_dir)
    warn = on_warning or _log.warning
    items = _folder_items(images_dir, annotations_dir, None if split_file is None else Path(split_file), warn)
    manifest = _build(name or images_dir.name, os.path.abspath(images_dir), items,
                      None if classes is None else list(classes), warn, progress)
    return manifest if val_fraction is None else split_manifest(manifest, val_fraction, seed)
