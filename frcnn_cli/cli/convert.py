"""``frcnn convert caffe``: models of other frameworks as frcnn files; a summary on stderr, the path on stdout."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from . import console
from .options import hold_output

CAFFE_INPUT_HINT = ("they expect Caffe's input (BGR, 0-255, mean 102.9801,115.9465,122.7717, not divided): train "
                    "with a config that says so (docs/reproducing-the-paper.md, 'Caffe models')")


@click.group("convert")
def convert() -> None:
    """Models trained elsewhere as frcnn weights: Caffe models (py-faster-rcnn's, ImageNet ZF and VGG16)."""


@convert.command("caffe")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path), metavar="MODEL.caffemodel")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write: a weights file (.pth) for an ImageNet model, a checkpoint (.pt) for a "
                   "py-faster-rcnn model.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A detector's class names, one per line, in the order of its cls_score outputs (background "
                   "left out). Default: PASCAL VOC's 20 classes.")
@click.option("--backbone", type=click.Choice(("zf", "vgg16")), default=None,
              help="The network (default: from the layer names: conv1_1 is VGG16, conv1 is ZF).")
def caffe(model: Path, out: Path, classes_file: Path | None, backbone: str | None) -> None:
    """Convert a binary .caffemodel without Caffe: ImageNet ZF.v2 / VGG16.v2 to a weights file for --init (fc8
    left out); py-faster-rcnn's ZF_faster_rcnn_final / VGG16_faster_rcnn_final (and end-to-end models) to a
    checkpoint that detect and eval take as --model, with Caffe's input (BGR, 0-255, pixel means) and raw box
    deltas in its config. Both Caffe layouts (the V1 'layers' and the 'layer' messages) are read.
    """
    from ..convert.caffe import convert_caffe
    from ..data.name_lists import read_class_file

    hold_output(out, "--out", inputs={"the Caffe model": model, "--classes": classes_file})
    classes = read_class_file(classes_file) if classes_file is not None else None
    report = convert_caffe(model, out, backbone=backbone, classes=classes)
    console.info(escape(f"read {model}: Caffe net '{report.net}' ('{report.layout}' layout), {report.backbone}; "
                        f"{len(report.layers)} layers converted"
                        + (f", left out: {', '.join(report.dropped)}" if report.dropped else "")))
    if report.kind == "imagenet":
        if classes is not None:
            console.warn("--classes was ignored: an ImageNet model has no detection classes")
        console.info(escape(f"wrote {out}: the {report.backbone} backbone's ImageNet weights, a weights file for "
                            f"--init; {CAFFE_INPUT_HINT}"))
    else:
        console.info(escape(f"wrote {out}: a {report.backbone} checkpoint (stage '{report.stage}', parts "
                            f"{', '.join(report.parts)}, {len(report.classes)} classes) with Caffe's input and raw "
                            f"box deltas in its config"))
    click.echo(str(out))
