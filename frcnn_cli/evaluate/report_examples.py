"""The report's examples: per class its worst false positives and its missed objects, as pictures.

Worst false positives are the highest-scoring ones (they cost the most precision); missed objects are
shown largest first (the least excusable). A page must stay small on a large test set, so at most
``per_class`` of each per class and ``max_examples`` in all are drawn, and the page says how many exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np

from .error_analysis import FP_KINDS, Classified
from .thumbnails import Box, thumbnail

MAX_EXAMPLES = 120
PER_CLASS = 3


@dataclass(frozen=True)
class Example:
    """One picture to draw: the image, the box in question, whether it is a missed object, a caption."""

    image: int
    focus: Box
    missed: bool
    caption: str


def _false_positive_examples(classified: Classified, k: int, n: int, manifest) -> list[Example]:
    fps, objects = classified.false_positives, classified.objects
    mine = np.nonzero(fps.cls == k)[0]
    mine = mine[np.argsort(-fps.score[mine], kind="stable")][:n]
    name = classified.classes[k]
    out = []
    for i in mine.tolist():
        kind = FP_KINDS[fps.kind[i]]
        if fps.target[i] >= 0:
            what = f"IoU {fps.iou[i]:.2f} with a {classified.classes[objects.labels[fps.target[i]]]}"
        else:
            what = f"best IoU {fps.iou[i]:.2f}"
        box = Box(tuple(fps.box[i].tolist()), name, float(fps.score[i]))
        caption = f"{kind}: {name} {fps.score[i]:.2f}, {what} ({manifest.images[fps.image[i]].id})"
        out.append(Example(int(fps.image[i]), box, False, caption))
    return out


def _missed_examples(classified: Classified, k: int, n: int, manifest) -> list[Example]:
    objects = classified.objects
    mine = np.nonzero(objects.missed & (objects.labels == k))[0]
    boxes = objects.boxes[mine]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    mine = mine[np.argsort(-area, kind="stable")][:n]
    name = classified.classes[k]
    out = []
    for g in mine.tolist():
        x1, y1, x2, y2 = objects.boxes[g].tolist()
        caption = f"missed {name}, {x2 - x1:.0f}×{y2 - y1:.0f} px ({manifest.images[objects.image[g]].id})"
        out.append(Example(int(objects.image[g]), Box((x1, y1, x2, y2), name), True, caption))
    return out


def choose_examples(classified: Classified, manifest, *, per_class: int = PER_CLASS,
                    max_examples: int = MAX_EXAMPLES) -> tuple[dict[str, list[Example]], int]:
    """Per class name its examples (false positives, then missed objects), and the number each class kept to
    per kind: ``per_class``, fewer when ``2 * per_class`` times the number of classes exceeds
    ``max_examples`` (at least 1; then classes are cut off in order once ``max_examples`` is reached)."""
    k = len(classified.classes)
    each = max(1, min(per_class, max_examples // max(1, 2 * k)))
    chosen, total = {}, 0
    for c, name in enumerate(classified.classes):
        items = (_false_positive_examples(classified, c, each, manifest)
                 + _missed_examples(classified, c, each, manifest))
        items = items[: max(0, max_examples - total)]
        total += len(items)
        chosen[name] = items
    return chosen, each


def _image_boxes(manifest, image: int, detections: list) -> tuple[list[Box], list[Box]]:
    rec = manifest.images[image]
    truth = [Box(tuple(b), manifest.classes[label] + (" (difficult)" if hard else ""))
             for b, label, hard in zip(rec.boxes, rec.labels, rec.difficult)]
    det = detections[image]
    boxes, scores, labels = (np.asarray(det[key]).reshape(shape) for key, shape in
                             (("boxes", (-1, 4)), ("scores", (-1,)), ("labels", (-1,))))
    found = [Box(tuple(b), manifest.classes[int(lab) - 1], float(s))
             for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist())]
    return truth, found


def examples_html(classified: Classified, manifest, detections: list, *, per_class: int = PER_CLASS,
                  max_examples: int = MAX_EXAMPLES) -> str:
    """The examples section's body: a note on the cap, then per class a row of captioned pictures."""
    chosen, each = choose_examples(classified, manifest, per_class=per_class, max_examples=max_examples)
    shown = sum(len(v) for v in chosen.values())
    n_fp = len(classified.false_positives.cls)
    n_missed = int(classified.objects.missed.sum())
    parts = [f'<p class="note">{shown} pictures of {n_fp} false positives and {n_missed} missed objects: per '
             f"class its {each} highest-scoring false positives and {each} largest missed objects, at most "
             f"{max_examples} pictures in all (so that a large test set still gives a small page). White: ground "
             "truth; thin coloured: other detections scoring at least 0.5; thick: the error.</p>"]
    fps, objects = classified.false_positives, classified.objects
    for k, (name, items) in enumerate(chosen.items()):
        parts.append(f"<h3>{escape(name)}</h3>")
        if not items:
            has_errors = (fps.cls == k).any() or (objects.missed & (objects.labels == k)).any()
            why = "not shown: the cap on pictures was reached" if has_errors else "no false positives, none missed"
            parts.append(f'<p class="note">{why}</p>')
            continue
        parts.append('<div class="examples">')
        for ex in items:
            truth, found = _image_boxes(manifest, ex.image, detections)
            uri = thumbnail(manifest.image_path(manifest.images[ex.image]), ex.focus, ground_truth=truth,
                            detections=found, classes=manifest.classes, focus_missed=ex.missed)
            parts.append(f'<figure><img src="{uri}" alt="{escape(ex.caption)}">'
                         f"<figcaption>{escape(ex.caption)}</figcaption></figure>")
        parts.append("</div>")
    return "".join(parts)
