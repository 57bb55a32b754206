"""What tests/test_cuda.py compares a device's results with: the device modes, relative errors, and the matching of
detections and proposals against the CPU's float32 results.

A mode is a device and a precision with the tolerances that precision allows. ``cpu-bf16`` (the CPU under
``torch.autocast("cpu", bfloat16)``, oneDNN's direct convolutions) is the CPU twin of ``cuda-bf16``: the same
model code with the same dtypes flowing through it, so that the comparisons and their tolerances are proven on
any machine; ``cuda-fp32`` is CUDA with ``runtime.amp=false`` (cuDNN's default TF32 convolutions, about 1e-3);
``cuda-bf16`` is CUDA with bf16 autocast, frcnn's default there.

Tolerances were read off the ``cpu-bf16`` runs (bf16 forward outputs within about 1 %, all gradients together
within 5-8 %, the worst single parameter about 20 %; 96-100 % of the detections found again) with room
for cuDNN's different summation order; TF32 has 3 more mantissa bits than bf16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from conftest import tiny_runtime
from torch import Tensor

from frcnn_cli.boxes import box_iou


@dataclass(frozen=True)
class Mode:
    """A device, a precision and what the comparison with the CPU in float32 may differ by."""

    name: str
    device: str  # "cpu" or "cuda"
    bf16: bool
    forward_tol: float  # relative error of forward outputs
    grad_tol: float  # relative error of all gradients together (and of one SGD step's update)
    loss_tol: float  # relative error of each loss
    match: float  # fraction of the reference's detections (or proposals) found again
    score_tol: float  # |score difference| of a detection found again
    map_tol: float  # |mAP difference|

    def autocast(self):
        """bf16 autocast on this mode's device when the mode is bf16 (what ``frcnn_cli.devices.autocast`` opens:
        on CUDA, and on the CPU where it computes bf16 natively or ``runtime.amp=true`` forces it)."""
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16)

    def runtime(self, *extra: str):
        """The tests' runtime with this mode's precision; oneDNN's direct convs on the CPU (cuDNN's stand-in)."""
        return tiny_runtime(f"runtime.amp={str(self.bf16).lower()}", "runtime.cpu_winograd=false", *extra)


BF16 = dict(forward_tol=3e-2, grad_tol=0.2, loss_tol=1e-2, match=0.9, score_tol=0.03, map_tol=0.05)
FP32 = dict(forward_tol=5e-3, grad_tol=3e-2, loss_tol=2e-3, match=0.95, score_tol=0.01, map_tol=0.02)
CPU_BF16 = Mode("cpu-bf16", "cpu", True, **BF16)
CUDA_FP32 = Mode("cuda-fp32", "cuda", False, **FP32)
CUDA_BF16 = Mode("cuda-bf16", "cuda", True, **BF16)


def rel_error(got: Tensor, ref: Tensor) -> float:
    """``‖got − ref‖ / ‖ref‖`` in float64 on the CPU (NaN anywhere gives NaN, which fails every bound)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def joint_rel_error(got: dict[str, Tensor], ref: dict[str, Tensor]) -> float:
    """``rel_error`` of all tensors of ``ref`` (same keys in ``got``) flattened into one vector."""
    assert got.keys() == ref.keys(), sorted(set(got) ^ set(ref))
    keys = sorted(ref)
    return rel_error(torch.cat([got[k].detach().double().cpu().flatten() for k in keys]),
                     torch.cat([ref[k].detach().double().cpu().flatten() for k in keys]))


def found_again(ref_boxes: Tensor, ref_scores: Tensor, boxes: Tensor, scores: Tensor, *, iou: float,
                score_tol: float, same: Tensor | None = None) -> Tensor:
    """BoolTensor[R]: whether each reference box has a box of ``boxes`` with IoU ≥ ``iou`` and a score within
    ``score_tol`` (and, with ``same`` [R, D], where ``same`` allows it: the same label)."""
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return torch.zeros(len(ref_boxes), dtype=torch.bool)
    overlap = box_iou(ref_boxes.double().cpu(), boxes.double().cpu())
    close = (ref_scores.double().cpu()[:, None] - scores.double().cpu()[None]).abs() <= score_tol
    ok = (overlap >= iou) & close
    if same is not None:
        ok &= same
    return ok.any(1)


def detections_found_again(ref: Sequence[dict], got: Sequence[dict], *, score_tol: float,
                           iou: float = 0.9) -> float:
    """The fraction of all of ``ref``'s detections (per image ``boxes``, ``scores``, ``labels``) that ``got``
    has too: same image and label, IoU ≥ ``iou``, score within ``score_tol``."""
    assert len(ref) == len(got)
    hits = [found_again(r["boxes"], r["scores"], g["boxes"], g["scores"], iou=iou, score_tol=score_tol,
                        same=r["labels"].cpu()[:, None] == g["labels"].cpu()[None]) for r, g in zip(ref, got)]
    total = sum(len(h) for h in hits)
    assert total > 0, "the reference has no detections: nothing to compare"
    return float(sum(int(h.sum()) for h in hits)) / total


def proposals_found_again(ref: Sequence[tuple[Tensor, Tensor]], got: Sequence[tuple[Tensor, Tensor]], *,
                          top: int, score_tol: float, iou: float = 0.9) -> float:
    """The fraction of each image's ``top`` best reference proposals ``(boxes, scores)`` that ``got`` has too
    (IoU ≥ ``iou``, objectness within ``score_tol``), over all images."""
    assert len(ref) == len(got)
    hits = [found_again(rb[:top], rs[:top], gb, gs, iou=iou, score_tol=score_tol) for (rb, rs), (gb, gs)
            in zip(ref, got)]
    total = sum(len(h) for h in hits)
    assert total > 0, "the reference has no proposals: nothing to compare"
    return float(sum(int(h.sum()) for h in hits)) / total


def self_labelled(manifest, detections: list[dict], per_image: int = 3):
    """``manifest`` with each image's ``per_image`` best detections as its ground truth: the detector that
    made them scores a high mAP on it, so a device that finds other boxes scores visibly lower."""
    images = []
    for rec, det in zip(manifest.images, detections):
        boxes, labels = det["boxes"][:per_image], det["labels"][:per_image] - 1
        images.append(replace(rec, boxes=boxes.tolist(), labels=labels.tolist(), difficult=[False] * len(labels),
                              truncated=None))
    return replace(manifest, images=images)
