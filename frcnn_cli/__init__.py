"""frcnn: Faster R-CNN (Ren, He, Girshick, Sun) in PyTorch — the library behind the ``frcnn`` command."""

from __future__ import annotations

__version__ = "0.1.0"
