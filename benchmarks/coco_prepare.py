"""``frcnn prepare coco`` on a file the size of COCO train2017: wall time and peak resident memory.

Writes into OUT a synthetic ``instances_train2017.json`` with train2017's statistics (118,287 images,
1,021 of them without annotations; 860,001 annotations, about 1 % crowd regions with RLE masks; COCO's
80 non-contiguous category ids; polygon segmentations that bring the file to about train2017's 448 MB;
image ids drawn from 1..581,929 as COCO's; annotations in an order unrelated to the images'; a few
zero-width boxes and boxes reaching 0.5 px outside their image), a file per image under ``OUT/images``
(a hard link to one black JPEG of its size: prepare reads each file's header), then runs ``frcnn prepare
coco`` in a child process and reports its wall time and peak RSS (``getrusage(RUSAGE_CHILDREN)``). The
file is reused when present (delete OUT after a change of this script).

    python benchmarks/coco_prepare.py /tmp/coco-bench            # train2017's size
    python benchmarks/coco_prepare.py /tmp/coco-bench --quick    # a tenth of it
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # 80 ids
IMAGES, EMPTY, ANNOTATIONS, CROWD_FRACTION = 118_287, 1_021, 860_001, 0.0105
SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (640, 425), (500, 375), (640, 640), (612, 612)]


def _polygons(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` polygon texts of 8 to 120 coordinates with 2 decimals (a pool reused by the annotations)."""
    out = []
    for n in rng.geometric(1 / 27, count).clip(4, 60):
        coords = rng.uniform(0, 640, 2 * n).round(2)
        out.append("[[" + ",".join(f"{v:.2f}" for v in coords) + "]]")
    return out


def _rles(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` uncompressed crowd RLE texts (COCO's crowd masks: a few hundred run lengths)."""
    out = []
    for n in rng.integers(100, 1500, count):
        counts = ",".join(str(v) for v in rng.integers(1, 400, n))
        out.append(f'{{"counts":[{counts}],"size":[480,640]}}')
    return out


def _image_entries(ids: np.ndarray, sizes: np.ndarray) -> list[str]:
    return [json.dumps({"license": 3, "file_name": f"{i:012d}.jpg",
                        "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
                        "height": int(h), "width": int(w), "date_captured": "2013-11-14 11:18:45",
                        "flickr_url": f"http://farm9.staticflickr.com/8186/{i}_4e622c8349_z.jpg", "id": int(i)})
            for i, (w, h) in zip(ids.tolist(), sizes.tolist())]


def _boxes(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """[A, 4] x, y, w, h inside each image (2 decimals); sizes log-normal, small objects most common."""
    wh = np.minimum(np.exp(rng.normal(3.6, 1.1, (len(sizes), 2))), sizes - 1).round(2).clip(1, None)
    xy = (rng.uniform(0, 1, (len(sizes), 2)) * (sizes - wh)).round(2)
    boxes = np.concatenate((xy, wh), axis=1)
    boxes[rng.choice(len(boxes), 12, replace=False), 2] = 0.0  # zero width: dropped with the warning
    edge = rng.choice(len(boxes), 25, replace=False)  # 0.5 px past the right edge: clipped
    boxes[edge, 2] = sizes[edge, 0] - boxes[edge, 0] + 0.5
    return boxes


def write_annotations(path: Path, images_dir: Path, scale: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_img, n_ann = round(IMAGES * scale), round(ANNOTATIONS * scale)
    ids = rng.choice(np.arange(1, 581_930), n_img, replace=False)
    sizes = np.asarray(SIZES)[rng.integers(0, len(SIZES), n_img)]
    annotated = n_img - round(EMPTY * scale)
    owner = np.concatenate((np.arange(annotated), rng.integers(0, annotated, n_ann - annotated)))
    owner = rng.permutation(owner)
    boxes = _boxes(rng, sizes[owner].astype(np.float64))
    crowd = rng.random(n_ann) < CROWD_FRACTION
    cats = np.asarray(COCO_IDS)[rng.integers(0, 80, n_ann)]
    polys, rles = _polygons(rng, 20_000), _rles(rng, 500)
    pick_poly, pick_rle = rng.integers(0, len(polys), n_ann), rng.integers(0, len(rles), n_ann)
    area = (boxes[:, 2] * boxes[:, 3] * rng.uniform(0.4, 0.9, n_ann)).tolist()
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info": {"description": "synthetic train2017-sized COCO file", "year": 2017}, '
                '"licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, '
                '"name": "Attribution-NonCommercial-ShareAlike License"}], "images": [')
        f.write(",".join(_image_entries(ids, sizes)))
        f.write('], "annotations": [')
        for j, (x, y, w, h) in enumerate(boxes.tolist()):
            seg = rles[pick_rle[j]] if crowd[j] else polys[pick_poly[j]]
            f.write(("," if j else "") + f'{{"segmentation": {seg}, "area": {area[j]!r}, "iscrowd": {int(crowd[j])}, '
                    f'"image_id": {ids[owner[j]]}, "bbox": [{x},{y},{w},{h}], "category_id": {cats[j]}, '
                    f'"id": {j + 1}}}')
        cat_entries = [{"supercategory": "thing", "id": c, "name": f"category{c}"} for c in COCO_IDS]
        f.write('], "categories": ' + json.dumps(cat_entries) + "}")
    images_dir.mkdir(parents=True, exist_ok=True)
    originals = {}
    for w, h in SIZES:  # one JPEG per size; every image a hard link to one of them (inodes, no data)
        originals[(w, h)] = images_dir / f"size-{w}x{h}.jpg"
        Image.new("RGB", (w, h)).save(originals[(w, h)], quality=50)
    for i, (w, h) in zip(ids.tolist(), sizes.tolist()):
        os.link(originals[(w, h)], images_dir / f"{i:012d}.jpg")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder for the synthetic file, the image files and the manifest")
    p.add_argument("--quick", action="store_true", help="a tenth of train2017's size")
    args = p.parse_args()
    scale = 0.1 if args.quick else 1.0
    args.out.mkdir(parents=True, exist_ok=True)
    ann = args.out / f"instances_train2017{'_quick' if args.quick else ''}.json"
    images_dir = args.out / "images"
    if not ann.exists():
        start = time.perf_counter()
        write_annotations(ann, images_dir, scale)
        print(f"wrote {ann} ({ann.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    manifest = args.out / "train2017.json"
    cmd = [sys.executable, "-m", "frcnn_cli", "prepare", "coco", "--annotations", str(ann),
           "--images", str(images_dir), "--out", str(manifest)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print("\n".join(result.stderr.splitlines()[-4:]))
    if result.returncode != 0:
        sys.exit(f"prepare coco failed ({result.returncode})")
    print(f"prepare coco: {seconds:.1f} s wall, peak RSS {peak:.0f} MiB; annotation file "
          f"{ann.stat().st_size / 2**20:.0f} MiB, manifest {manifest.stat().st_size / 2**20:.0f} MiB; "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
