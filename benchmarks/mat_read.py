"""Reading a Selective Search MAT-file of VOC 2007 test's size: frcnn's own reader against scipy.io.loadmat.

The file: ``--images`` ids and as many ``R x 4`` box matrices of whole numbers (R around ``--boxes``), saved as
MATLAB does (``save -v7``: compressed elements, whole-valued doubles stored as uint16; the tests' writer,
``tests/mat_files.py``), like Fast R-CNN's ``selective_search_data/voc_2007_test.mat`` (4952 images, about
2000 boxes each). Timed: ``frcnn_cli.data.mat_file.read_mat`` and the peer ``scipy.io.loadmat`` (when scipy is
installed: it is not an frcnn dependency, ``pip install scipy`` to measure it) reading ``images`` and
``boxes`` (scipy with ``mat_dtype=True``, so that both return float64 matrices, as MATLAB's class says,
not the uint16 the file stores); then the whole ``frcnn prepare proposals`` (``import_proposals``: read,
convert, clean, write the HDF5 store). One thread; CPU time of the process by default (``--clock wall`` for wall time).

    python benchmarks/mat_read.py --quick          # 300 images
    python benchmarks/mat_read.py                  # 4952 images x ~2000 boxes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import cpu_name, ratio_line

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mat_files import Cell, write_v5  # noqa: E402

from frcnn_cli.data.external_proposals import import_proposals  # noqa: E402
from frcnn_cli.data.manifest import ImageRecord, Manifest  # noqa: E402
from frcnn_cli.data.mat_file import read_mat  # noqa: E402


def _ss_like(count: int, boxes: int, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    """Image ids and R-CNN-style boxes (1-based [y1 x1 y2 x2] inside a 375 x 500 image)."""
    rng = np.random.default_rng(seed)
    ids, rows = [f"{k:06d}" for k in range(1, count + 1)], []
    for _ in ids:
        r = int(rng.integers(boxes // 2, boxes * 3 // 2))
        y = np.sort(rng.integers(1, 376, size=(r, 2)), axis=1)
        x = np.sort(rng.integers(1, 501, size=(r, 2)), axis=1)
        rows.append(np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], axis=1).astype(np.float64))
    return ids, rows


def _timed(clock, run) -> tuple[float, object]:
    start = clock()
    result = run()
    return clock() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4952)
    parser.add_argument("--boxes", type=int, default=2000, help="Mean boxes per image.")
    parser.add_argument("--runs", type=int, default=3, help="Timed reads each (median; interleaved).")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="300 images, one run.")
    args = parser.parse_args()
    if args.quick:
        args.images, args.runs = 300, 1
    torch.set_num_threads(1)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    try:
        import scipy.io as peer
    except ImportError:
        peer = None
    with tempfile.TemporaryDirectory() as tmp:
        ids, rows = _ss_like(args.images, args.boxes)
        path = write_v5(Path(tmp) / "ss.mat", {"images": Cell(ids), "boxes": Cell(rows, row=True)})
        total = sum(len(r) for r in rows)
        print(f"{cpu_name()}; {args.images} images, {total:,} boxes, {path.stat().st_size / 2**20:.1f} MiB "
              f"(compressed); clock: {args.clock}, 1 thread")
        ours, theirs = [], []
        for _ in range(args.runs):
            seconds, found = _timed(clock, lambda: read_mat(path, ("images", "boxes")))
            ours.append(seconds)
            assert found["images"] == ids and all(np.array_equal(a, b) for a, b in zip(found["boxes"], rows))
            if peer is not None:
                seconds, data = _timed(clock, lambda: peer.loadmat(path, variable_names=["images", "boxes"],
                                                                 mat_dtype=True))
                theirs.append(seconds)
                assert np.array_equal(data["boxes"].ravel()[0], rows[0])
        print(f"frcnn read_mat: {np.median(ours):.2f} s")
        if theirs:
            print(ratio_line("reading the MAT-file (time)", float(np.median(ours)), float(np.median(theirs)), "s",
                             peer_name="scipy.io.loadmat"))
        else:
            print("scipy is not installed: no peer figure (pip install scipy to measure scipy.io.loadmat)")
        records = [ImageRecord(i, f"{i}.jpg", 500, 375, [], [], []) for i in ids]
        manifest = Manifest("voc2007-test", ["a"], tmp, records)
        seconds, report = _timed(clock, lambda: import_proposals(path, manifest, Path(tmp) / "m.json",
                                                                 Path(tmp) / "ss.h5", top_n=2000))
        print(f"prepare proposals (read, convert, clean, write {report.counts.kept:,} boxes to HDF5): {seconds:.2f} s")


if __name__ == "__main__":
    main()
