"""One VOC XML annotation file: parsed safely, its problems collected.

XML is parsed with ElementTree after an expat pass that refuses DOCTYPE and ENTITY declarations, so entity
expansion ("billion laughs") and external entities are never reached. A problem of one object drops that
object (and is reported), not the file. ``difficult``/``truncated`` default to 0; ``<size>`` may be absent.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from ..errors import DataError, problems_error


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


def parse_annotation(path: Path) -> tuple[VocAnnotation | None, list[str]]:
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
    ann, problems = parse_annotation(Path(path))
    if problems or ann is None:
        raise problems_error(problems)
    return ann
