"""What an output path may be, before anything is written to it: names the file system allows, hidden helper
names (temporaries, lock files) that stay within that length, and outputs that must not be replaced.

- ``name_max``: the longest file name (in bytes) a folder's file system allows (255 on ext4, XFS, tmpfs, NTFS).
- ``short_stem``: a name as it appears inside a hidden helper name (``.NAME.lock``, ``.NAME.pid….tmp``): the name
  itself when the helper name fits, else its first bytes and a hash of the whole, so that every name the file
  system allows has helpers that fit, and each name keeps its own.
- ``fit_name``: a name made from another (``photo.gif`` -> ``photo.gif.png``, ``a (2).jpg``) cut to fit, its suffix
  and tag kept.
- ``special_kind``: what an existing output is when it is neither a regular file nor a folder (a device, a FIFO,
  a socket): frcnn replaces outputs by renaming a new file over them, which would replace such a file.
- ``dangling_link``: the symbolic link (and its missing target) on the way to an output, when there is one.
- ``real_output``: a file output that is a symbolic link, resolved: the link's target is written, the link stays.
- ``input_clash``: an output that is one of the command's own input files (``prepare coco --out`` the COCO file,
  ``dump-proposals --out`` the manifest, ``eval --report`` the manifest): writing it would replace the input.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import FrcnnError

DEFAULT_NAME_MAX = 255
_HASH_CHARS = 10


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name in bytes that the file system of ``folder`` (or of its nearest existing parent)
    allows; 255 where the system does not say."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no limit reported
        return DEFAULT_NAME_MAX


def name_bytes(name: str) -> int:
    """The length of ``name`` on disk, in bytes."""
    return len(os.fsencode(name))


def _cut(name: str, size: int) -> str:
    """The longest start of ``name`` of at most ``size`` bytes made of whole characters (bytes that are not
    UTF-8 are left out)."""
    return os.fsencode(name)[:max(0, size)].decode("utf-8", "ignore")


def short_stem(name: str, reserve: int, folder: str | os.PathLike) -> str:
    """``name`` for a helper name that adds ``reserve`` bytes to it in ``folder``: ``name`` itself when the result
    fits the file system's limit, else ``<first bytes>~<10 hex digits of its SHA-256>`` of the allowed length."""
    limit = name_max(folder) - reserve
    if name_bytes(name) <= limit:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:_HASH_CHARS]
    return f"{_cut(name, limit - _HASH_CHARS - 1)}~{digest}"


def fit_name(name: str, folder: str | os.PathLike, tag: str = "") -> str:
    """``name`` with ``tag`` before its last suffix (``a.jpg``, `` (2)`` -> ``a (2).jpg``), the part before the tag
    cut so that the whole fits the file system's limit in ``folder``; unchanged when it fits."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    suffix = dot + suffix if stem != name else ""
    limit = name_max(folder) - name_bytes(tag) - name_bytes(suffix)
    if limit < 1:  # a suffix as long as a name: cut the whole
        return _cut(stem + tag + suffix, name_max(folder))
    return (stem if name_bytes(stem) <= limit else _cut(stem, limit)) + tag + suffix


def check_name_length(path: Path, option: str) -> None:
    """A ``FrcnnError`` when a part of ``path`` is longer than its file system allows (before anything looks at
    the path: the system refuses even to tell whether such a name exists)."""
    limit = name_max(path.parent)
    for part in (*Path(path).parts[:-1], path.name):
        size = name_bytes(part)
        if size > limit:
            which = "its name" if part == path.name else f"the folder name {part}"
            raise FrcnnError(f"cannot write {path}: {which} is {size} bytes long, and this file system allows "
                             f"{limit}; give {option} a shorter name")


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def special_kind(path: str | os.PathLike) -> str | None:
    """``"a character device"``, ``"a named pipe (FIFO)"``, … when ``path`` (links followed) exists and is neither a
    regular file nor a folder; None otherwise."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((kind for test, kind in _KINDS if test(mode)), None)


def not_regular(path: Path, kind: str, option: str) -> FrcnnError:
    """The error of an output that exists as a device, a FIFO or a socket: it is never replaced."""
    advice = f"choose another {option}" if "device" in kind else f"remove it or choose another {option}"
    return FrcnnError(f"cannot write {path}: it is {kind}, not a regular file, and frcnn writes an output by "
                      f"renaming a finished file over it, which would replace it; {advice}")


def dangling_link(path: str | os.PathLike) -> tuple[Path, str] | None:
    """``(link, target)`` of the first symbolic link on the way to ``path`` (``path`` itself included) whose
    target does not exist; None when there is none."""
    path = Path(os.path.abspath(path))
    for part in (*reversed(path.parents), path):
        try:
            if stat.S_ISLNK(os.lstat(part).st_mode) and not part.exists():
                return part, os.readlink(part)
        except OSError:  # missing (or not a folder, or a name too long): nothing further can be a link
            return None
    return None


def link_error(path: Path, option: str, *, folder: bool) -> FrcnnError | None:
    """The error of an output under (or being) a dangling symbolic link: it names the link and its target."""
    found = dangling_link(path)
    if found is None:
        return None
    link, target = found
    what = f"cannot {'create' if folder else 'write'} {path}: "
    where = "it is" if link == Path(os.path.abspath(path)) else f"{link} is"
    return FrcnnError(f"{what}{where} a symbolic link to {target}, which does not exist; create {target}, "
                      f"remove the link, or choose another {option}")


def real_output(path: Path) -> Path:
    """``path``, or the file it links to when it is a symbolic link (links are written through, never replaced)."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def is_name_too_long(exc: OSError) -> bool:
    return exc.errno == errno.ENAMETOOLONG


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are one existing file (links, ``..`` and hard links seen through)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def input_clash(path: Path, inputs: Mapping[str, str | os.PathLike | Sequence | None],
                option: str) -> FrcnnError | None:
    """The error of an output ``path`` that is one of the command's input files (``inputs``: option -> a path, a
    list of paths or None): the atomic write would replace the input by the output; None when it is none of them."""
    for name, given in inputs.items():
        for item in given if isinstance(given, (list, tuple)) else (given,):
            if item is not None and same_file(path, item):
                return FrcnnError(f"cannot write {path}: it is also an input of this command ({name}), which "
                                  f"{option} would replace; choose another {option}")
    return None
