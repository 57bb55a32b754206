"""VOC layouts (a VOCdevkit split; the items of ``data/folder.py``) to manifests: each XML parsed
(``data/voc_xml.py``), each image decoded, boxes converted, every problem collected.

Coordinates: VOC corners are 1-based inclusive pixels, so ``xmin..xmax`` becomes the 0-based continuous
``xmin - 1 .. xmax`` (docs/architecture.md); float coordinates are taken as they are. A box may stick
out of the image by at most ``CLIP_TOLERANCE`` (5) pixels, e.g. a 0-based annotation with xmin = 0 that
becomes x1 = -1: it is clipped to the image with a warning. Further out it is an error. ``xmax < xmin``
is an error (``xmax == xmin`` is a valid one-pixel-wide box). ``difficult``/``truncated`` default to 0.

Every image is decoded (JPEGs at 1/8 scale, which still reads every byte) so that unreadable and
truncated files are found now, not hours into training (``skip_unreadable``: such images are left out with
their XML, and listed in one warning). All problems are collected and reported in one ``DataError``. An
image id holding whitespace is a warning (the devkit's result files of ``eval --out`` hold it %-escaped); a
class named ``background`` is refused, as everywhere (``data/name_lists.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..callbacks import OnNote, Progress
from ..errors import DataError, problems_error
from ..file_kinds import read_text
from .decode import open_image
from .manifest import ImageRecord, Manifest, id_has_whitespace
from .manifest import PrepareReport as PrepareReport  # re-exported: the prepare summary
from .name_lists import BACKGROUND_ADVICE, is_background
from .voc_xml import VocAnnotation, parse_annotation

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CLIP_TOLERANCE = 5.0  # pixels a box may reach outside the image and still be clipped (with a warning)
MAX_SHOWN = 10  # images listed in one warning

_log = logging.getLogger(__name__)


@dataclass
class Item:
    """One image of a layout: its id, its XML, its file, and its path under the manifest root."""

    id: str
    xml: Path
    image: Path
    rel: str  # image path relative to the manifest root, with forward slashes


@dataclass
class _Decoded:
    """What decoding one image found: its size, or the problem (``unreadable``: the file is there but
    cannot be decoded, which ``--skip-unreadable`` leaves out)."""

    size: tuple[int, int] | None
    problem: str | None = None
    unreadable: bool = False


def _image_size(path: Path) -> _Decoded:
    """The size of a decodable image, or what is wrong with the file."""
    if not path.is_file():
        return _Decoded(None, f"{path}: the image is missing; add it or delete its annotation")
    try:
        with open_image(path, "shrink it (or delete it and its XML) and run frcnn prepare again") as img:
            size = img.size
            img.draft(img.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))  # JPEG: reads every byte
            img.load()
    except DataError as exc:  # over frcnn's size limit
        return _Decoded(None, str(exc))
    except (OSError, SyntaxError, ValueError) as exc:
        return _Decoded(None, f"{path}: unreadable or truncated image ({exc}); replace it or delete it and its "
                              "XML (or leave out every unreadable image with --skip-unreadable)", unreadable=True)
    return _Decoded((int(size[0]), int(size[1])))


def _inspect_all(items: list[Item], errors: list[str], progress: Progress | None,
                 skipped: list[Item] | None = None) -> list[tuple]:
    """``(item, annotation, size)`` for every item, parsed and decoded on a few threads, in order. With a
    ``skipped`` list, an unreadable image goes there with its XML (its problems unreported) instead."""
    out = []
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        results = pool.map(lambda it: (parse_annotation(it.xml), _image_size(it.image)), items)
        for done, (item, ((ann, problems), decoded)) in enumerate(zip(items, results), start=1):
            if decoded.unreadable and skipped is not None:
                skipped.append(item)
            else:
                errors.extend(problems + ([decoded.problem] if decoded.problem else []))
                out.append((item, ann, decoded.size))
            if progress is not None:
                progress(done, len(items))
    return out


def unreadable_warning(paths: list[Path], what: str = "image(s) left out with their XML") -> str:
    """The one warning of ``--skip-unreadable``: how many images were left out, the first ``MAX_SHOWN``."""
    listed = ", ".join(str(path) for path in paths[:MAX_SHOWN])
    more = f" and {len(paths) - MAX_SHOWN} more" if len(paths) > MAX_SHOWN else ""
    return (f"{len(paths)} unreadable {what} (--skip-unreadable): {listed}{more}; replace them and prepare "
            "again to use them")


def _whitespace_warning(records: list[ImageRecord]) -> str | None:
    spaced = [rec for rec in records if id_has_whitespace(rec.id)]
    if not spaced:
        return None
    return (f"{len(spaced)} image id(s) hold whitespace (first: {spaced[0].id!r}, {spaced[0].path}): the "
            "devkit's result files are separated by spaces, so frcnn eval --out writes these ids %-escaped "
            "('IMG 0001' as 'IMG%200001'; frcnn reads them back); rename the files (e.g. spaces to '_') and "
            "prepare again if other VOC tools must read the result files")


def _class_problems(inspected: list[tuple], classes: list[str]) -> list[str]:
    """The background class among the names found in the XML: one problem naming the first file."""
    for item, ann, _ in inspected:
        for j, obj in enumerate(ann.objects if ann is not None else [], start=1):
            if is_background(obj.name) and obj.name in classes:
                return [f"{item.xml}, object {j}: class {obj.name!r} is the background class; {BACKGROUND_ADVICE}: "
                        "delete the object (or rename its class)"]
    return []


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


def _make_record(item: Item, ann: VocAnnotation, size: tuple[int, int], class_index: dict[str, int],
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


def build_manifest(name: str, root: str, items: list[Item], classes: list[str] | None, warn: OnNote,
                   progress: Progress | None, *, skip_unreadable: bool = False) -> Manifest:
    """Parse, decode and validate every item; ``classes=None`` discovers them (sorted) from the XML;
    ``skip_unreadable`` leaves out the images that cannot be decoded, with their XML (one warning)."""
    errors: list[str] = []
    skipped: list[Item] | None = [] if skip_unreadable else None
    inspected = _inspect_all(items, errors, progress, skipped)
    if skipped and not inspected:
        raise DataError(f"none of the {len(items)} images can be decoded (first: {skipped[0].image}); check the "
                        "image folder")
    if classes is None:
        classes = sorted({obj.name for _, ann, _ in inspected if ann is not None for obj in ann.objects})
        errors.extend(_class_problems(inspected, classes))
        if not classes and not errors:
            errors.append(f"no <object> in any of the {len(inspected)} annotations; nothing to train on")
    class_index = {c: i for i, c in enumerate(classes)}
    records = [_make_record(item, ann, size, class_index, errors, warn)
               for item, ann, size in inspected if ann is not None and size is not None]
    if errors:
        raise problems_error(errors)
    for message in (unreadable_warning([item.image for item in skipped]) if skipped else None,
                    _whitespace_warning(records)):
        if message is not None:
            warn(message)
    return Manifest(name=name, classes=list(classes), root=root, images=records)


def relative_path(path: Path, base: str) -> str:
    return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()


def _voc_layout(root: Path) -> Path | None:
    """``root``, or the one folder in it, that has VOC's layout (``Annotations/``, ``JPEGImages/``)."""
    def has_layout(folder: Path) -> bool:
        return (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir()

    if has_layout(root):
        return root
    inside = sorted(p for p in root.iterdir() if p.is_dir() and has_layout(p)) if root.is_dir() else []
    return inside[0] if len(inside) == 1 else None


def _year_dir(root: Path, year: int, split: str) -> Path:
    for candidate in (root / f"VOC{year}", root):
        if candidate.name == f"VOC{year}" and candidate.is_dir():
            return candidate
    raise DataError(_no_year_message(root, year, split))


def _no_year_message(root: Path, year: int, split: str) -> str:
    """Why ``root`` holds no ``VOC<year>``, and what to do: another ``--year``, or ``prepare folder`` for a
    folder of VOC's layout under another name (BCCD, a labelling tool's export)."""
    message = (f"no folder {root / f'VOC{year}'}; give --root the VOCdevkit folder holding VOC{year}/ "
               f"(Annotations, JPEGImages, ImageSets/Main) or the VOC{year} folder itself")
    others = sorted(p.name for p in root.glob("VOC20[0-9][0-9]") if p.is_dir()) if root.is_dir() else []
    layout = _voc_layout(root)
    if others:
        message += f" (found {', '.join(others)}: --year {','.join(name[3:] for name in others)})"
    elif layout is not None:
        message += (f". {layout} has VOC's layout under another name (prepare voc reads the PASCAL VOC 2007 and "
                    f"2012 sets, with their 20 classes); prepare it with frcnn prepare folder --images "
                    f"{layout / 'JPEGImages'} --annotations {layout / 'Annotations'} --split-file "
                    f"{layout / 'ImageSets' / 'Main' / f'{split}.txt'}")
    return message


def _split_ids(year_dir: Path, split: str) -> list[str]:
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{path} does not exist (splits found: {', '.join(have) or 'none'}); "
                        "choose another --split or check --root")
    try:
        lines = read_text(path).splitlines()  # a byte-order mark (UTF-8, UTF-16) and CRLF too
    except UnicodeDecodeError:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise DataError(f"{path} lists no images; check the file")
    return ids


