"""The paper's Table 4 for this machine: milliseconds per image of each stage, images/s, peak memory.

Stages, as the paper's Table 4 splits them:

- ``backbone``: the shared convs (``model.backbone``);
- ``proposals``: the RPN head, the anchors and proposal generation (decode, clip, min size, top-N, NMS);
- ``region_wise``: RoI pooling, the fc layers (or res5), the predictors and the post-processing
  (softmax, box decoding, clipping, score threshold, per-class NMS, top 100).

One timed run is ``Predictor.run`` on a batch: the model's one forward plus ``detect`` and the copy of the
detections to the host, the code ``frcnn detect`` runs; forward hooks on ``backbone`` and ``roi_head`` put
the stage boundaries in it (with a ``torch.cuda.synchronize`` at each boundary on a GPU), so the stages add
up to the total of that run. An exported model (``frcnn export``: ``export.predictor.ExportedPredictor``) is
one graph that hooks cannot split: it is timed as a whole (``total`` only), and its total includes the
resize and normalisation inside its graph.
Pre-processing (decoding, resizing, normalising) is not timed, as in the paper. Figures are medians over
the timed runs after the warm-up runs, per image (a batch's time divided by its size).

Inference settings: those of the ``Predictor`` (eval mode, ``torch.inference_mode``, channels-last memory
format for the convs, Winograd convs on the CPU, bf16 autocast with ``runtime.amp`` (by default on CUDA and on
CPUs that compute bf16 natively; ``BenchResult.precision`` says which ran), Fast R-CNN's
truncated SVD of fc6/fc7 when ``roi_head.fc_svd_rank > 0``); the command sets ``cudnn.benchmark`` on CUDA.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed runs (weights included); on the
CPU the process's peak resident set size (``getrusage`` ``ru_maxrss``), which also counts the Python
interpreter and everything the process held before.

Shapes: N images of a batch, H×W the padded network input.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .config import InputConfig
from .data.images import ImageBatch, batch_from_images, compute_scale, find_images, load_image, resized_size
from .errors import DataError
from .inference import PredictorLike
from .model.detector import FasterRCNN

STAGES = ("backbone", "proposals", "region_wise")
SYNTHETIC_SIZE = (375, 500)  # (height, width): a typical PASCAL VOC image


# --------------------------------------------------------------------------------------------------
# inputs


def synthetic_image(seed: int = 0) -> Tensor:
    """A uint8 ``[3, 375, 500]`` RGB noise image: the size of a typical PASCAL image."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, *SYNTHETIC_SIZE), dtype=torch.uint8, generator=gen)


def _cycled(images: Sequence[Tensor], batch_size: int) -> list[Tensor]:
    """``images`` cycled to a whole number of batches."""
    if not images:
        raise DataError("no images to benchmark; give image files, a folder, or none for a synthetic one")
    count = max(len(images), batch_size)
    count = -(-count // batch_size) * batch_size
    return [images[i % len(images)] for i in range(count)]


def make_batches(images: Sequence[Tensor], input_cfg: InputConfig, batch_size: int, device: torch.device, *,
                 channels_last: bool = False) -> list[ImageBatch]:
    """Batches of ``batch_size`` test-scale images on ``device`` (the images cycled to fill the last one),
    the image tensors in channels-last format if ``channels_last``."""
    ordered = _cycled(images, batch_size)
    batches = []
    for start in range(0, len(ordered), batch_size):
        batch = batch_from_images(ordered[start:start + batch_size], input_cfg).to(device)
        if channels_last:
            batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
        batches.append(batch)
    return batches


# --------------------------------------------------------------------------------------------------
# model


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and the number of threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------------------------------
# timing


class _StageClock:
    """Timestamps at the stage boundaries of one forward, from hooks on ``backbone`` and ``roi_head``."""

    def __init__(self, model: FasterRCNN, device: torch.device) -> None:
        self.device = device
        self.marks: dict[str, float] = {}
        self.handles = [
            model.backbone.register_forward_pre_hook(lambda _m, _a: self.mark("start")),
            model.backbone.register_forward_hook(lambda _m, _a, _o: self.mark("backbone")),
            model.roi_head.register_forward_pre_hook(lambda _m, _a: self.mark("proposals")),
        ]

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks[name] = time.perf_counter()

    def stages(self) -> dict[str, float]:
        """Seconds of each stage and ``total`` for the last run."""
        m = self.marks
        out = {"backbone": m["backbone"] - m["start"], "proposals": m["proposals"] - m["backbone"],
               "region_wise": m["end"] - m["proposals"]}
        out["total"] = m["end"] - m["start"]
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class _TotalClock(_StageClock):
    """The time of a whole run: an exported graph has no stage boundaries to hook."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks = {}
        self.handles = []

    def stages(self) -> dict[str, float]:
        return {"total": self.marks["end"] - self.marks["begin"]}


def _run_once(predictor: PredictorLike, batch: ImageBatch, clock: _StageClock) -> dict[str, float]:
    clock.marks.clear()
    clock.mark("begin")
    predictor.run(batch)
    clock.mark("end")
    return clock.stages()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@dataclass
class BenchResult:
    """Per-image medians in milliseconds (``ms_per_image`` keys ``total`` and ``STAGES``) and the settings.

    ``image_size`` is ``[H, W]`` of the padded network input (the largest one when images differ).
    ``runs_ms`` holds every timed run's per-image figures. ``to_json()`` is ``frcnn bench --json`` (a stage an
    exported model cannot split is null there and absent from ``ms_per_image``).
    """

    device: str
    device_name: str
    batch_size: int
    image_size: list[int]
    ms_per_image: dict[str, float]
    images_per_s: float
    peak_memory_mb: float
    runs: int
    warmup: int
    amp: bool
    channels_last: bool
    svd_layers: list[str] = field(default_factory=list)
    winograd_layers: list[str] = field(default_factory=list)
    runs_ms: list[dict[str, float]] = field(default_factory=list)
    exported: str | None = None  # the format of an exported model ("onnx", "torchscript"), timed as a whole
    float32_winograd_layers: list[str] = field(default_factory=list)  # under bf16 autocast: kept float32

    @property
    def precision(self) -> str:
        """``"bfloat16"`` (the forward under bf16 autocast) or ``"float32"``."""
        return "bfloat16" if self.amp else "float32"

    def to_json(self) -> dict:
        """The ``frcnn bench --json`` document of shared/DESIGN.md, with the ``precision`` that ran."""
        return {"device": self.device, "batch_size": self.batch_size, "image_size": list(self.image_size),
                "ms_per_image": {k: self.ms_per_image.get(k) for k in ("total", *STAGES)},
                "images_per_s": self.images_per_s, "peak_memory_mb": self.peak_memory_mb,
                "precision": self.precision}


def _medians(per_run: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in per_run) for k in ("total", *STAGES) if k in per_run[0]}


@torch.inference_mode()
def time_model(predictor: PredictorLike, batches: Sequence[ImageBatch], *, runs: int = 10,
               warmup: int = 2) -> tuple[list[dict[str, float]], float]:
    """Per-image milliseconds of each timed run (``total`` and ``STAGES``) and the peak memory in MiB.

    ``warmup`` untimed runs, then ``runs`` timed runs, cycling through ``batches`` (on the predictor's
    device).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    device = predictor.device
    clock = _StageClock(predictor.model, device) if predictor.model is not None else _TotalClock(device)
    try:
        for i in range(warmup):
            _run_once(predictor, batches[i % len(batches)], clock)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        per_run = []
        for i in range(runs):
            batch = batches[(warmup + i) % len(batches)]
            seconds = _run_once(predictor, batch, clock)
            per_run.append({k: 1000.0 * v / len(batch) for k, v in seconds.items()})
    finally:
        clock.close()
    return per_run, _peak_memory_mb(device)


