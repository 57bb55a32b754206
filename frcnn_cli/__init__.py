"""frcnn: Faster R-CNN (Ren, He, Girshick, Sun) in PyTorch — the library behind the ``frcnn`` command.

The public API is imported lazily, so that ``frcnn --help`` starts without loading torch::

    from frcnn_cli import FasterRCNN, load_model, get_preset
    model, ckpt = load_model("final.pt", device="cuda")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "frcnn_cli.config",
    "get_preset": "frcnn_cli.config",
    "apply_overrides": "frcnn_cli.config_io",
    "FrcnnError": "frcnn_cli.errors",
    "FasterRCNN": "frcnn_cli.model.detector",
    "load_model": "frcnn_cli.model.checkpoint",
    "save_checkpoint": "frcnn_cli.model.checkpoint",
    "read_manifest": "frcnn_cli.data.manifest",
    "detect_images": "frcnn_cli.detect",
    "detect_manifest": "frcnn_cli.inference",
    "evaluate_detections": "frcnn_cli.evaluate.voc",
    "ProposalStore": "frcnn_cli.data.proposal_store",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'frcnn_cli' has no attribute {name!r}")
