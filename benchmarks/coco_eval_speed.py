"""COCO evaluation time: ``frcnn_cli.evaluate.coco.evaluate_coco`` with faster-coco-eval against pycocotools.

Both evaluators run in the same process on the same synthetic set (default 5,000 images x 80 classes,
about 7.3 objects per image as COCO val2017, 1 % crowd regions; 100 detections per image: jittered
copies of the objects and random boxes, in COCO's non-contiguous category ids), one after the other
(order alternated per repeat), and must give the same 12 summary numbers and per-class APs (to 1e-4).
Times cover the whole ``evaluate_coco`` call (results list, ground truth, loadRes, evaluate,
accumulate, summarize).

    python benchmarks/coco_eval_speed.py --quick     # 500 images
    python benchmarks/coco_eval_speed.py             # 5,000 images x 80 classes
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from harness import cpu_name

from frcnn_cli.data.manifest import ImageRecord, Manifest
from frcnn_cli.evaluate.coco import SUMMARY, evaluate_coco

COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _image(rng: np.random.Generator, i: int, k: int) -> tuple[ImageRecord, dict]:
    """One 640x480 image with ~7 objects (log-normal sizes) and its 100 detections."""
    count = int(rng.poisson(7.3))
    wh = np.minimum(np.exp(rng.normal(3.8, 1.0, (count, 2))), [639.0, 479.0]).clip(2, None)
    xy = rng.uniform(0, 1, (count, 2)) * ([640.0, 480.0] - wh)
    boxes = np.concatenate((xy, xy + wh), 1).round(2)
    labels = rng.integers(0, k, count)
    crowd = (rng.random(count) < 0.01).tolist()
    rec = ImageRecord(f"{i:06d}", f"{i:06d}.jpg", 640, 480, boxes.tolist(), labels.tolist(), list(crowd),
                      crowd=list(crowd), area=(wh.prod(1) * rng.uniform(0.5, 0.9, count)).tolist(),
                      coco_id=100_000 + 7 * i)
    hits = min(count * 3, 60)
    src = rng.integers(0, max(count, 1), hits)
    jitter = boxes[src] + rng.normal(0, 0.08, (hits, 4)) * np.tile(wh[src], 2) if count else None
    noise_xy = rng.uniform(0, 600, (100 - hits, 2))
    noise = np.concatenate((noise_xy, noise_xy + rng.uniform(8, 200, (100 - hits, 2))), 1)
    det_boxes = np.concatenate((jitter if count else np.zeros((0, 4)), noise))
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
    det_labels = np.concatenate((labels[src] if count else np.zeros(0, int), rng.integers(0, k, 100 - hits))) + 1
    scores = np.concatenate((rng.uniform(0.3, 1.0, hits if count else 0), rng.uniform(0.05, 0.7, 100 - hits)))
    return rec, {"boxes": det_boxes, "scores": scores, "labels": det_labels}


def synthetic_set(num_images: int, k: int = 80, seed: int = 0) -> tuple[Manifest, list[dict]]:
    rng = np.random.default_rng(seed)
    pairs = [_image(rng, i, k) for i in range(num_images)]
    manifest = Manifest("coco-synthetic", [f"class{c}" for c in COCO_IDS[:k]], "/", [r for r, _ in pairs],
                        category_ids=COCO_IDS[:k])
    return manifest, [d for _, d in pairs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="500 images instead of 5,000")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    n = args.images or (500 if args.quick else 5000)
    manifest, detections = synthetic_set(n)
    objects = sum(len(r.labels) for r in manifest.images)
    print(f"{n} images x {len(manifest.classes)} classes, {objects} objects, "
          f"{sum(len(d['scores']) for d in detections)} detections; CPU {cpu_name()} ({os.cpu_count()} "
          f"logical CPUs), load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    times: dict[str, list[float]] = {"faster-coco-eval": [], "pycocotools": []}
    results = {}
    for r in range(args.repeats):
        for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
            start = time.perf_counter()
            results[name] = evaluate_coco(manifest, detections, evaluator=name)
            times[name].append(time.perf_counter() - start)
    fast, ref = results["faster-coco-eval"], results["pycocotools"]
    worst = max(abs(fast["stats"][key] - ref["stats"][key]) for key in SUMMARY)
    worst_class = max(abs(fast["ap"][c] - ref["ap"][c]) for c in manifest.classes)
    print(" ".join(f"{key} {ref['stats'][key]:.4f}" for key in SUMMARY) + f" ({ref['evaluator']})")
    print(f"largest difference: summary {worst:.2e}, per-class AP {worst_class:.2e} "
          f"({'same to 1e-4' if max(worst, worst_class) <= 1e-4 else 'DIFFERENT'}; {fast['evaluator']})")
    f, s = min(times["faster-coco-eval"]), min(times["pycocotools"])
    print(f"evaluate_coco: faster-coco-eval {f:.2f} s | pycocotools {s:.2f} s | ratio {f / s:.3f} "
          f"({s / f:.1f}x faster)")


if __name__ == "__main__":
    main()
