"""The ``images`` of a COCO-format file: each entry checked, and each image file's header read.

An entry is named by its id everywhere ("image 397133"); one without an integer id by its position
("the image at position 3 of "images""). Two entries naming the same file (after normalising the path)
are an error, as two images of one name are in ``prepare folder``. Every file is opened (a header read:
Pillow decodes no pixel until asked) on a few threads, so that a missing file, a file that is not an
image, and a ``width``/``height`` that disagree with the file are found now, not as "the file changed since
frcnn prepare" in training.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..callbacks import Progress
from ..errors import DataError
from .decode import open_image
from .manifest import MAX_SIDE

PROGRESS_EVERY = 1024  # images checked between two progress calls
MISSING = "missing"  # what image_sizes gives for a file that is not there (or not a regular file)


def is_int(v: Any) -> bool:
    """An integer that fits int64 (ids, sizes)."""
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def image_label(img: Any, position: int) -> str:
    """How messages name an entry of ``images``: by its id, or by its position when it has none."""
    if isinstance(img, dict) and is_int(img.get("id")):
        return f"image {img['id']}"
    return f"the image at position {position} of \"images\" (it has no integer \"id\")"


def _side_problem(img: dict, key: str) -> str | None:
    if key not in img:
        return f"has no \"{key}\" (its {key} in pixels)"
    value = img[key]
    if not (is_int(value) and 0 < value <= MAX_SIDE):
        return f"\"{key}\" {value!r} is not a whole number of pixels from 1 to {MAX_SIDE}"
    return None


def image_problem(img: Any) -> str | None:
    """What is wrong with one entry of ``images`` (its keys only), or None."""
    if not isinstance(img, dict) or not is_int(img.get("id")):
        return "has no integer \"id\" (of at most 64 bits)"
    name = img.get("file_name")
    if not isinstance(name, str) or not name or "\x00" in name:
        return "\"file_name\" is missing or empty"
    if not os.path.isabs(name) and os.path.normpath(name).split(os.sep)[0] == os.pardir:
        return f"file_name {name!r} leaves the image folder with '..'; use a path inside it"
    return _side_problem(img, "width") or _side_problem(img, "height")


def good_images(data: dict, path: Path, problems: list[str]) -> list[dict]:
    """The well-formed entries of ``images``; a bad one, a repeated id or a repeated file is a problem."""
    seen: set[int] = set()
    files: dict[str, int] = {}
    images = []
    for i, img in enumerate(data["images"]):
        problem = image_problem(img)
        if problem is None and img["id"] in seen:
            problem = "its id appears twice; give every image its own id"
        if problem is None:
            other = files.get(os.path.normpath(img["file_name"]))
            if other is not None:
                problem = (f"names the same file {img['file_name']!r} as image {other}; an image is listed once "
                           "(its annotations all point to that one entry): delete one entry")
        if problem is not None:
            problems.append(f"{path}, {image_label(img, i)}: {problem}; fix the entry")
            continue
        seen.add(img["id"])
        files[os.path.normpath(img["file_name"])] = img["id"]
        images.append(img)
    if not data["images"]:
        problems.append(f"{path}: \"images\" is empty; nothing to train on")
    return images


def _header_size(path: str) -> tuple[int, int] | str:
    """``(width, height)`` from the file's header, ``MISSING``, or what is wrong with it."""
    if not os.path.isfile(path):
        return MISSING
    try:
        with open_image(path, "shrink it or delete its entry") as img:
            return int(img.size[0]), int(img.size[1])
    except DataError as exc:  # over frcnn's size limit
        return str(exc)
    except (OSError, SyntaxError, ValueError) as exc:
        return f"{path}: not a readable image ({exc}); replace the file or delete its entry"


def image_sizes(images: list[dict], root: Path, progress: Progress | None) -> list[tuple[int, int] | str]:
    """For each image, the size in its file's header or what is wrong (``MISSING``, a message)."""
    chunks = [[str(root / img["file_name"]) for img in images[i:i + PROGRESS_EVERY]]
              for i in range(0, len(images), PROGRESS_EVERY)]
    sizes: list[tuple[int, int] | str] = []
    with ThreadPoolExecutor(max_workers=8) as pool:  # threads: a network filesystem's latency overlaps
        for found in pool.map(lambda names: [_header_size(n) for n in names], chunks):
            sizes.extend(found)
            if progress is not None:
                progress(len(sizes), len(images))
    return sizes


def windows_separators(images: list[dict], root: Path) -> None:
    """``file_name``s written on Windows (``train\\0001.jpg``, as some labelling tools export them) read with
    ``/``: where the name as given is no file here but the name with ``/`` for ``\\`` is, the entry takes that."""
    if os.sep != "/":
        return  # Windows reads either
    for img in images:
        name, posix = img["file_name"], img["file_name"].replace("\\", "/")
        if posix == name or os.path.normpath(posix).split("/")[0] == os.pardir:  # never out of the folder
            continue
        if not (root / name).exists() and (root / posix).is_file():
            img["file_name"] = posix


def check_image_files(images: list[dict], root: Path, path: Path, problems: list[str],
                      progress: Progress | None) -> None:
    """A problem for every image whose file is missing, unreadable or of another size than its entry says
    (a ``file_name`` with Windows separators read with ``/`` first: ``windows_separators``)."""
    windows_separators(images, root)
    sizes = image_sizes(images, root, progress)
    missing = [img for img, size in zip(images, sizes) if size == MISSING]
    if missing and len(missing) == len(images):
        problems.append(f"none of the {len(images)} images of {path} is in {root} (first: "
                        f"{root / missing[0]['file_name']}); give --images the folder their file_name is relative to")
        return
    for img, size in zip(images, sizes):
        if size == MISSING:
            problems.append(f"{root / img['file_name']}: the image (id {img['id']} in {path}) is missing; add it, "
                            "or delete its entry")
        elif isinstance(size, str):
            problems.append(size)
        elif size != (img["width"], img["height"]):
            problems.append(f"{path}, image {img['id']}: width/height say {img['width']}x{img['height']} but "
                            f"{root / img['file_name']} is {size[0]}x{size[1]}; fix the entry (and its boxes, if "
                            "the image was resized or rotated after it was annotated)")
