"""How well the anchors cover a training set's boxes, and anchors fitted to them.

Coverage is measured as the RPN sees the boxes: each image rescaled to every training scale
(``input.train_scales``, ``max_size``), its non-difficult boxes against the anchors of its whole stride-
``anchors.stride`` grid, only those inside the image (the cross-boundary anchors training ignores). A box's
best anchor IoU at 0.7 makes it a positive by the paper's threshold; at 0.5 it is what the regression can
reasonably reach: the fraction of boxes whose best anchor reaches 0.5 is the best possible recall.

The fit keeps the geometry of the RPN head (``len(scales) x len(ratios)`` anchors per cell of the grid)
and chooses the scales and ratios as YOLO's autoanchor does: k-means (on log sizes and log aspect ratios)
for a start, then a deterministic local search that raises the coverage on the real grid. Shapes: B boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from torch import Tensor

from ..config import AnchorConfig, Config, RPNConfig
from ..data.images import compute_scale, record_targets
from ..data.manifest import Manifest
from .anchors import generate_anchors

MAX_IMAGES = 20000  # images measured (evenly spread over the set)
# poor: a fifth of the boxes or more have no anchor at IoU 0.5. (The share at 0.7 is reported, not judged: at
# stride 16 a small box is at most 8 px from an anchor centre, which alone can keep it under 0.7; on the
# demo's shapes, 18 % at 0.7 and 83 % at 0.5, a fit to 38 % and 88 % trained to a lower mAP, docs/demo.md.)
POOR_AT_05 = 0.8
GAIN_NEEDED = 0.02  # a fit replaces the anchors when it raises the coverage at 0.5 or 0.7 by this much
_STEPS = (math.log(1.3), math.log(1.1), math.log(1.03))


@dataclass(frozen=True)
class ScaledImage:
    """One image at one training scale: ``(h, w)`` and its non-difficult boxes ``[G, 4]`` in those pixels."""

    size: tuple[int, int]
    boxes: Tensor


@dataclass(frozen=True)
class AnchorCoverage:
    """Fractions of the boxes whose best inside anchor reaches IoU 0.7 and 0.5, and the mean best IoU."""

    boxes: int
    at_07: float
    at_05: float
    mean_iou: float

    @property
    def poor(self) -> bool:
        return self.boxes > 0 and self.at_05 < POOR_AT_05

    def describe(self) -> str:
        if self.boxes == 0:
            return "no training box to measure the anchors on"
        return (f"{self.at_07:.0%} of the {self.boxes} training boxes have an anchor at IoU >= 0.7, "
                f"{self.at_05:.0%} at >= 0.5 (best possible recall)")

    def to_dict(self) -> dict:
        return {"boxes": self.boxes, "at_0.7": round(self.at_07, 4), "at_0.5": round(self.at_05, 4),
                "mean_iou": round(self.mean_iou, 4)}

    @classmethod
    def from_dict(cls, data: dict) -> AnchorCoverage:
        return cls(data["boxes"], data["at_0.7"], data["at_0.5"], data["mean_iou"])


def scaled_boxes(manifest: Manifest, cfg: Config, max_images: int = MAX_IMAGES) -> list[ScaledImage]:
    """The images with boxes (at most ``max_images``, evenly spread) at each training scale."""
    with_boxes = [rec for rec in manifest.images if not all(rec.difficult)]
    if len(with_boxes) > max_images:
        with_boxes = [with_boxes[i * len(with_boxes) // max_images] for i in range(max_images)]
    out = []
    for rec in with_boxes:
        boxes, _ = record_targets(rec)
        for target in cfg.input.train_scales:
            scale = compute_scale(rec.height, rec.width, target, cfg.input.max_size)
            size = (max(1, round(rec.height * scale)), max(1, round(rec.width * scale)))
            out.append(ScaledImage(size, boxes * scale))
    return out


@dataclass(frozen=True)
class _Boxes:
    """All boxes ``[B, 4]`` and the ``(h, w)`` of each one's image ``[B, 2]`` (float64 numpy: the search
    evaluates hundreds of candidates on small arrays, where torch's thread pool only waits)."""

    boxes: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, images: list[ScaledImage]) -> _Boxes:
        boxes = [im.boxes.double().reshape(-1, 4).numpy() for im in images]
        sizes = [np.tile(np.asarray(im.size, dtype=np.float64), (len(b), 1)) for im, b in zip(images, boxes)]
        if not boxes:
            return cls(np.zeros((0, 4)), np.zeros((0, 2)))
        return cls(np.concatenate(boxes), np.concatenate(sizes))


