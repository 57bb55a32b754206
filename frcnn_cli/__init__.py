"""frcnn: Faster R-CNN (Ren, He, Girshick, Sun) in PyTorch — the library behind the ``frcnn`` command.

The public API (docs/python-api.md) is imported lazily, so that ``frcnn --help`` starts without loading torch::

    import frcnn_cli
    final = frcnn_cli.train("synth/trainval.json", "run", config="tiny")         # frcnn train
    predictor = frcnn_cli.load_predictor(final, "cpu")                          # a checkpoint or an export
    found = frcnn_cli.detect_images(predictor, ["photo.jpg"], score_thresh=0.5)  # frcnn detect
    print(frcnn_cli.evaluate(predictor, "synth/test.json").voc["map"])          # frcnn eval

``__all__`` is the stable surface (tests/test_api.py pins its names and signatures); the modules hold more.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    # the Python API: a checkpoint to detections, evaluation and training as the commands do them
    "load_predictor": "frcnn_cli.inference",
    "Predictor": "frcnn_cli.inference",
    "detect_images": "frcnn_cli.detect",
    "draw_detections": "frcnn_cli.detect",
    "evaluate": "frcnn_cli.evaluate.run",
    "train": "frcnn_cli.train.api",
    "read_manifest": "frcnn_cli.data.manifest",
    "Config": "frcnn_cli.config",
    "get_preset": "frcnn_cli.config",
    "FrcnnError": "frcnn_cli.errors",
    # the parts underneath
    "apply_overrides": "frcnn_cli.config_io",
    "FasterRCNN": "frcnn_cli.model.detector",
    "load_model": "frcnn_cli.model.checkpoint",
    "save_checkpoint": "frcnn_cli.model.checkpoint",
    "detect_manifest": "frcnn_cli.inference",
    "evaluate_detections": "frcnn_cli.evaluate.voc",
    "ProposalStore": "frcnn_cli.data.proposal_store",
}

__all__ = ["__version__", *_EXPORTS]


_CALLABLE_PACKAGES = {"train": "frcnn_cli.train.api", "evaluate": "frcnn_cli.evaluate.run"}


class CallablePackage(types.ModuleType):
    """A subpackage that is also the public function of its name: ``frcnn_cli.train(…)`` and
    ``frcnn_cli.evaluate(…)``. A function ``train`` in this package would be replaced by the subpackage
    ``frcnn_cli/train/`` the first time one of its modules is imported (Python binds a subpackage to its
    parent's attribute), so the subpackage itself is callable, with the function's signature; its modules
    stay reachable as before (``frcnn_cli.train.pipeline``, ``frcnn_cli.train.api``)."""

    def _function(self):
        name = self.__name__.rpartition(".")[2]
        return getattr(importlib.import_module(_CALLABLE_PACKAGES[name]), name)

    def __call__(self, *args, **kwargs):
        return self._function()(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        return inspect.signature(self._function())


def make_callable(package: str) -> None:
    """Make the subpackage ``package`` (its ``__init__`` calls this) a ``CallablePackage``."""
    sys.modules[package].__class__ = CallablePackage


def __getattr__(name: str):
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(f"frcnn_cli.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'frcnn_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
