"""The learning benchmark's peer: torchvision's ``FasterRCNN`` in a light configuration, trained from scratch for
a given wall time (``learning_vs_torchvision.py``).

Light and tuned for a CPU, the same capacity as frcnn's ``tiny`` preset: frcnn's tiny backbone (5 × conv3×3 +
GroupNorm + ReLU, stride 16, 128 channels, random init), one feature map, 15 anchors (sizes 16-256 px ×
ratios 0.5, 1, 2: wide enough for any set without fitting), RPN 3×3 conv + 1×1 convs (256 anchors per
image; 2000 → 300 proposals in training, 1000 → 100 at test), RoIAlign 7×7 (sampling 2), a small head (fc
6272 → 256 → 256), 64 RoIs per image with 25 % foreground; the same image size as ``tiny`` (shorter side
192, longer at most 320), ImageNet mean/std, horizontal flips. SGD (momentum 0.9, weight decay 1e-4), 4
images per iteration, lr 0.02 after a 100-iteration linear warm-up, ×0.1 once three quarters of the wall
time (or with ``clock="cpu"`` of the CPU time) have passed. Decoded images are kept in memory (the peer pays no
decoding). Evaluation: frcnn's VOC07 code on its detections (score > 0.05, NMS 0.3, at most 100 per image).
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from frcnn_cli.data.images import load_image, record_targets
from frcnn_cli.data.manifest import Manifest
from frcnn_cli.evaluate.voc import detections_by_class, evaluate_detections
from frcnn_cli.model.backbones import build_backbone

WARMUP, LR, BATCH = 100, 0.02, 4


def build_peer(num_classes: int) -> FasterRCNN:
    """The light torchvision detector (random weights) for ``num_classes`` object classes."""
    parts = build_backbone("tiny")
    backbone = parts.shared
    backbone.out_channels = parts.out_channels
    anchors = AnchorGenerator(sizes=((16, 32, 64, 128, 256),), aspect_ratios=((0.5, 1.0, 2.0),))
    return FasterRCNN(
        backbone, num_classes=None, min_size=192, max_size=320,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        rpn_anchor_generator=anchors, rpn_head=RPNHead(parts.out_channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=100, rpn_nms_thresh=0.7, rpn_batch_size_per_image=256,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(parts.out_channels * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, num_classes + 1),
        box_score_thresh=0.05, box_nms_thresh=0.3, box_detections_per_img=100,
        box_batch_size_per_image=64, box_positive_fraction=0.25,
    )


def _images(manifest: Manifest) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each image as float [3, H, W] in [0, 1] with its non-difficult boxes and labels (1..K)."""
    out = []
    for rec in manifest.images:
        image = load_image(manifest.image_path(rec)).float() / 255.0
        boxes, labels = record_targets(rec)
        out.append((image, boxes, labels))
    return out


def _flip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image.flip(-1), flipped


class _Clocks:
    """Wall and CPU seconds since the start, less the paused spans (the curve's evaluations); ``now()`` is the one
    the budget counts (``kind``: "wall" or "cpu")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.paused = self.cpu_paused = 0.0

    def wall(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def cpu(self) -> float:
        return time.process_time() - self.cpu_start - self.cpu_paused

    def now(self) -> float:
        return self.wall() if self.kind == "wall" else self.cpu()

    def pause(self, work) -> None:
        tick, cpu = time.perf_counter(), time.process_time()
        work()
        self.paused += time.perf_counter() - tick
        self.cpu_paused += time.process_time() - cpu


def _batch(data, order: list[int], rng: random.Random) -> tuple[list, list, list[int]]:
    if len(order) < BATCH:
        order += rng.sample(range(len(data)), len(data))
    images, targets = [], []
    for i in order[:BATCH]:
        image, boxes, labels = data[i]
        if rng.random() < 0.5:
            image, boxes = _flip(image, boxes)
        images.append(image)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets, order[BATCH:]


def train_peer(train: Manifest, seconds: float, *, seed: int = 0, log=print, on_tick=None,
               tick_every: float = 60.0, clock: str = "wall") -> tuple[FasterRCNN, dict]:
    """Train the peer on ``train`` for ``seconds`` of wall time (``clock="cpu"``: of its process's CPU time, for a
    loaded machine; loading the images not counted). ``on_tick(wall, cpu, model)`` every ``tick_every`` seconds
    of that clock and at the end (a learning curve): its own time is not counted."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = [d for d in _images(train) if len(d[1])]  # torchvision's training needs a box per image
    model = build_peer(len(train.classes))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=1e-4)
    clocks, it, order, next_tick = _Clocks(clock), 0, [], tick_every
    while clocks.now() < seconds:
        images, targets, order = _batch(data, order, rng)
        elapsed = clocks.now()
        lr = LR * (0.1 if elapsed > 0.75 * seconds else 1.0) * (min(1.0, (it + 1) / WARMUP))
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        it += 1
        if it % 50 == 0:
            log(f"peer iteration {it}, {elapsed:.0f} s ({clock}), loss {loss.item():.3f}, lr {lr:.4f}")
        if on_tick is not None and next_tick <= clocks.now() < seconds:  # the end's point comes below
            next_tick += tick_every
            clocks.pause(lambda: (on_tick(clocks.wall(), clocks.cpu(), model), model.train()))
    if on_tick is not None:
        on_tick(clocks.wall(), clocks.cpu(), model)
    return model, {"iterations": it, "seconds": round(clocks.wall(), 1), "cpu_seconds": round(clocks.cpu(), 1)}


@torch.inference_mode()
def evaluate_peer(model: FasterRCNN, test: Manifest) -> float:
    """VOC07 mAP (11-point, IoU 0.5) of the peer on ``test``, by frcnn's evaluation code."""
    model.eval()
    results = []
    for image, _, _ in _images(test):
        out = model([image])[0]
        results.append({"boxes": out["boxes"].float(), "scores": out["scores"].float(), "labels": out["labels"]})
    ev = evaluate_detections(detections_by_class(results, len(test.classes)), test, iou_thresh=0.5,
                             metric="11point")
    return float(np.nan_to_num(ev["map"]))