def run_benchmark(predictor: PredictorLike, images: Sequence[Tensor] | None = None, *, batch_size: int = 1,
                  runs: int = 10, warmup: int = 2) -> BenchResult:
    """Time ``predictor`` on ``images`` (uint8 ``[3, H, W]``; None: one synthetic 500×375 image) in batches
    of ``batch_size``; the paper's Table 4 as a ``BenchResult``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device, channels_last = predictor.device, predictor.runtime.channels_last
    images = list(images) if images else [synthetic_image()]
    input_cfg = predictor.settings.config.input
    exported = predictor.format
    if exported is None:
        batches = make_batches(images, input_cfg, batch_size, device, channels_last=channels_last)
        image_size = list(max((b.tensor.shape[-2:] for b in batches), key=lambda hw: hw[0] * hw[1]))
    else:  # an exported graph takes the decoded images and rescales them itself
        batches = predictor.image_batches(_cycled(images, batch_size), batch_size=batch_size)
        image_size = _network_size(images, input_cfg)
    per_run, peak = time_model(predictor, batches, runs=runs, warmup=warmup)
    ms = _medians(per_run)
    return BenchResult(
        device=str(device), device_name=describe_device(device), batch_size=batch_size,
        image_size=[int(v) for v in image_size], ms_per_image=ms,
        images_per_s=1000.0 / ms["total"] if ms["total"] > 0 else float("inf"), peak_memory_mb=peak,
        runs=runs, warmup=warmup, amp=exported is None and predictor.amp,
        channels_last=channels_last, svd_layers=predictor.svd_layers, winograd_layers=predictor.winograd_layers,
        runs_ms=per_run, exported=exported, float32_winograd_layers=_float32_winograd(predictor, exported))


def _float32_winograd(predictor: PredictorLike, exported: str | None) -> list[str]:
    """The Winograd convs that stay float32 under the predictor's bf16 autocast (none without autocast)."""
    if exported is not None or not predictor.amp:
        return []
    return [name for name, m in predictor.model.named_modules() if getattr(m, "winograd_under_bf16", False)]


def _network_size(images: Sequence[Tensor], input_cfg: InputConfig) -> list[int]:
    """``[H, W]`` of the largest padded network input of ``images`` at the test scale."""
    sizes = []
    for image in images:
        h, w = image.shape[-2:]
        sh, sw = resized_size(h, w, compute_scale(h, w, input_cfg.test_scale, input_cfg.max_size))
        step = input_cfg.size_divisor
        sizes.append([-(-sh // step) * step, -(-sw // step) * step])
    return max(sizes, key=lambda s: s[0] * s[1])


def load_images(paths: Sequence[str | Path]) -> list[Tensor]:
    """Decoded uint8 RGB images of ``find_images(paths)``."""
    return [load_image(p) for p in find_images(paths)]
