"""The protocol-buffer wire format, read by hand: ``convert/caffe_proto.py`` reads ``.caffemodel`` files with it,
``export/integrity.py`` an exported ONNX model's graph (to hash it and count its classes).

Five rules (a key varint ``field << 3 | wire type``, then a varint, 8 bytes, a length and that many bytes, or 4
bytes) need no ``protobuf`` package, no compiled schema, and leave large byte fields (weights) where they lie in
the buffer: a field is given as its ``(start, end)`` offsets.
"""

from __future__ import annotations

from collections.abc import Iterator


class WireError(Exception):
    """Bytes that are not a well-formed protocol-buffer message: ``what`` went wrong at byte ``offset``."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(what)
        self.what, self.offset = what, offset


def varint(buf, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``buf[pos]`` (ending before ``end``) and the position after it."""
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("a number runs past the end of its message", pos)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("a number longer than 10 bytes", pos)


def fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """``(field number, wire type, value)`` of a message in ``buf[start:end]``: the number of a varint, the
    ``(start, end)`` bytes of any other field. Groups (wire types 3 and 4, long deprecated) are an error."""
    pos = start
    while pos < end:
        key_at = pos
        key, pos = varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError("a field numbered 0", key_at)
        if wire == 0:
            value, pos = varint(buf, pos, end)
            yield field, wire, value
            continue
        if wire == 2:
            length, pos = varint(buf, pos, end)
        elif wire in (1, 5):
            length = 8 if wire == 1 else 4
        else:
            raise WireError(f"wire type {wire} (a group), which neither caffe.proto nor onnx.proto uses", key_at)
        if pos + length > end:
            raise WireError(f"field {field} runs past the end of its message", key_at)
        yield field, wire, (pos, pos + length)
        pos += length


def length_delimited(field: int, payload: bytes) -> bytes:
    """The bytes of field ``field`` (wire type 2) holding ``payload``: appended to a message, it adds that field."""
    return _varint_bytes(field << 3 | 2) + _varint_bytes(len(payload)) + payload


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
