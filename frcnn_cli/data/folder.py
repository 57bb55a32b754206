"""A folder of images and VOC-XML files (flat or nested, matched by file name) to a manifest:
``frcnn prepare folder``. The XML, the images and the manifest are handled as for a VOCdevkit (``data/voc.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..callbacks import OnNote, Progress
from ..errors import DataError, problems_error
from .manifest import Manifest, split_manifest
from .name_lists import read_lines
from .voc import IMAGE_SUFFIXES, Item, build_manifest, relative_path

_log = logging.getLogger(__name__)


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


def _split_name(line: str, known: dict[str, Path]) -> str:
    """The image a split file's line names: the whole line when it names one (names may hold spaces), else
    its first word (a devkit list's ``000005 -1``); a file suffix is dropped."""
    def stem(name: str) -> str:
        return Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES + (".xml",) else name

    return stem(line) if stem(line) in known else stem(line.split()[0])


def _folder_items(images_dir: Path, annotations_dir: Path, split_file: Path | None, warn: OnNote) -> list:
    images = _scan(images_dir, IMAGE_SUFFIXES, "images")
    xmls = _scan(annotations_dir, (".xml",), "VOC XML annotations")
    if split_file is not None:
        keep = [_split_name(line, xmls) for line in read_lines(split_file, "split file", "image")]
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
    return [Item(s, xmls[s], images[s], relative_path(images[s], base)) for s in sorted(xmls)]


def prepare_folder(images_dir: str | os.PathLike, annotations_dir: str | os.PathLike, *,
                   classes: Sequence[str] | None = None, split_file: str | os.PathLike | None = None,
                   val_fraction: float | None = None, seed: int = 0, name: str | None = None,
                   on_warning: OnNote | None = None, progress: Progress | None = None,
                   skip_unreadable: bool = False) -> Manifest | tuple[Manifest, Manifest]:
    """A folder of images and VOC-XML files (matched by file stem, flat or nested) as a manifest.

    ``classes=None`` discovers the names from the XML (sorted). ``split_file`` keeps only the stems it
    lists. ``skip_unreadable`` leaves out the images that cannot be decoded, with their XML (one warning
    lists them) instead of refusing the set. With ``val_fraction`` returns ``(train, val)``, disjoint and
    deterministic in ``seed`` (``split_manifest``). Image paths are relative to ``images_dir``, the manifest root.
    """
    images_dir, annotations_dir = Path(images_dir), Path(annotations_dir)
    warn = on_warning or _log.warning
    items = _folder_items(images_dir, annotations_dir, None if split_file is None else Path(split_file), warn)
    manifest = build_manifest(name or images_dir.name, os.path.abspath(images_dir), items,
                              None if classes is None else list(classes), warn, progress,
                              skip_unreadable=skip_unreadable)
    return manifest if val_fraction is None else split_manifest(manifest, val_fraction, seed)
