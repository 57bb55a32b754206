"""Batched inference over a manifest or image files: proposal dumps (HDF5) and detections, on the model's device.

One loader serves ``dump-proposals``, ``eval``, ``detect`` and the demo: images are decoded, rescaled and
normalised by the data loader's workers, a batch goes to the device once, and results come back to the host
once per batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .ablations import ProposalAblation, ablated_forward
from .config import config_to_dict
from .data.images import DetectionDataset, ImageBatch, ImageFilesDataset, inference_loader
from .data.manifest import Manifest, manifest_hash
from .devices import autocast
from .model.checkpoint import file_sha256
from .model.detector import FasterRCNN, ForwardOutput
from .model.svd import compress_fc_svd
from .model.winograd import use_winograd
from .proposals import ProposalWriter

Progress = Callable[[int, str], None]


def manifest_batches(manifest: Manifest, model: FasterRCNN, *, indices: Sequence[int] | None = None,
                     batch_size: int = 1, num_workers: int = 0) -> Iterator[ImageBatch]:
    """The manifest's images (all, or ``indices``) at the test scale, unflipped, in batches."""
    dataset = DetectionDataset(manifest, model.cfg, train=False)
    order = list(range(len(manifest.images))) if indices is None else list(indices)
    yield from inference_loader(dataset, _chunks(order, batch_size), size_divisor=model.cfg.input.size_divisor,
                                num_workers=num_workers, pin_memory=torch.cuda.is_available())


def _chunks(order: list[int], size: int) -> list[list[int]]:
    size = max(1, size)
    return [order[i:i + size] for i in range(0, len(order), size)]


def file_batches(paths: Sequence[Path], model: FasterRCNN, device: torch.device, *, batch_size: int = 1,
                 num_workers: int = 0) -> Iterator[ImageBatch]:
    """Image files (``frcnn detect``) at the test scale in batches, in the order of ``paths`` (``indices``
    are positions in ``paths``); pinned for a CUDA ``device``."""
    dataset = ImageFilesDataset(list(paths), model.cfg.input)
    yield from inference_loader(dataset, _chunks(list(range(len(paths))), batch_size),
                                size_divisor=model.cfg.input.size_divisor, num_workers=num_workers,
                                pin_memory=device.type == "cuda")


