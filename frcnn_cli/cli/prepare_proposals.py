"""``frcnn prepare proposals``: Selective Search / EdgeBoxes / any tool's proposals into the HDF5 proposal store."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..data.manifest import read_manifest
from . import console
from .options import hold_output, positive_int

FORMAT_HELP = ("Layout of the file's boxes: yxyx1 (R-CNN's .mat files: 1-based inclusive y1 x1 y2 x2), xyxy1 "
               "(1-based inclusive x1 y1 x2 y2), xyxy (0-based continuous, frcnn's), xywh (0-based x y w h: "
               "OpenCV), xywh1 (1-based x y w h: the MATLAB EdgeBoxes toolbox). Default: yxyx1 for .mat, xyxy for "
               "JSON and CSV.")


def _report(report, out: Path) -> None:
    c = report.counts
    order = "the file's scores" if report.scored else "the file's order (rank scores (R - r) / R)"
    console.info(f"{report.images} images: {c.kept} proposals kept of {c.read} read (box layout {report.box_format}, "
                 f"ordered by {order}); dropped: {c.empty} empty after clipping, {c.duplicates} duplicates, "
                 f"{c.over_top_n} over --top-n")
    if report.unused:
        console.info(f"{report.unused} images of the file are not in the manifest and were left out")
    if report.without_boxes:
        console.warn(f"{report.without_boxes} images have no proposal at all (none in the file, or none left "
                     "inside the image); a detector sees only their ground truth in training and finds nothing "
                     "in them at test time")
    if c.far_outside > 0.01 * max(c.read, 1):
        console.warn(f"{c.far_outside} of the {c.read} boxes reached more than a pixel outside their image and were "
                     f"clipped; if the file's boxes are not {report.box_format}, run again with the right "
                     f"--box-format (and another --out than {escape(str(out))})")


@click.command("proposals")
@click.option("--from", "from_paths", required=True, multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The proposals: R-CNN's / Fast R-CNN's .mat file (MATLAB v5, v7 or v7.3: 'images' and "
                   "'boxes' cell arrays), or a .json / .csv of boxes per image id (docs/formats.md). Repeat it "
                   "for a manifest of several sets (07+12: VOC2007's and VOC2012's files).")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The manifest whose images they are (matched by image id).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="HDF5 proposal file to write (what train-detector --proposals and eval --test-proposals take).")
@click.option("--top-n", type=positive_int, default=None, help="Keep at most N proposals per image (the paper: 2000).")
@click.option("--box-format", type=click.Choice(["yxyx1", "xyxy1", "xyxy", "xywh", "xywh1"]), default=None,
              help=FORMAT_HELP)
def proposals(from_paths: tuple[Path, ...], data: Path, out: Path, top_n: int | None, box_format: str | None) -> None:
    """External proposals (Selective Search, EdgeBoxes, …) as a proposal file for a manifest.

    Boxes become 0-based continuous original pixels, clipped to the image; empty ones and duplicates are
    dropped; a file without scores keeps its order through rank scores. Every manifest image must be in the
    file (by id); the file may hold more.
    """
    from ..data.external_proposals import import_proposals

    hold_output(out, "--out", inputs={"--from": list(from_paths), "--data": data})
    manifest = read_manifest(data)
    with console.ProgressReporter("proposals", every=500) as bar:
        report = import_proposals(from_paths, manifest, data, out, top_n=top_n, box_format=box_format,
                                  progress=bar, on_note=lambda m: console.info(escape(m)))
    _report(report, out)
    click.echo(str(out))
