"""Finding image files (``detect``, ``bench``): files as given, folders searched recursively, lazily.

``ImageSource`` checks every argument when made (a missing path, or a folder without images, is a ``DataError``
naming it) and then yields the images one directory at a time: a folder of a million photos is never listed
whole, only the directory being read. The order is fixed: as the arguments; within a folder by path (each
directory's entries sorted by name, a subfolder's images where its name sorts), which is ``sorted()`` of the
paths. Each image has a *key*, ``(argument number, *its path's parts below the argument)``, that sorts in
that order (``detect``'s resume file is merged by it). Hidden files and folders (``.name``) and the folder
``exclude`` (the output folder) are skipped, as are symbolic links to folders; an image that an earlier
argument already yields (the same file named twice, a file inside a folder named before it) comes once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..output_paths import special_kind

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class FoundImage:
    """An image file: ``path`` as found (the argument joined with the parts below it) and its order ``key``."""

    key: tuple
    path: Path


def walk_images(folder: Path, key: tuple, exclude: Path | None) -> Iterator[FoundImage]:
    """The images under ``folder`` in path order, keys ``key + parts below folder``; one directory listed at a
    time (an unreadable subfolder is skipped, as ``os.walk`` does)."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(((e.name, e.is_dir() and not e.is_symlink(), e.is_dir()) for e in listing))
    except OSError:
        return
    for name, walk, is_dir in entries:
        if name.startswith("."):
            continue
        if walk:
            sub = folder / name
            if exclude is None or sub.resolve() != exclude:
                yield from walk_images(sub, (*key, name), exclude)
        elif not is_dir and is_image_name(name):
            yield FoundImage((*key, name), folder / name)


class ImageSource:
    """The images of ``paths`` (files and folders), checked now and found lazily (module docstring). Iterate it
    once; ``roots`` are the arguments, absolute, in order (``detect`` names its drawings after them)."""

    def __init__(self, paths: Sequence[str | os.PathLike], *, exclude: str | os.PathLike | None = None) -> None:
        if not paths:
            raise DataError("no images were given; name image files or folders")
        self._exclude = Path(exclude).resolve() if exclude is not None else None
        self.roots = [Path(os.path.abspath(p)) for p in paths]
        self._parts: list[Iterator[FoundImage]] = []
        for j, raw in enumerate(paths):
            path = Path(raw)
            if path.is_dir():
                found = walk_images(path, (j,), self._exclude)
                first = next(found, None)
                if first is None:
                    raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); give image "
                                    "files or a folder that contains some")
                self._parts.append(_chain(first, found))
            elif path.is_file() or special_kind(path) is not None:  # a pipe: load_image says what it is
                self._parts.append(iter([FoundImage((j,), path)]))
            else:
                raise DataError(f"{path} does not exist; give image files or folders of images")

    def __iter__(self) -> Iterator[FoundImage]:
        files: set[Path] = set()  # resolved file arguments so far (a manifest's images: many)
        folders: list[Path] = []  # resolved folder arguments so far
        for j, images in enumerate(self._parts):
            for image in images:
                if not (files or folders) or not self._yielded_before(image.path.resolve(), files, folders):
                    yield image
            root = self.roots[j].resolve()
            (folders.append if root.is_dir() else files.add)(root)

    def _yielded_before(self, resolved: Path, files: set[Path], folders: list[Path]) -> bool:
        if resolved in files:
            return True
        for root in folders:
            try:
                parts = resolved.relative_to(root).parts
            except ValueError:
                continue
            dirs = [root.joinpath(*parts[:i]) for i in range(1, len(parts))]
            if (parts and is_image_name(parts[-1]) and not any(p.startswith(".") for p in parts)
                    and (self._exclude is None or self._exclude not in dirs)):
                return True
        return False


def _chain(first: FoundImage, rest: Iterator[FoundImage]) -> Iterator[FoundImage]:
    yield first
    yield from rest


def find_images(paths: Sequence[str | os.PathLike], *, exclude: str | os.PathLike | None = None) -> list[Path]:
    """Every image of ``ImageSource(paths, exclude=exclude)`` as a list (``bench``; ``detect`` streams them)."""
    return [image.path for image in ImageSource(paths, exclude=exclude)]