def detections_to_host(dets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """``model.detect``'s per-image ``boxes``, ``scores`` (float32) and ``labels`` (int64) on the host, in one
    copy for the batch (a device waits once)."""
    packed = torch.cat([torch.cat([d["boxes"].float(), d["scores"].float()[:, None], d["labels"].float()[:, None]],
                                  1) for d in dets]).cpu()
    parts = packed.split([len(d["scores"]) for d in dets])
    return [{"boxes": p[:, :4].contiguous(), "scores": p[:, 4].contiguous(), "labels": p[:, 5].long()}
            for p in parts]


def detect_batch(model: FasterRCNN, batch: ImageBatch, device: torch.device,
                 ablation: ProposalAblation | None = None) -> list[dict[str, torch.Tensor]]:
    """Detections of a host ``batch``, image by image, on the host (``detections_to_host``): the forward on
    ``device`` (``ablation``: one of the paper's Table 1 test-time proposal ablations) and ``model.detect``."""
    on_device = to_device(batch, device)
    if ablation is None:
        out = _forward(model, on_device, device, proposal_mode="test")
    else:
        out = ablated_forward(model, on_device.tensor, on_device.image_sizes, on_device.scales, ablation,
                              keys=batch.indices.tolist())
    dets = model.detect(out, on_device.image_sizes, on_device.scales, on_device.original_sizes)
    return detections_to_host(dets)


@dataclass
class InferenceSettings:
    """What ``prepare_model`` changed: layers the truncated SVD compressed, convs that run as Winograd."""

    svd_layers: list[str] = field(default_factory=list)
    winograd_layers: list[str] = field(default_factory=list)


def prepare_model(model: FasterRCNN, device: torch.device, *, channels_last: bool = True,
                  svd: bool = True) -> InferenceSettings:
    """Put ``model`` in its inference settings on ``device`` (in place): eval mode, channels-last convs,
    cuDNN autotuning on CUDA, on the CPU the 3×3 convs with at least 128 channels as Winograd F(4×4, 3×3)
    when ``cfg.solver.cpu_winograd`` (``frcnn_cli.model.winograd``), and (``svd``) the truncated SVD of
    fc6/fc7 when ``cfg.roi_head.fc_svd_rank > 0`` (a proposal dump, which never runs fc6/fc7, passes
    ``svd=False``).

    Inference only: a model compressed here must not be saved as a checkpoint or trained (the Winograd
    convs keep the parameters and state-dict keys, but the SVD changes them).
    """
    model.eval().to(device)
    settings = InferenceSettings()
    if svd and model.cfg.roi_head.fc_svd_rank > 0:  # on the device: the factorisation is fast on a GPU
        settings.svd_layers = compress_fc_svd(model, model.cfg.roi_head.fc_svd_rank)
    if device.type == "cpu" and model.cfg.solver.cpu_winograd:
        settings.winograd_layers = use_winograd(model)
    if channels_last:
        # oneDNN (CPU) and cuDNN (GPU) run 3x3 convs, ReLU and max pooling faster in NHWC; the values are
        # the same up to float summation order
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return settings


def to_device(batch: ImageBatch, device: torch.device) -> ImageBatch:
    """``batch`` on ``device``, images in channels-last layout (as ``prepare_model`` puts the convs)."""
    batch = batch.to(device, non_blocking=True)
    batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
    return batch


def _forward(model: FasterRCNN, batch: ImageBatch, device: torch.device, **kwargs) -> ForwardOutput:
    with autocast(device, model.cfg.solver.amp):
        return model(batch.tensor, batch.image_sizes, batch.scales, **kwargs)


@dataclass(frozen=True)
class DumpSettings:
    """Proposal settings of a dump (the paper: no pre-NMS cap, NMS 0.7, top 2000, min size 16)."""

    nms_thresh: float
    pre_nms_top_n: int
    post_nms_top_n: int
    min_size: float


def _dump_settings(model: FasterRCNN, nms_thresh, pre_nms_top_n, post_nms_top_n) -> DumpSettings:
    rpn = model.cfg.rpn
    return DumpSettings(rpn.nms_thresh if nms_thresh is None else float(nms_thresh),
                        rpn.dump_pre_nms_top_n if pre_nms_top_n is None else int(pre_nms_top_n),
                        rpn.dump_post_nms_top_n if post_nms_top_n is None else int(post_nms_top_n),
                        rpn.min_size)


def _with_dump_settings(model: FasterRCNN, s: DumpSettings) -> None:
    model.cfg = replace(model.cfg, rpn=replace(model.cfg.rpn, nms_thresh=s.nms_thresh,
                                               dump_pre_nms_top_n=s.pre_nms_top_n,
                                               dump_post_nms_top_n=s.post_nms_top_n))


def _proposals_to_host(result: ForwardOutput, batch: ImageBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each image's proposals in original pixels (float32 ``[R_i, 4]``) and scores (``[R_i]``) on the host,
    in one copy for the batch (a device waits once)."""
    packed = torch.cat([torch.cat([p.float() / s, sc.float()[:, None]], 1)
                        for p, s, sc in zip(result.proposals, batch.scales.tolist(), result.proposal_scores)]).cpu()
    parts = packed.split([len(s) for s in result.proposal_scores])
    return [(part[:, :4].contiguous(), part[:, 4].contiguous()) for part in parts]


@torch.inference_mode()
def dump_proposals(model: FasterRCNN, manifest: Manifest, manifest_path: Path, out: Path, *,
                   device: torch.device, checkpoint_path: Path, batch_size: int = 1,
                   nms_thresh: float | None = None, pre_nms_top_n: int | None = None,
                   post_nms_top_n: int | None = None, progress: Progress | None = None,
                   num_workers: int = 0) -> Path:
    """Every image's proposals in original pixels, sorted by score, into the HDF5 store ``out``.

    Written to ``out.partial`` image by image; rerunning after an interruption continues with the images
    not yet written; the file is renamed to ``out`` only when complete.
    """
    settings = _dump_settings(model, nms_thresh, pre_nms_top_n, post_nms_top_n)
    _with_dump_settings(model, settings)
    prepare_model(model, device, svd=False)
    attrs = {"checkpoint_hash": file_sha256(checkpoint_path), "checkpoint": str(checkpoint_path),
             "nms_thresh": settings.nms_thresh, "pre_nms_top_n": settings.pre_nms_top_n,
             "post_nms_top_n": settings.post_nms_top_n, "min_size": settings.min_size,
             "scale": model.cfg.input.test_scale, "max_size": model.cfg.input.max_size,
             "config": json.dumps(config_to_dict(model.cfg))}
    with ProposalWriter(out, manifest=manifest, manifest_hash=manifest_hash(manifest), attrs=attrs) as writer:
        todo = [i for i in range(len(manifest.images)) if not writer.done(i)]
        done = len(manifest.images) - len(todo)
        for batch in manifest_batches(manifest, model, indices=todo, batch_size=batch_size,
                                      num_workers=num_workers):
            result = _forward(model, to_device(batch, device), device, run_roi_head=False,
                              proposal_mode="dump")
            for index, (boxes, scores) in zip(batch.indices.tolist(), _proposals_to_host(result, batch)):
                writer.write(index, boxes, scores)
            done += len(batch)
            if progress is not None:
                progress(done, "")
        writer.finish()
    return out


@torch.inference_mode()
def detect_manifest(model: FasterRCNN, manifest: Manifest, *, device: torch.device, batch_size: int = 1,
                    progress: Progress | None = None, num_workers: int = 0,
                    ablation: ProposalAblation | None = None) -> list[dict[str, torch.Tensor]]:
    """Detections of every manifest image (``boxes`` original pixels, ``scores``, ``labels`` 1..K), on CPU.

    ``ablation``: test proposals made as one of the paper's Table 1 ablations (``frcnn_cli.ablations``).
    """
    prepare_model(model, device)
    results: list[dict[str, torch.Tensor] | None] = [None] * len(manifest.images)
    done = 0
    for batch in manifest_batches(manifest, model, batch_size=batch_size, num_workers=num_workers):
        for index, det in zip(batch.indices.tolist(), detect_batch(model, batch, device, ablation)):
            results[index] = det
        done += len(batch)
        if progress is not None:
            progress(done, "")
    return results
