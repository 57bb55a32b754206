"""The check ``frcnn export`` runs before it writes: the exported graph against the checkpoint's ``Predictor``.

Shapes: D detections of one image.

Both detect on the same images (by default synthetic scenes of two sizes, ``check_images``); the exported
model must give the checkpoint's detections: every reference detection among the image's ``TOP`` best or
scoring above ``MIN_SCORE`` has a counterpart of its class with every box coordinate within ``BOX_TOLERANCE``
pixels and the score within ``SCORE_TOLERANCE`` (and the same the other way round), and both have the same
number of detections above ``MIN_SCORE``.

Ties: where detections of one class have equal scores (within ``TIE``: a flat-colour image gives many boxes of
exactly one score), top-N and NMS keep whichever of the tied boxes comes first in their own order, and ONNX
Runtime, TorchScript and the library order ties differently, so each may keep other boxes, and another number
of them. A detection tied in its own output that has no counterpart box is matched by a detection of its class
with the same score (within ``SCORE_TOLERANCE``) instead; the image's comparison is then *inconclusive* for
those boxes (``Comparison.tied``), the count above ``MIN_SCORE`` may differ, and the command says so. A
detection without a counterpart of its class and score still fails the check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..data.images import batch_from_images
from ..data.synthetic import render_image
from ..inference import Predictor

BOX_TOLERANCE = 1.0  # pixels of the input image
SCORE_TOLERANCE = 2e-3
MIN_SCORE = 0.5
TOP = 10
TIE = 1e-6  # scores of one output this close are equal: rounding cannot order them
CHECK_SIZES = ((375, 500), (500, 333), (375, 500))  # (height, width): two landscape scenes and a portrait one


def check_images(sizes: Sequence[tuple[int, int]] = CHECK_SIZES, seed: int = 0) -> list[Tensor]:
    """Synthetic scenes (``data.synthetic.render_image``) as uint8 ``[3, H, W]`` RGB, one per ``(H, W)``."""
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(np.ascontiguousarray(render_image(rng, w, h)[0].transpose(2, 0, 1)))
            for h, w in sizes]


@dataclass
class Comparison:
    """How far one image's exported detections are from the reference's."""

    box_px: float = 0.0
    score: float = 0.0
    counts: tuple[int, int] = (0, 0)  # detections above MIN_SCORE: reference, exported
    unmatched: list[str] = field(default_factory=list)
    compared: int = 0
    tied: int = 0  # detections matched by class and score only: tied ones whose box has no counterpart

    @property
    def ok(self) -> bool:
        return (self.box_px <= BOX_TOLERANCE and self.score <= SCORE_TOLERANCE and not self.unmatched
                and (self.counts[0] == self.counts[1] or self.tied > 0))

    @property
    def inconclusive(self) -> bool:
        """Whether ties decided some of the boxes (compared by class and score only)."""
        return self.tied > 0


def _describe(det: dict[str, Tensor], i: int) -> str:
    box = ", ".join(f"{v:.1f}" for v in det["boxes"][i].tolist())
    return f"label {int(det['labels'][i])} score {float(det['scores'][i]):.4f} box [{box}]"


def tied_scores(det: dict[str, Tensor]) -> Tensor:
    """bool ``[D]``: whether each detection shares its score (within ``TIE``) with another of its class."""
    scores, labels = det["scores"].double(), det["labels"]
    same_class = labels[:, None] == labels[None, :]
    close = (scores[:, None] - scores[None, :]).abs() <= TIE
    return ((same_class & close).sum(1) > 1) if len(scores) else torch.zeros(0, dtype=torch.bool)


def _match_into(result: Comparison, source: dict[str, Tensor], target: dict[str, Tensor], name: str) -> None:
    """For each of ``source``'s compared detections, the nearest ``target`` box of its class (or, for a tied one
    without a counterpart box, a ``target`` detection of its class and score)."""
    scores, tied = source["scores"], tied_scores(source)
    chosen = [i for i in range(len(scores)) if i < TOP or float(scores[i]) > MIN_SCORE]
    for i in chosen:
        same = (target["labels"] == source["labels"][i]).nonzero().squeeze(1)
        if same.numel() == 0:
            result.unmatched.append(f"{name} {_describe(source, i)}")
            continue
        gaps = (target["boxes"][same] - source["boxes"][i]).abs().amax(1)
        j = same[int(gaps.argmin())]
        score_gaps = (target["scores"][same].double() - float(scores[i])).abs()
        if float(gaps.min()) > BOX_TOLERANCE and bool(tied[i]) and float(score_gaps.min()) <= SCORE_TOLERANCE:
            result.tied += 1  # NMS kept another of the equal-scored boxes here
            continue
        result.box_px = max(result.box_px, float(gaps.min()))
        result.score = max(result.score, abs(float(target["scores"][j] - scores[i])))
        result.compared += 1


def compare_detections(reference: dict[str, Tensor], exported: dict[str, Tensor]) -> Comparison:
    """The largest differences between two images' detections (``{"boxes", "scores", "labels"}``, sorted by
    score), matched both ways (module docstring)."""
    result = Comparison(counts=(int((reference["scores"] > MIN_SCORE).sum()),
                                int((exported["scores"] > MIN_SCORE).sum())))
    _match_into(result, reference, exported, "the checkpoint's")
    _match_into(result, exported, reference, "the export's")
    return result


@dataclass
class Verification:
    """The comparison of every check image: ``worst`` (the largest box difference first), ``sizes``."""

    comparisons: list[Comparison]
    sizes: list[tuple[int, int]]
    detections: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def inconclusive(self) -> list[str]:
        """One line per check image where ties decided boxes: which, and how many detections."""
        return [f"check image {i + 1} ({w}x{h}): {c.tied} detection(s) tie in score with others of their class and "
                "were compared by class and score only (each runtime's NMS may keep another of equal-scored boxes)"
                for i, (c, (h, w)) in enumerate(zip(self.comparisons, self.sizes)) if c.inconclusive]

    @property
    def box_px(self) -> float:
        return max((c.box_px for c in self.comparisons), default=0.0)

    @property
    def score(self) -> float:
        return max((c.score for c in self.comparisons), default=0.0)

    def failure(self) -> str:
        """What went wrong, for the error message."""
        bad = [(i, c) for i, c in enumerate(self.comparisons) if not c.ok]
        i, c = bad[0]
        h, w = self.sizes[i]
        parts = [f"largest box difference {self.box_px:.3g} px (allowed {BOX_TOLERANCE:g})",
                 f"largest score difference {self.score:.3g} (allowed {SCORE_TOLERANCE:g})"]
        if c.counts[0] != c.counts[1] and not c.tied:
            parts.append(f"{c.counts[0]} detections above {MIN_SCORE} from the checkpoint, {c.counts[1]} from the "
                         "export")
        if c.unmatched:
            parts.append(f"{c.unmatched[0]} has no counterpart")
        return f"check image {i + 1} ({w}x{h}): " + "; ".join(parts)


def verify_export(reference: Predictor, exported, images: Sequence[Tensor]) -> Verification:
    """Detections of ``reference`` (a checkpoint's ``Predictor``) and ``exported`` (an ``ExportedPredictor``)
    on each uint8 image, compared (``compare_detections``)."""
    comparisons, count = [], 0
    for image in images:
        batch = batch_from_images([image], reference.settings.config.input)
        want = reference.run(batch).detections[0]
        got = exported.detect_image(image)
        comparisons.append(compare_detections(want, got))
        count += len(want["scores"])
    return Verification(comparisons, [tuple(im.shape[-2:]) for im in images], count)