def _nearest_cell(centre: np.ndarray, low: np.ndarray, high: np.ndarray, stride: int, cells: np.ndarray,
                  bounds: tuple[float, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Per box and anchor shape ``[B, A]``, along one axis: the grid index whose anchor centre is nearest the
    box centre among the allowed ones (in the grid; inside ``bounds`` ``(-border, side + border)`` when
    given), and whether one is allowed. IoU falls with the distance of the centres along each axis
    (the overlap's side does), so the nearest allowed index is the best one."""
    first = np.zeros_like(centre)
    last = np.broadcast_to(cells[:, None] - 1, centre.shape)
    if bounds is not None:
        first = np.maximum(first, np.ceil((bounds[0] - low[None, :]) / stride - 1e-9))
        last = np.minimum(last, np.floor((bounds[1][:, None] - high[None, :]) / stride + 1e-9))
    index = np.round((centre - (low + high)[None, :] / 2) / stride)
    return np.minimum(np.maximum(index, first), last), first <= last


def _best_ious(data: _Boxes, anchors: AnchorConfig, rpn: RPNConfig) -> np.ndarray:
    """Each box's best IoU ``[B]`` with an anchor of its image's grid (inside the image under the
    cross-boundary rule), without building the grid: per anchor shape the best cell is the nearest allowed."""
    boxes, sizes = data.boxes, data.sizes
    if boxes.shape[0] == 0:
        return np.zeros(0)
    t = generate_anchors(anchors.base_size, anchors.ratios, anchors.scales).double().numpy()  # [A, 4]
    s, border = anchors.stride, float(rpn.allowed_border)
    inside = rpn.ignore_cross_boundary
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    ix, okx = _nearest_cell(np.repeat(cx[:, None], len(t), 1), t[:, 0], t[:, 2], s, np.ceil(sizes[:, 1] / s),
                            (-border, sizes[:, 1] + border) if inside else None)
    iy, oky = _nearest_cell(np.repeat(cy[:, None], len(t), 1), t[:, 1], t[:, 3], s, np.ceil(sizes[:, 0] / s),
                            (-border, sizes[:, 0] + border) if inside else None)
    ax1, ay1, ax2, ay2 = t[None, :, 0] + ix * s, t[None, :, 1] + iy * s, t[None, :, 2] + ix * s, t[None, :, 3] + iy * s
    iw = np.clip(np.minimum(ax2, boxes[:, 2:3]) - np.maximum(ax1, boxes[:, 0:1]), 0, None)
    ih = np.clip(np.minimum(ay2, boxes[:, 3:4]) - np.maximum(ay1, boxes[:, 1:2]), 0, None)
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None] - inter
    iou = np.where(okx & oky, inter / np.maximum(union, 1e-9), 0.0)
    return iou.max(axis=1)


def anchor_coverage(images: list[ScaledImage] | _Boxes, anchors: AnchorConfig, rpn: RPNConfig) -> AnchorCoverage:
    """The coverage of ``images`` (``scaled_boxes``) by the anchors of ``anchors`` under ``rpn``'s
    cross-boundary rule."""
    best = _best_ious(images if isinstance(images, _Boxes) else _Boxes.of(images), anchors, rpn)
    if best.size == 0:
        return AnchorCoverage(0, math.nan, math.nan, math.nan)
    return AnchorCoverage(int(best.size), float((best >= 0.7).mean()), float((best >= 0.5).mean()),
                          float(best.mean()))


def _kmeans_1d(values: np.ndarray, k: int, rounds: int = 30) -> list[float]:
    """k centres of 1-d ``values`` (Lloyd's algorithm from the quantiles: deterministic), ascending."""
    centres = np.quantile(values, [(2 * i + 1) / (2 * k) for i in range(k)])
    for _ in range(rounds):
        nearest = np.abs(values[:, None] - centres[None]).argmin(axis=1)
        for i in range(k):
            members = values[nearest == i]
            if members.size:
                centres[i] = members.mean()
    return sorted(float(c) for c in centres)


def _fitness(c: AnchorCoverage) -> float:
    return c.at_07 + c.at_05 + c.mean_iou


def _initial_guess(data: _Boxes, anchors: AnchorConfig) -> AnchorConfig:
    w = np.maximum(data.boxes[:, 2] - data.boxes[:, 0], 1.0)
    h = np.maximum(data.boxes[:, 3] - data.boxes[:, 1], 1.0)
    sizes = _kmeans_1d(np.log(np.sqrt(w * h)), len(anchors.scales))
    ratios = _kmeans_1d(np.log(h / w), len(anchors.ratios))
    return replace(anchors, scales=tuple(round(math.exp(s) / anchors.base_size, 3) for s in sizes),
                   ratios=tuple(round(math.exp(r), 3) for r in ratios))


def _search(images: _Boxes, start: AnchorConfig, rpn: RPNConfig) -> tuple[AnchorConfig, AnchorCoverage]:
    """Coordinate search in log space over every scale and ratio, each step tried both ways."""
    best, best_cov = start, anchor_coverage(images, start, rpn)
    for step in _STEPS:
        improved = True
        while improved:
            improved = False
            for key in ("scales", "ratios"):
                for i in range(len(getattr(best, key))):
                    for sign in (1, -1):
                        values = list(getattr(best, key))
                        values[i] = round(values[i] * math.exp(sign * step), 3)
                        trial = replace(best, **{key: tuple(values)})
                        cov = anchor_coverage(images, trial, rpn)
                        if _fitness(cov) > _fitness(best_cov) + 1e-9:
                            best, best_cov, improved = trial, cov, True
    return replace(best, scales=tuple(sorted(best.scales)), ratios=tuple(sorted(best.ratios))), best_cov


def fit_anchors(images: list[ScaledImage], anchors: AnchorConfig,
                rpn: RPNConfig) -> tuple[AnchorConfig, AnchorCoverage]:
    """Scales and ratios (as many as ``anchors`` has) fitted to ``images``, and their coverage; the search
    starts from the k-means guess and from ``anchors`` itself, and keeps the better."""
    data = _Boxes.of(images)
    results = [_search(data, start, rpn) for start in (_initial_guess(data, anchors), anchors)]
    return max(results, key=lambda r: _fitness(r[1]))


@dataclass(frozen=True)
class AnchorDecision:
    """What training does with the anchors: ``config`` (the fitted one when ``fitted``), the coverage of the
    configured anchors (``before``) and of a fit (``after``, None when none was tried), and a sentence."""

    config: Config
    before: AnchorCoverage
    after: AnchorCoverage | None
    fitted: bool
    message: str
    warn: bool  # the message is a warning (poor coverage kept)

    def to_dict(self) -> dict:
        a = self.config.anchors
        return {"fitted": self.fitted, "before": self.before.to_dict(),
                "after": None if self.after is None else self.after.to_dict(),
                "scales": list(a.scales), "ratios": list(a.ratios)}

    @classmethod
    def from_dict(cls, data: dict, config: Config) -> AnchorDecision:
        """The decision ``to_dict`` recorded (a run's ``state.json``), with the ``config`` it trains with; its
        message is not kept (it was said when the decision was made)."""
        after = None if data["after"] is None else AnchorCoverage.from_dict(data["after"])
        return cls(config, AnchorCoverage.from_dict(data["before"]), after, data["fitted"], "", False)


def _set_option(anchors: AnchorConfig) -> str:
    scales = ",".join(f"{s:g}" for s in anchors.scales)
    ratios = ",".join(f"{r:g}" for r in anchors.ratios)
    return f"--set anchors.scales={scales} --set anchors.ratios={ratios}"


def decide_anchors(cfg: Config, manifest: Manifest, *, may_fit: bool = True) -> AnchorDecision:
    """Measure the coverage of ``cfg``'s anchors on ``manifest`` and, when it is poor, fit: with
    ``anchors.auto`` the fitted anchors replace them (``auto`` then false: they are the config's now), without
    it they stay and the message gives the ``--set`` that would fit. ``may_fit=False`` (an RPN loaded from a
    checkpoint keeps the anchors it learnt): measure only."""
    images = scaled_boxes(manifest, cfg)
    before = anchor_coverage(images, cfg.anchors, cfg.rpn)
    scale = "/".join(str(s) for s in cfg.input.train_scales)
    if not before.poor or not may_fit:
        return AnchorDecision(cfg, before, None, False, f"anchors at scale {scale}: {before.describe()}", False)
    fitted, after = fit_anchors(images, cfg.anchors, cfg.rpn)
    gain = max(after.at_05 - before.at_05, after.at_07 - before.at_07)
    if gain < GAIN_NEEDED:
        return AnchorDecision(cfg, before, after, False, f"anchors at scale {scale}: {before.describe()}; no 3x3 "
                              "anchors on this grid do better", False)
    if cfg.anchors.auto:
        new = replace(cfg, anchors=replace(fitted, auto=False))
        return AnchorDecision(new, before, after, True, (
            f"anchors fitted to the training boxes at scale {scale}: scales {list(fitted.scales)}, ratios "
            f"{list(fitted.ratios)} (were {list(cfg.anchors.scales)}, {list(cfg.anchors.ratios)}): "
            f"{after.describe()}; before: {before.at_07:.0%} and {before.at_05:.0%}. --set anchors.auto=false "
            "keeps the configured ones"), False)
    return AnchorDecision(cfg, before, after, False, (
        f"the anchors cover the training boxes poorly at scale {scale}: {before.describe()}. They are kept "
        f"(anchors.auto is false, as in the paper presets); {_set_option(fitted)} would reach {after.at_07:.0%} and "
        f"{after.at_05:.0%}"), True)


def box_spread(manifest: Manifest) -> dict | None:
    """The spread of the non-difficult boxes: quantiles (10, 50, 90 %) of their size ``sqrt(w * h)`` in
    pixels and as a fraction of their image's shorter side (what the training scale multiplies), and of their
    aspect ratio ``h / w``; None without boxes."""
    size, rel, aspect = [], [], []
    for rec in manifest.images:
        short = min(rec.width, rec.height)
        for box, hard in zip(rec.boxes, rec.difficult):
            w, h = max(box[2] - box[0], 1e-6), max(box[3] - box[1], 1e-6)
            if not hard:
                size.append(math.sqrt(w * h))
                rel.append(math.sqrt(w * h) / short)
                aspect.append(h / w)
    if not size:
        return None
    q = (0.1, 0.5, 0.9)
    return {"boxes": len(size), "size": np.quantile(size, q).tolist(), "relative": np.quantile(rel, q).tolist(),
            "aspect": np.quantile(aspect, q).tolist()}


def describe_spread(spread: dict) -> str:
    s, r, a = spread["size"], spread["relative"], spread["aspect"]
    return (f"box sizes sqrt(w*h): {s[0]:.0f} / {s[1]:.0f} / {s[2]:.0f} px (10 % / median / 90 %), "
            f"{r[0]:.0%} / {r[1]:.0%} / {r[2]:.0%} of the image's shorter side (at training scale S a box is "
            f"about that fraction of S); aspect h/w {a[0]:.2f} / {a[1]:.2f} / {a[2]:.2f}")
