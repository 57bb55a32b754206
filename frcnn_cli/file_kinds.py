"""What a file is, from its first bytes: for the message of a reader given a file of another kind (a manifest as
``--model``, a proposal file as ``--data``, a checkpoint as ``--config``), which would otherwise call the file
damaged and advise making it again.

``other_kind(path, *expected)`` names the kind of ``path`` when it is recognisably one of ``KINDS`` and none of
``expected`` (a reader's own kind is never reported: a damaged file of it keeps the reader's own message); None
for a file of an expected or of no recognisable kind. Only the first 4 KiB are read (a zip archive's entry names
from its end), so a 100 MB file costs nothing; nothing here imports torch or h5py.

``read_text`` is how every reader of a user's text (manifests, COCO and proposal JSON, CSV, class and split lists,
TOML configs) decodes it: UTF-8, with a byte-order mark honoured, so that a file Notepad saved (UTF-8 with a mark)
or Windows PowerShell 5 wrote with ``>`` (UTF-16 with a mark) reads as what it says.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import zipfile
from pathlib import Path

_HEAD = 4096

# kind -> how a message names it, with the command that takes such a file
KINDS = {
    "manifest": "a frcnn manifest (the --data file of training, eval and dump-proposals)",
    "coco": "a COCO annotation file (frcnn prepare coco --annotations makes a manifest of it)",
    "json": "a JSON file",
    "hdf5": "an HDF5 file (frcnn's proposal files are HDF5: train-detector --proposals, eval --proposals)",
    "checkpoint": "a PyTorch checkpoint or weights file (--model, --init)",
    "torchscript": "a TorchScript model (frcnn export; detect, eval and bench take it as --model)",
    "mat": "a MATLAB MAT-file (external proposals: frcnn prepare proposals --from)",
    "image": "an image (frcnn detect takes images)",
    "xml": "an XML file (VOC annotations: frcnn prepare folder --annotations)",
}

_MAGIC = ((b"\x89HDF\r\n\x1a\n", "hdf5"), (b"MATLAB 5.0 MAT-file", "mat"), (b"MATLAB 7.3 MAT-file", "mat"),
          (b"\xff\xd8\xff", "image"), (b"\x89PNG\r\n\x1a\n", "image"), (b"GIF87a", "image"), (b"GIF89a", "image"))
_TORCHSCRIPT_MARKS = ("/code/", "/constants.pkl")


def _zip_kind(path: Path) -> str | None:
    with contextlib.suppress(zipfile.BadZipFile, OSError, ValueError):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(mark in f"/{name}" for name in names for mark in _TORCHSCRIPT_MARKS):
            return "torchscript"
        if any(name.endswith("data.pkl") for name in names):
            return "checkpoint"
    return None


def _text_kind(head: bytes) -> str | None:
    text = head.decode("utf-8", "ignore").lstrip("\ufeff \t\r\n")
    if text.startswith("<"):
        return "xml" if text.startswith(("<?xml", "<annotation")) else None
    if not text.startswith(("{", "[")):
        return None
    if '"frcnn-manifest"' in text:
        return "manifest"
    if any(f'"{key}"' in text for key in ("annotations", "categories", "licenses", "info")):
        return "coco"
    return "json"


def sniff(path: str | os.PathLike) -> str | None:
    """The key in ``KINDS`` of the file ``path`` by its first bytes, or None (unknown, empty or unreadable)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    return _text_kind(head)


def other_kind(path: str | os.PathLike, *expected: str) -> str | None:
    """How to name the kind of ``path`` in a message, when it is a recognisable kind none of ``expected``."""
    kind = sniff(path)
    return KINDS[kind] if kind is not None and kind not in expected else None


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32's marks first: UTF-32-LE's starts with UTF-16-LE's


def decode_text(raw: bytes) -> str:
    """``raw`` as text: UTF-16 or UTF-32 where a byte-order mark says so, else UTF-8 (a mark dropped); a
    ``UnicodeDecodeError`` for bytes that are none of them."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            return raw.decode(codec)
    return raw.decode("utf-8-sig")


def read_text(path: str | os.PathLike) -> str:
    """The text of the file ``path`` (``decode_text``); ``OSError`` and ``UnicodeDecodeError`` pass through."""
    with open(path, "rb") as f:
        return decode_text(f.read())
