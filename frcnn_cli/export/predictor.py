"""``ExportedPredictor``: an exported model file behind ``inference.Predictor``'s interface (``run``,
``manifest_batches``, ``file_batches``, ``with_settings``, ``classes``, ``settings``, ``runtime``, ``device``),
and ``load_exported``, the way ``inference.load_predictor`` opens one.

Shapes: N images of a batch, D detections of one image, K classes without background.

What a checkpoint command may change at run time on a checkpoint (``--set`` test-time keys, ``--proposals-n``,
a lower ``--score-thresh``) is baked into an exported graph: asking for it is a ``ConfigError`` that says to
export again with it. Runtime keys (``--set runtime.threads=…``, ``runtime.num_workers``) apply as usual.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ..config import RuntimeConfig, runtime_defaults
from ..config_io import Overrides
from ..data.manifest import Manifest
from ..errors import CheckpointError, ConfigError
from ..inference import BatchResult, InferenceSettings
from .batches import DecodedBatch, FileImages, ManifestImages, decoded_batch, decoded_batches
from .metadata import ExportMetadata, damaged
from .runtime import exported_format, open_runner


def export_again(option: str) -> str:
    """The advice of a setting that is baked into an exported graph."""
    return f"rerun frcnn export with it: frcnn export --model CKPT {option} --out FILE"


class ExportedPredictor:
    """An exported detector (``runner``: ``runtime.OnnxRunner`` or ``TorchScriptRunner``) with the settings
    baked into it (``metadata``); ``settings`` may differ from those only by a higher score threshold."""

    svd_layers: list[str] = []  # what bench reports of a Predictor: nothing of it applies to a graph
    winograd_layers: list[str] = []
    model = None  # no PyTorch model to hook: bench times the graph as a whole (``inference.PredictorLike``)

    def __init__(self, runner, metadata: ExportMetadata, path: Path, runtime: RuntimeConfig) -> None:
        self.runner = runner
        self.metadata = metadata
        self.path = Path(path)
        self.settings = metadata.settings
        self.runtime = runtime
        self.device = runner.device

    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def format(self) -> str:
        return self.metadata.format

    def with_settings(self, settings: InferenceSettings) -> ExportedPredictor:
        """This model with ``settings``: the baked ones, or those with a higher ``detections.score_thresh``."""
        check_settings(self.metadata.settings, settings, self.path)
        other = copy.copy(self)
        other.settings = settings
        return other

    # ----------------------------------------------------------------------------------------------
    # batches: decoded images, the graph rescales them

    def manifest_batches(self, manifest: Manifest, *, indices: Sequence[int] | None = None,
                         batch_size: int = 1) -> Iterator[DecodedBatch]:
        order = list(range(len(manifest.images))) if indices is None else list(indices)
        return decoded_batches(ManifestImages(manifest), order, batch_size=batch_size,
                               num_workers=self.runtime.num_workers)

    def file_batches(self, paths: Sequence[Path | Tensor], *, batch_size: int = 1,
                     on_unreadable=None) -> Iterator[DecodedBatch]:
        """As ``Predictor.file_batches``: an unreadable file raises, or with ``on_unreadable`` is left out and
        reported as ``on_unreadable(position, error)``."""
        return decoded_batches(FileImages(paths), range(len(paths)), batch_size=batch_size,
                               num_workers=self.runtime.num_workers, on_failure=on_unreadable)

    def image_batches(self, images: Sequence[Tensor], *, batch_size: int = 1) -> list[DecodedBatch]:
        """Batches of decoded uint8 images (``frcnn bench``)."""
        size = max(1, batch_size)
        return [decoded_batch(images[i:i + size]) for i in range(0, len(images), size)]

    # ----------------------------------------------------------------------------------------------
    # the forward

    def detect_image(self, image: Tensor) -> dict[str, Tensor]:
        """``{"boxes" [D, 4] original pixels, "scores" [D], "labels" [D] in 1..K}`` of a uint8 ``[3, H, W]``."""
        boxes, scores, labels = self.runner(image)
        keep = scores > self.settings.detections.score_thresh  # the graph's own threshold, or a higher one
        return {"boxes": boxes[keep].float(), "scores": scores[keep].float(), "labels": labels[keep].long() + 1}

    def run(self, batch: DecodedBatch, *, detections: bool = True, proposals: bool = False) -> BatchResult:
        """Detections of every image of ``batch``, on the host (as ``Predictor.run``); an exported graph gives no
        proposals."""
        if proposals:
            raise CheckpointError(f"{self.path} is an exported model: its graph gives detections only, not the "
                                  "RPN's proposals (eval --report, dump-proposals); use the checkpoint for those")
        if not detections:
            return BatchResult()
        return BatchResult(detections=[self.detect_image(image) for image in batch.images])


def check_settings(baked: InferenceSettings, wanted: InferenceSettings, path: Path) -> None:
    """A ``ConfigError`` unless ``wanted`` is ``baked`` with at most a higher score threshold."""
    if wanted.mode != "test":
        raise CheckpointError(f"{path} is an exported model: it gives detections, not proposal files; dump "
                              "proposals with the checkpoint it was exported from")
    if wanted.ablation is not None or wanted.proposals != baked.proposals:
        raise ConfigError(f"the proposals of the exported model {path} are fixed in its graph "
                          f"({baked.proposals.post_nms_top_n} per image): {export_again('--proposals-n N')}")
    if wanted.config != baked.config:
        raise ConfigError(f"the config of the exported model {path} is fixed in its graph; to change a test-time "
                          f"setting, {export_again('--set KEY=VALUE')}")
    have, want = baked.detections, wanted.detections
    if (want.nms_thresh, want.detections_per_image) != (have.nms_thresh, have.detections_per_image):
        raise ConfigError(f"the detection NMS and cap of the exported model {path} are fixed in its graph; "
                          f"{export_again('--set roi_head.nms_thresh=… --set roi_head.detections_per_image=…')}")
    if want.score_thresh < have.score_thresh:
        raise ConfigError(f"the exported model {path} keeps detections with score above {have.score_thresh:g}, so "
                          f"it cannot give those above {want.score_thresh:g}; "
                          f"{export_again(f'--score-thresh {want.score_thresh:g}')}")


def check_graph(runner, metadata: ExportMetadata, path: Path) -> None:
    """A ``CheckpointError`` when the file's graph is not the one its metadata describes: another format, another
    number of classes, or (when the file records one) another hash than ``frcnn export`` recorded."""
    if metadata.format != runner.format:
        raise damaged(path, f"file_format says {metadata.format}, the file is {runner.format}")
    graph_classes = runner.class_count()
    if graph_classes is not None and graph_classes != len(metadata.classes):
        raise damaged(path, f"{len(metadata.classes)} classes, the graph scores {graph_classes}")
    if metadata.graph_sha256 is not None:
        found = runner.graph_digest()
        if found != metadata.graph_sha256:
            raise CheckpointError(f"{path} is damaged: its graph is not the one frcnn export wrote (SHA-256 "
                                  f"{found[:12]}…, recorded {metadata.graph_sha256[:12]}…), so it would give other "
                                  "detections; rerun frcnn export to write it again")


def load_exported(path: str | Path, device: torch.device, *, overrides: Overrides | Sequence[str] = (),
                  mode: str = "test", ablation=None, score_thresh: float | None = None,
                  **dump_settings) -> ExportedPredictor:
    """The exported model at ``path`` as an ``ExportedPredictor`` (``inference.load_predictor``'s arguments):
    ``overrides`` may hold runtime keys only (``runtime.*``); ``mode``, ``ablation`` and ``score_thresh`` may
    ask for nothing the graph does not do (``check_settings``: a lower score threshold, other proposals or a
    dump are refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist; check the path (--model)")
    overrides = Overrides.parse(overrides)
    if overrides.config:
        item = overrides.config_items[0]
        raise ConfigError(f"--set {item}: the settings of the exported model {path} are fixed in its "
                          f"graph (only runtime.* keys apply here); {export_again('--set ' + item)}")
    threads = overrides.apply_runtime(RuntimeConfig()).threads
    runner = open_runner(path, exported_format(path), device, threads)
    metadata = ExportMetadata.from_strings(runner.metadata, path)
    check_graph(runner, metadata, path)
    baked = metadata.settings
    detections = baked.detections if score_thresh is None else baked.detections.with_score_floor(score_thresh)
    ablation = None if ablation is None or ablation.is_default else ablation
    check_settings(baked, replace(baked, detections=detections, ablation=ablation, mode=mode), path)
    runtime = overrides.apply_runtime(runtime_defaults(baked.config.name))
    return ExportedPredictor(runner, metadata, path, runtime)
