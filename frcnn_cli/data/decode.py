"""Opening image files under frcnn's own size limit, not Pillow's decompression-bomb limit.

Pillow refuses any image over 2 x 89,478,485 pixels as a possible "decompression bomb" (and warns above
89 Mpx), which would call an intact 20000 x 12000 aerial photo "truncated or corrupt". frcnn reads every image
of at most ``MAX_SIDE`` (65,535, the manifest's limit: JPEG's) pixels a side and ``MAX_PIXELS`` (2^30, about
1.07 Gpx: 3 GiB of decoded RGB) in all, and refuses a larger one by its size, before decoding its pixels.
No torch here: ``prepare`` uses it too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from PIL import Image

from ..errors import DataError
from ..output_paths import special_kind
from .manifest import MAX_SIDE

MAX_PIXELS = 1 << 30  # 3 GiB of uint8 RGB once decoded: a crafted file cannot ask for more memory

_limit_lock = threading.Lock()
_limit_users = 0
_pillow_limit: int | None = None


@contextlib.contextmanager
def _without_pillow_limit() -> Iterator[None]:
    """Pillow's own pixel limit switched off inside (frcnn checks the size itself); safe on several threads
    (``prepare`` opens images on a pool): the limit is restored when the last user leaves."""
    global _limit_users, _pillow_limit
    with _limit_lock:
        if _limit_users == 0:
            _pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit


def size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` pixels is refused (None: it is not)."""
    if width > MAX_SIDE or height > MAX_SIDE:
        return f"is {width}x{height} px, over frcnn's limit of {MAX_SIDE:,} px a side"
    if width * height > MAX_PIXELS:
        return (f"is {width}x{height} px ({width * height / 1e6:,.0f} Mpx), over frcnn's limit of "
                f"{MAX_PIXELS / 1e6:,.0f} Mpx ({3 * MAX_PIXELS >> 30} GiB once decoded)")
    return None


@contextlib.contextmanager
def open_image(path: str | os.PathLike, advice: str = "shrink it, or leave it out") -> Iterator[Image.Image]:
    """``PIL.Image.open(path)`` (lazy: no pixel decoded yet) with frcnn's size limit instead of Pillow's: an
    image over it is a ``DataError`` naming it, its size, the limit and ``advice``. Pillow's own errors (a
    missing, truncated or foreign file) pass through. A FIFO, device or socket is a ``DataError``: reading it would
    wait for a writer (for ever, for a FIFO named ``x.jpg`` in a folder of photos)."""
    kind = special_kind(path)
    if kind is not None:
        raise DataError(f"image {path} is {kind}, not an image file; replace it by the image's file or leave it out")
    with _without_pillow_limit():
        img = Image.open(path)
    with img:
        problem = size_problem(*img.size)
        if problem is not None:
            raise DataError(f"image {path} {problem}; {advice}")
        yield img