def year_folders(root: str | os.PathLike, years: Sequence[int], split: str, *,
                 example: str) -> tuple[list[int], list[Path], str]:
    """The years asked for (each once, in order), their ``VOC<year>`` folders holding ``split``, and the folder
    the manifest's paths are relative to (the year folder, or the years' common parent); no year is a
    ``DataError`` that shows ``example``."""
    years = list(dict.fromkeys(int(y) for y in years))
    if not years:
        raise DataError(f"no --year given; use e.g. {example}")
    year_dirs = [_year_dir(Path(root), year, split) for year in years]
    return years, year_dirs, os.path.commonpath([os.path.abspath(d) for d in year_dirs])


def prepare_voc(root: str | os.PathLike, years: Sequence[int], split: str, *, on_warning: OnNote | None = None,
                progress: Progress | None = None, skip_unreadable: bool = False) -> Manifest:
    """A VOCdevkit split as a manifest with the 20 VOC classes; several years give their union (07+12).

    ``root`` holds ``VOC2007/`` etc. or is the ``VOC<year>`` folder itself. The manifest root is the
    year folder for one year, their common parent for several. ``skip_unreadable`` as in ``build_manifest``.
    """
    years, year_dirs, base = year_folders(root, years, split, example="--year 2007 or --year 2007,2012")
    items = []
    for year_dir in year_dirs:
        for i in dict.fromkeys(_split_ids(year_dir, split)):  # an id in two years: write_manifest refuses
            xml, image = year_dir / "Annotations" / f"{i}.xml", year_dir / "JPEGImages" / f"{i}.jpg"
            items.append(Item(i, xml, image, relative_path(image, base)))
    name = f"voc{'+'.join(map(str, years))}-{split}"
    return build_manifest(name, base, items, list(VOC_CLASSES), on_warning or _log.warning, progress,
                          skip_unreadable=skip_unreadable)
