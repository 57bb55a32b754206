"""Inference: the settings as one value, one ``Predictor`` that runs the model's one forward, ``load_predictor``
(the one entry from a checkpoint or an exported file); the batched loops over a manifest (``predict_manifest``,
``detect_manifest``, ``dump_proposals``) are in ``inference_loops.py`` and importable from here.

How a setting travels (docs/architecture.md)::

    load_predictor: checkpoint config + --set (config_io.Overrides: TEST_TIME_KEYS) + the command's flags
        -> InferenceSettings (frozen: proposal settings, detection settings, ablation, SVD rank)
        -> Predictor.for_model(model, device, …)   prepared once: eval, SVD, place_model
        -> FasterRCNN.forward(proposer=settings.proposer) and FasterRCNN.detect(settings=settings.detections)

Images are decoded, rescaled and normalised by the data loader's workers (``runtime.num_workers``), a batch
goes to the device once, and its results come back to the host in one copy per batch.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from .ablations import ProposalAblation
from .config import Config, RuntimeConfig, runtime_defaults
from .config_io import Overrides
from .data.images import DetectionDataset, ImageBatch, ImageFilesDataset
from .data.loading import inference_loader
from .data.manifest import Manifest
from .devices import amp_enabled, autocast, place_model
from .errors import FrcnnError
from .inference_loops import (  # noqa: F401  (the loops' home is inference_loops.py; imported from here too)
    detect_manifest,
    dump_attributes,
    dump_proposals,
    dump_record,
    predict_manifest,
)
from .model.detector import FasterRCNN, ForwardOutput
from .model.postprocess import DetectionSettings
from .model.rpn import ProposalSettings, Proposer, RPNProposer
from .model.svd import compress_fc_svd

MODES = ("test", "dump")


@dataclass(frozen=True)
class InferenceSettings:
    """Every test-time setting of a command, built once at its start and passed down as a value.

    ``config``: the checkpoint's config with ``--set`` applied (what the input pipeline reads; a proposal file
    records it with the proposal numbers that ran, ``dump_record``); ``proposals``: the proposal layer's
    numbers (``mode`` "test": ``rpn.test_*``; "dump": ``rpn.dump_*``, then a dump's ``--nms`` and top-N
    flags); ``detections``: the detection rules; ``ablation``: one of the paper's Table 1 proposal
    ablations, or None.
    """

    config: Config
    proposals: ProposalSettings
    detections: DetectionSettings
    ablation: ProposalAblation | None = None
    mode: str = "test"

    @classmethod
    def from_config(cls, cfg: Config, *, mode: str = "test", overrides: Overrides | Sequence[str] = (),
                    score_thresh: float | None = None, nms_thresh: float | None = None,
                    pre_nms_top_n: int | None = None, post_nms_top_n: int | None = None,
                    ablation: ProposalAblation | None = None) -> InferenceSettings:
        """The settings of a model whose config is ``cfg``: ``overrides`` (``--set`` items of
        ``config.TEST_TIME_KEYS``, checked by the caller; runtime items are the ``Predictor``'s), for a dump
        (``mode="dump"``) ``nms_thresh`` and the top-N flags, ``score_thresh`` a floor under the config's own
        threshold (``detect --score-thresh``), ``ablation`` (``eval``/``detect``'s ``--proposals-n`` and
        ``--no-rpn-*``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        cfg = Overrides.parse(overrides).apply(cfg)
        proposals = ProposalSettings.from_config(cfg.rpn, mode)
        flags = {"nms_thresh": None if nms_thresh is None else float(nms_thresh),
                 "pre_nms_top_n": None if pre_nms_top_n is None else int(pre_nms_top_n),
                 "post_nms_top_n": None if post_nms_top_n is None else int(post_nms_top_n)}
        if mode != "dump" and any(v is not None for v in flags.values()):
            raise ValueError("nms_thresh and the top-N numbers are a dump's settings (mode='dump')")
        proposals = replace(proposals, **{k: v for k, v in flags.items() if v is not None})
        settings = cls(cfg, proposals, DetectionSettings.from_config(cfg.roi_head),
                       ablation if ablation is not None and not ablation.is_default else None, mode)
        return settings if score_thresh is None else settings.with_score_floor(score_thresh)

    def with_score_floor(self, score_thresh: float) -> InferenceSettings:
        """These settings with the detection threshold lowered to ``score_thresh`` (never raised)."""
        detections = self.detections.with_score_floor(score_thresh)
        return self if detections == self.detections else replace(self, detections=detections)

    @property
    def proposer(self) -> Proposer:
        """The proposal strategy ``forward`` runs: the RPN's own, or the ablation's."""
        if self.ablation is None:
            return RPNProposer(self.proposals)
        return self.ablation.proposer(self.proposals)

    @property
    def fc_svd_rank(self) -> int:
        """The truncated SVD of fc6/fc7 (0: none); a dump never runs them."""
        return self.config.roi_head.fc_svd_rank if self.mode == "test" else 0


@dataclass
class BatchResult:
    """A batch's results on the host, in batch order: ``detections`` (``{"boxes" [D, 4] original pixels,
    "scores" [D], "labels" [D] in 1..K}``) and ``proposals`` (``(boxes [R_i, 4] original pixels, scores
    [R_i])``), each None when not asked for."""

    detections: list[dict[str, Tensor]] | None = None
    proposals: list[tuple[Tensor, Tensor]] | None = None


class PredictorLike(Protocol):
    """What the loops of ``inference_loops.py``, ``detect_images``, ``evaluate`` and ``bench`` need of a predictor:
    ``Predictor`` and ``export.predictor.ExportedPredictor`` are both. ``model``: the model run (None: an exported
    graph, which hooks cannot time by stage); ``format``: None, or the exported file's (``"onnx"``,
    ``"torchscript"``)."""

    device: torch.device
    settings: InferenceSettings
    runtime: RuntimeConfig
    model: FasterRCNN | None
    format: str | None
    svd_layers: list[str]
    winograd_layers: list[str]

    @property
    def classes(self) -> list[str]: ...
    def with_settings(self, settings: InferenceSettings) -> PredictorLike: ...
    def manifest_batches(self, manifest: Manifest, *, indices: Sequence[int] | None = None,
                         batch_size: int = 1) -> Iterator: ...
    def file_batches(self, paths: Sequence, *, batch_size: int = 1, on_unreadable=None) -> Iterator: ...
    def run(self, batch, *, detections: bool = True, proposals: bool = False) -> BatchResult: ...


class Predictor:
    """A model prepared once for inference on ``device`` with ``settings``, and the one inference forward
    (``load_predictor`` makes one from a checkpoint, ``for_model`` from a model in memory).

    Preparing means eval mode, the truncated SVD of fc6/fc7 (``settings.fc_svd_rank``), and
    ``devices.place_model`` (Winograd convs on the CPU, channels-last); it changes modules, so the Predictor
    prepares its own deep copy of ``model`` unless ``owned`` (the caller hands the model over, e.g. one just
    loaded from a checkpoint). ``with_settings`` gives a Predictor of other settings on the same prepared
    model. ``runtime`` defaults to the runtime defaults of the model's preset (``config.runtime_defaults``);
    ``amp``: whether its forward runs under bf16 autocast (``devices.amp_enabled``: ``runtime.amp``, by default
    on CUDA and on CPUs that compute bf16 natively).

    >>> predictor = Predictor.for_model(model, "cpu", score_thresh=0.3)  # a FasterRCNN  # doctest: +SKIP
    """

    format = None  # a checkpoint's model, not an exported graph (``PredictorLike``)

    def __init__(self, model: FasterRCNN, device: torch.device | str, settings: InferenceSettings,
                 runtime: RuntimeConfig | None = None, *, owned: bool = False) -> None:
        self.device = torch.device(device)
        self.settings = settings
        self.runtime = runtime if runtime is not None else runtime_defaults(model.cfg.name)
        self.amp = amp_enabled(self.device, self.runtime.amp)
        model = model if owned else copy.deepcopy(model)
        model.eval().to(self.device)
        rank = settings.fc_svd_rank  # on the device: the factorisation is fast on a GPU
        self.svd_layers = compress_fc_svd(model, rank) if rank > 0 else []
        self.winograd_layers = place_model(model, self.device, self.runtime)
        self.model = model

    @classmethod
    def for_model(cls, model: FasterRCNN, device: torch.device | str, *, runtime: RuntimeConfig | None = None,
                  owned: bool = False, mode: str = "test", overrides: Overrides | Sequence[str] = (),
                  **settings) -> Predictor:
        """A Predictor of ``model`` with the test-time settings of its own config, changed by ``overrides``
        (``--set`` items: test-time keys into the settings, runtime keys over ``runtime``, default the runtime
        defaults of the model's preset) and ``settings`` (``InferenceSettings.from_config``'s ``score_thresh``,
        ``nms_thresh``, ``pre_nms_top_n``, ``post_nms_top_n``, ``ablation``). ``owned``: as ``__init__``."""
        overrides = Overrides.parse(overrides)
        runtime = overrides.apply_runtime(runtime if runtime is not None else runtime_defaults(model.cfg.name))
        inference = InferenceSettings.from_config(model.cfg, mode=mode, overrides=overrides, **settings)
        return cls(model, device, inference, runtime, owned=owned)

    def with_settings(self, settings: InferenceSettings) -> Predictor:
        """A Predictor of ``settings`` sharing this one's prepared model (same SVD unless it needs none)."""
        if settings.fc_svd_rank not in (0, self.settings.fc_svd_rank):
            raise ValueError(f"the model was prepared with SVD rank {self.settings.fc_svd_rank}, not "
                             f"{settings.fc_svd_rank}: make another Predictor")
        other = copy.copy(self)
        other.settings = settings
        return other

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    # ----------------------------------------------------------------------------------------------
    # batches

    def manifest_batches(self, manifest: Manifest, *, indices: Sequence[int] | None = None,
                         batch_size: int = 1) -> Iterator[ImageBatch]:
        """The manifest's images (all, or ``indices``) at the test scale, unflipped, in batches (host)."""
        dataset = DetectionDataset(manifest, self.settings.config, train=False)
        order = list(range(len(manifest.images))) if indices is None else list(indices)
        return self._batches(dataset, order, batch_size)

    def file_batches(self, paths: Sequence[Path | Tensor], *, batch_size: int = 1,
                     on_unreadable: Callable[[int, FrcnnError], None] | None = None) -> Iterator[ImageBatch]:
        """Image files (or decoded uint8 ``[3, H, W]`` images) at the test scale in batches, in the order of
        ``paths`` (``indices``: positions). An unreadable file is ``load_image``'s ``DataError``, or with
        ``on_unreadable`` left out of its batch and reported as ``on_unreadable(position, error)``."""
        dataset = ImageFilesDataset(list(paths), self.settings.config.input)
        return self._batches(dataset, list(range(len(paths))), batch_size, on_failure=on_unreadable)

    def _batches(self, dataset, order: list[int], batch_size: int, on_failure=None) -> Iterator[ImageBatch]:
        """The loader's iterator, made now (its worker processes start here, not at the first batch)."""
        size = max(1, batch_size)
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        return iter(inference_loader(dataset, chunks, size_divisor=self.settings.config.input.size_divisor,
                                     num_workers=self.runtime.num_workers, pin_memory=self.device.type == "cuda",
                                     on_failure=on_failure))

    # ----------------------------------------------------------------------------------------------
    # the forward

    def forward(self, batch: ImageBatch, *, detections: bool = True,
                image_keys: Sequence[int] | None = None) -> ForwardOutput:
        """``FasterRCNN.forward`` of a batch on the device (bf16 autocast when ``self.amp``), the RoI head only
        when ``detections``; ``image_keys``: manifest indices (default ``batch.indices``: a wait on a GPU)."""
        keys = batch.indices.tolist() if image_keys is None else list(image_keys)
        with autocast(self.device, self.amp):
            return self.model(batch.tensor, batch.image_sizes, batch.scales, run_roi_head=detections,
                              proposer=self.settings.proposer, image_keys=keys)

    @torch.inference_mode()
    def run(self, batch: ImageBatch, *, detections: bool = True, proposals: bool = False) -> BatchResult:
        """Detections and/or proposals of a host ``batch`` (the loader's), brought back to the host. The image
        keys are read from the host batch: the forward is queued while the batch is still being copied."""
        keys = batch.indices.tolist()
        on_device = batch.to(self.device, non_blocking=True)
        on_device.tensor = on_device.tensor.contiguous(memory_format=torch.channels_last)
        out = self.forward(on_device, detections=detections, image_keys=keys)
        result = BatchResult()
        if detections:
            found = self.model.detect(out, on_device.image_sizes, on_device.scales, on_device.original_sizes,
                                      settings=self.settings.detections)
            result.detections = detections_to_host(found)
        if proposals:
            result.proposals = proposals_to_host(out, batch.scales.tolist())
        return result


def load_predictor(model: str | os.PathLike, device: torch.device | str | None = None, *,
                   overrides: Overrides | Sequence[str] = (), require: Sequence[str] = ("rpn", "roi_head"),
                   mode: str = "test", score_thresh: float | None = None, nms_thresh: float | None = None,
                   pre_nms_top_n: int | None = None, post_nms_top_n: int | None = None,
                   ablation: ProposalAblation | None = None,
                   on_runtime: Callable[[torch.device, RuntimeConfig], None] | None = None) -> PredictorLike:
    """The checkpoint (or ``frcnn export``'s ONNX / TorchScript file) at ``model`` as a predictor on ``device``
    (default: CUDA when available), ready for ``detect_images``, ``evaluate`` and the loops of ``inference_loops.py``.

    ``overrides``: ``--set`` items (``Overrides`` or ``key=value`` strings), checked against
    ``config.TEST_TIME_KEYS`` before the file is read; the runtime keys (``runtime.*``) go over the runtime
    defaults of the checkpoint's preset. ``score_thresh``: a floor under the checkpoint's detection threshold
    (``roi_head.score_thresh``, 0.05: never raised); ``mode="dump"`` gives proposals for a proposal file, with
    ``nms_thresh`` and the top-N numbers; ``ablation``: one of the paper's Table 1 proposal ablations;
    ``require``: the parts the checkpoint must hold (``("rpn",)`` for proposals). ``on_runtime(device,
    runtime)`` is called before the model is prepared (the command line sets its process settings there). An
    exported file gives an ``export.predictor.ExportedPredictor``, which refuses what its graph fixes. Errors
    are ``FrcnnError``: a missing file, a checkpoint lacking a part, a key ``--set`` may not change.

    >>> predictor = frcnn_cli.load_predictor("run/final.pt", "cpu", score_thresh=0.3)  # doctest: +SKIP
    """
    from .devices import resolve_device
    from .export.runtime import exported_format
    from .model.checkpoint import load_model

    path = Path(model)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    overrides = Overrides.parse(overrides)
    overrides.check_test_time(path)
    settings = {"mode": mode, "score_thresh": score_thresh, "nms_thresh": nms_thresh, "ablation": ablation,
                "pre_nms_top_n": pre_nms_top_n, "post_nms_top_n": post_nms_top_n}
    if exported_format(path) is not None:  # frcnn export's file: the same interface (export/predictor.py)
        from .export.predictor import load_exported

        predictor = load_exported(path, device, overrides=overrides, **settings)
        if on_runtime is not None:
            on_runtime(predictor.device, predictor.runtime)
        return predictor
    loaded, _ = load_model(path, device=device, require=tuple(require))
    runtime = overrides.apply_runtime(runtime_defaults(loaded.cfg.name))
    if on_runtime is not None:
        on_runtime(device, runtime)
    return Predictor.for_model(loaded, device, runtime=runtime, owned=True,
                               overrides=Overrides(config=overrides.config), **settings)


def detections_to_host(dets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """``model.detect``'s per-image ``boxes``, ``scores`` (float32) and ``labels`` (int64) on the host, in one
    copy for the batch: a fixed number of device ops whatever the batch size."""
    counts = [len(d["scores"]) for d in dets]
    boxes = torch.cat([d["boxes"] for d in dets]).float()
    scores = torch.cat([d["scores"] for d in dets]).float()
    labels = torch.cat([d["labels"] for d in dets]).float()  # exact: labels are far below 2**24
    parts = torch.cat([boxes, scores[:, None], labels[:, None]], 1).cpu().split(counts)
    return [{"boxes": p[:, :4].contiguous(), "scores": p[:, 4].contiguous(), "labels": p[:, 5].long()}
            for p in parts]


def proposals_to_host(out: ForwardOutput, scales: Sequence[float]) -> list[tuple[Tensor, Tensor]]:
    """Each image's proposals in original pixels (float32 ``[R_i, 4]``) and scores (``[R_i]``) on the host,
    in one copy for the batch (a device waits once); mapped to original pixels there (a division per image
    on the host, not a device op per image)."""
    counts = [len(s) for s in out.proposal_scores]
    boxes = torch.cat(out.proposals).float()
    scores = torch.cat(out.proposal_scores).float()
    parts = torch.cat([boxes, scores[:, None]], 1).cpu().split(counts)
    return [(part[:, :4] / s, part[:, 4].contiguous()) for part, s in zip(parts, scales)]
