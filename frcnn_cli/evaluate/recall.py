"""Proposal recall against IoU (the paper's Fig. 2) and average recall.

For every non-difficult ground-truth object, its best IoU with any of the top-N proposals of its image
(proposals sorted by score, descending); recall at threshold t = fraction of objects whose best IoU is
>= t; average recall for N = mean of the recalls over the thresholds (0.5, 0.55, ..., 0.95 by default).
This is the standard "max IoU per object" recall: a proposal may cover several objects. (py-faster-rcnn's
``imdb.evaluate_recall`` instead matches greedily one-to-one, which can only give lower values.)
Thresholds are rounded to 6 decimals, so 0.7 means 0.7 and not ``np.arange``'s 0.7000000000000002.

Shapes: R proposals of an image, G its non-difficult objects, T thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..boxes import box_iou

DEFAULT_TOP_NS = (100, 300, 1000, 2000)


def _image_proposals(source, index: int) -> torch.Tensor:
    """Boxes ``[R, 4]`` of image ``index``, sorted by score, from a ProposalStore or a mapping."""
    if isinstance(source, Mapping):
        item = source.get(index)
        if item is None:
            return torch.zeros((0, 4), dtype=torch.float64)
    else:
        item = source.get(index)
    boxes = item[0] if isinstance(item, (tuple, list)) else item
    return torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def best_overlaps(source, manifest, top_ns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each non-difficult object's best IoU among its image's top N proposals, ``float64[len(top_ns), G]``
    (objects in manifest order), and the number of proposals of each image, ``int[num_images]``."""
    top_ns = [int(n) for n in top_ns]
    cols, counts = [], np.zeros(len(manifest.images), dtype=np.int64)
    for index, rec in enumerate(manifest.images):
        props = _image_proposals(source, index)
        counts[index] = len(props)
        keep = [j for j, d in enumerate(rec.difficult) if not d]
        if not keep:
            continue
        gt = torch.tensor([rec.boxes[j] for j in keep], dtype=torch.float64)
        props = props[: max(top_ns)]
        best = np.zeros((len(top_ns), len(keep)))
        if len(props):
            # running max over proposals in score order: row r = best IoU among the top r + 1
            running = torch.cummax(box_iou(props, gt), dim=0).values.numpy()
            for i, n in enumerate(top_ns):
                best[i] = running[min(n, len(props)) - 1]
        cols.append(best)
    return (np.concatenate(cols, axis=1) if cols else np.zeros((len(top_ns), 0))), counts


def proposal_recall(store_or_dict, manifest, *, iou_thresholds=None,
                    top_ns: Sequence[int] = DEFAULT_TOP_NS) -> dict:
    """Recall per N per IoU threshold over the non-difficult objects, and average recall per N.

    ``store_or_dict``: a :class:`~frcnn_cli.data.proposal_store.ProposalStore`, or a mapping manifest index ->
    boxes ``[R, 4]`` (or ``(boxes, scores)``) sorted by score; an index missing from a mapping has no
    proposals. Returns ``{"iou_thresholds": [T], "top_ns": [...], "recall": {N: [T floats]},
    "average_recall": {N: float}, "num_objects": int, "num_images": int, "mean_proposals": float}``
    (recall NaN when there are no objects).
    """
    if iou_thresholds is None:
        iou_thresholds = np.arange(0.5, 0.951, 0.05)
    thresholds = np.round(np.asarray(iou_thresholds, dtype=np.float64).reshape(-1), 6)
    top_ns = [int(n) for n in top_ns]
    if not top_ns or min(top_ns) < 1:
        raise ValueError(f"top_ns must be positive numbers of proposals, got {top_ns}")
    best, counts = best_overlaps(store_or_dict, manifest, top_ns)
    num_objects = best.shape[1]
    recall, average = {}, {}
    for i, n in enumerate(top_ns):
        if num_objects:
            values = (best[i][None, :] >= thresholds[:, None]).mean(axis=1)
        else:
            values = np.full(len(thresholds), np.nan)
        recall[n] = values.tolist()
        average[n] = float(values.mean()) if len(values) else float("nan")
    return {"iou_thresholds": thresholds.tolist(), "top_ns": top_ns, "recall": recall,
            "average_recall": average, "num_objects": int(num_objects), "num_images": len(manifest.images),
            "mean_proposals": float(counts.mean()) if len(counts) else 0.0}


def proposal_recall_of_boxes(proposals: Sequence, manifest, *, iou_thresholds=None,
                             top_ns: Sequence[int] = DEFAULT_TOP_NS) -> dict:
    """:func:`proposal_recall` of proposals held in memory: ``proposals[i]`` is image ``i``'s boxes
    ``[R_i, 4]`` (original pixels, sorted by score, a tensor or an array), one per manifest image, as a
    detector's forward gives them beside its detections."""
    if len(proposals) != len(manifest.images):
        raise ValueError(f"{len(proposals)} images of proposals for a manifest of {len(manifest.images)} images; "
                         "give one [R, 4] box array per manifest image, in manifest order")
    return proposal_recall(dict(enumerate(proposals)), manifest, iou_thresholds=iou_thresholds, top_ns=top_ns)
