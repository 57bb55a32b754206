"""The proposal file's format as both sides see it: its name and version, its limits, the settings every file
records (``SETTINGS``), and the lookups and attribute checks that ``ProposalWriter`` (``proposal_writer.py``) and
``ProposalStore`` (``proposal_store.py``, which describes the layout) share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT = "frcnn-proposals"
VERSION = 1
MAX_PROPOSALS = 100_000  # per image; a file claiming more is refused before anything is read
MAX_IMAGES = 10_000_000
SETTINGS = ("checkpoint_hash", "nms_thresh", "pre_nms_top_n", "post_nms_top_n", "min_size", "scale",
            "max_size", "config")


def _lookup(key: int | str, image_ids: list[str], index_of: dict[str, int]) -> int:
    """Manifest index of an image given by index or id; KeyError/IndexError when there is none."""
    if isinstance(key, str):
        if key not in index_of:
            raise KeyError(f"image {key!r}")
        return index_of[key]
    index = int(key)
    if not 0 <= index < len(image_ids):
        raise IndexError(f"image index {index} (it has {len(image_ids)} images)")
    return index


def _is(value: Any, expected: int | str) -> bool:
    """``value == expected`` for an attribute of an untrusted file (arrays and odd types are never equal)."""
    if isinstance(expected, str):
        return isinstance(value, str) and value == expected
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) == expected
