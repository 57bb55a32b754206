"""Class names and the small text files of names a user writes (class lists, split files).

One rule for every source of class names (``--classes FILE``, the names found in VOC XML, a COCO file's
categories): a name is not empty and is not the background class, which frcnn adds itself as label 0
(``background`` / ``__background__`` in any case, as py-faster-rcnn names it).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from ..file_kinds import other_kind, read_text

BACKGROUND_NAMES = ("background", "__background__")


def is_background(name: str) -> bool:
    """Whether ``name`` names the background class (which frcnn adds itself)."""
    return name.strip().lower() in BACKGROUND_NAMES


def distinct_names(names: object) -> bool:
    """Whether ``names`` is a class list a model can have: one or more distinct, non-empty names (checkpoints and
    exported models; a manifest may list none)."""
    return (isinstance(names, list) and bool(names) and all(isinstance(c, str) and c for c in names)
            and len(set(names)) == len(names))


BACKGROUND_ADVICE = "frcnn adds the background class itself (label 0), so a class of that name would be a second one"


def read_lines(path: Path, what: str, item: str) -> list[str]:
    """The non-blank lines of a small text file (``what``: "class file", "split file"; a line names one ``item``),
    stripped; unreadable, empty or a file of another kind (a manifest, a checkpoint) is a DataError."""
    kind = other_kind(path, "json")  # a list of names may start with "[" or "{"; a manifest or a COCO file does not
    if kind is not None:
        raise DataError(f"the {what} {path} is {kind}, not a text file; give one {item} name per line")
    try:
        # a byte-order mark (Notepad's UTF-8, PowerShell's UTF-16) is not part of the first name; CRLF ends lines
        lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the {what} {path} ({exc}); give a text file, one {item} name per line"
                        ) from None
    if not lines:
        raise DataError(f"the {what} {path} is empty; give one {item} name per line")
    return lines


def read_class_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines skipped); duplicates and a background entry are errors."""
    names = read_lines(Path(path), "class file", "class")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"class file {path} lists {', '.join(dupes)} more than once; keep one line per class")
    background = next((n for n in names if is_background(n)), None)
    if background is not None:
        raise DataError(f"class file {path} lists a background class {background!r}; {BACKGROUND_ADVICE}: leave "
                        "it out")
    return names
