"""``frcnn prepare voc|folder|coco|synth``: datasets to manifests; a summary on stderr, the paths on stdout."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..data.manifest import Manifest, PrepareReport, read_manifest, write_manifest
from ..data.synthetic_sizes import DEFAULT_SEED, DEFAULT_TEST, DEFAULT_TRAIN
from ..errors import ConfigError
from . import console
from .options import FiniteFloatRange, hold_output

MAX_WARNINGS = 10  # warnings listed one by one; the rest are counted


def _quiet_progress(description: str) -> console.ProgressReporter:
    """The library's ``progress(done, total)`` as a rich bar on a terminal (silent otherwise)."""
    return console.ProgressReporter(description, quiet=not console.err_console.is_terminal)


def _warn_classes_without_objects(report: PrepareReport, path: Path) -> None:
    missing = report.classes_without_objects
    if not missing:
        return
    names = ", ".join(repr(name) for name in missing)
    one = len(missing) == 1
    which, them, their = (f"class {names} has", "it", "its") if one else (f"classes {names} have", "them", "their")
    console.warn(escape(f"{which} no objects (difficult ones aside) in split {report.name} ({path}): a model "
                        f"trained on this split never learns {them}, and {their} AP on it is n/a; check the "
                        "class list and the annotations"))


def _show_report(report: PrepareReport, path: Path, manifest: Manifest | None = None) -> None:
    rows = [[name, str(n), str(hard), str(images)] for name, (n, hard, images) in report.per_class.items()]
    rows.append(["[bold]all[/bold]", str(report.objects), str(report.difficult), str(report.images)])
    console.table(report.name, ["class", "objects", "difficult", "images"], rows)
    (w0, h0), (w1, h1) = report.min_size, report.max_size
    crowd = f", including {report.crowd} crowd region{'s' * (report.crowd != 1)}" if report.crowd else ""
    console.info(f"{report.images} images ({report.empty_images} without objects), {report.objects} objects "
                 f"({report.difficult} difficult{crowd}); widths {w0}..{w1}, heights {h0}..{h1} px")
    from ..model.anchor_fit import box_spread, describe_spread  # torch: not at the CLI's start-up

    spread = box_spread(manifest) if manifest is not None else None
    if spread is not None:
        console.info(describe_spread(spread))
    for message in report.warnings[:MAX_WARNINGS]:
        console.warn(message)
    if len(report.warnings) > MAX_WARNINGS:
        console.warn(f"... and {len(report.warnings) - MAX_WARNINGS} more warnings")
    _warn_classes_without_objects(report, path)


def _finish(outputs: list[tuple[Path, Manifest]], warnings: list[str]) -> None:
    """Write every manifest (atomically), show the summaries (warnings once), print the paths."""
    for path, manifest in outputs:
        write_manifest(path, manifest)
    for i, (path, manifest) in enumerate(outputs):
        _show_report(PrepareReport.from_manifest(manifest, warnings if i == 0 else ()), path, manifest)
    for path, _ in outputs:
        click.echo(str(path))


def _suggest_training(train: Path, val: Path | None = None) -> None:
    """The ``frcnn train`` command that fits this machine, and why: the default VGG16 needs a GPU (days on a
    CPU) and ImageNet weights (a download); the ``tiny`` preset learns from random weights on a CPU."""
    import torch

    stem = train.name[: -len(".json")] if train.name.endswith(".json") else train.name
    command = f"frcnn train --data {train} --workdir runs/{stem}" + (f" --val {val}" if val is not None else "")
    if not torch.cuda.is_available():
        why = ("no GPU here: the tiny preset, a small network learnt from random weights, trains in minutes on a "
               "CPU, while the default VGG16 takes days and needs the ImageNet weights")
        command += " --config tiny"
    else:
        from ..model.weights import hub_cache_file, imagenet_weights_url

        url = imagenet_weights_url("vgg16")
        cached = hub_cache_file(url).is_file()
        why = ("a GPU is here: VGG16, the paper's network, from ImageNet weights "
               + ("(in the torch hub cache)" if cached else f"(downloaded once from {url}; offline, copy it into "
                                                         f"{hub_cache_file(url).parent})"))
    validate = "" if val is not None else "; --val M.json keeps the best checkpoint (prepare folder --val-fraction)"
    console.info(escape(f"next: {command} ({why}{validate}; docs/quickstart.md)"))


def _parse_years(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        years = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        years = []
    if not years:
        raise click.BadParameter(f"{value!r} is not a year or a list of years like 2007,2012")
    return years


class _InOrder(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # voc, folder, coco, synth: as written, not alphabetical


@click.group("prepare", cls=_InOrder)
def prepare() -> None:
    """Turn detection data into a manifest (JSON) that the other commands read.

    \b
      frcnn prepare voc    --root VOCdevkit --year 2007 --split trainval --out voc07-trainval.json
      frcnn prepare voc    --root VOCdevkit --year 2007,2012 --split trainval --out voc0712-trainval.json
      frcnn prepare voc    --root VOCdevkit --year 2012 --split test --out voc12-test.json   (images only)
      frcnn prepare merge  voc0712-trainval.json voc07-test.json --out voc07++12.json
      frcnn prepare proposals --from voc_2007_test.mat --data voc07-test.json --out ss-test.h5
      frcnn prepare folder --images imgs/ --annotations xml/ --val-fraction 0.1 --out mine.json
      frcnn prepare coco   --annotations instances_train2017.json --images train2017/ --out coco-train.json
      frcnn prepare synth  --out synth/
    """


def _skip_unreadable_option(f):
    return click.option("--skip-unreadable", is_flag=True,
                        help="Leave out the images that cannot be decoded (truncated, corrupt), with their XML, "
                             "listing them in a warning, instead of stopping.")(f)


@prepare.command("voc")
@click.option("--root", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The VOCdevkit folder (holding VOC2007/, VOC2012/) or a VOC<year> folder itself.")
@click.option("--year", "years", default="2007", show_default=True, callback=_parse_years,
              help="2007, 2012, or 2007,2012 for the union (the paper's 07+12).")
@click.option("--split", default="trainval", show_default=True,
              type=click.Choice(["train", "val", "trainval", "test"]), help="ImageSets/Main/<split>.txt.")
@click.option("--images-only", is_flag=True,
              help="No annotations: an images-only manifest (for detect, dump-proposals, eval --results-only). "
                   "Implied by --year 2012 --split test, whose annotations are not public.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Manifest to write.")
@_skip_unreadable_option
def voc(root: Path, years: list[int], split: str, images_only: bool, out: Path, skip_unreadable: bool) -> None:
    """A PASCAL VOC split (20 classes; difficult and truncated kept) as a manifest."""
    from ..data.voc import prepare_voc

    hold_output(out, "--out")
    if images_only or (split == "test" and 2012 in years):
        _voc_images(root, years, split, out, skip_unreadable)
        return
    warnings: list[str] = []
    with _quiet_progress("checking images") as progress:
        manifest = prepare_voc(root, years, split, on_warning=warnings.append, progress=progress,
                               skip_unreadable=skip_unreadable)
    _finish([(out, manifest)], warnings)
    if split != "test":
        _suggest_training(out)


def _voc_images(root: Path, years: list[int], split: str, out: Path, skip_unreadable: bool) -> None:
    from ..data.voc_images import prepare_voc_images

    if split == "test" and 2012 in years and len(years) > 1:
        raise ConfigError("VOC2012 test has no public annotations, the other years' test sets have: prepare "
                          "--year 2012 --split test on its own (an images-only manifest)")
    with _quiet_progress("checking images") as progress:
        manifest = prepare_voc_images(root, years, split, progress=progress, skip_unreadable=skip_unreadable,
                                      on_warning=lambda message: console.warn(escape(message)))
    write_manifest(out, manifest)
    console.info(f"{len(manifest.images)} images, no annotations (an images-only manifest: detect, dump-proposals, "
                 "prepare proposals and eval --results-only take it)")
    click.echo(str(out))


@prepare.command("folder")
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder of .jpg/.jpeg/.png/.bmp images (nested folders too).")
@click.option("--annotations", "annotations_dir", required=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="Folder of VOC XML files, matched to the images by file name without extension.")
@click.option("--classes", "classes_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Class names, one per line, in label order. Default: the names in the XML, sorted.")
@click.option("--split-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Keep only the images named in this file (one name per line).")
@click.option("--val-fraction", type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
              help="Also write NAME.val.json with this fraction of the images (disjoint from NAME.json).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the --val-fraction draw.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Manifest to write (NAME.json).")
@_skip_unreadable_option
def folder(images_dir: Path, annotations_dir: Path, classes_file: Path | None, split_file: Path | None,
           val_fraction: float | None, seed: int, out: Path, skip_unreadable: bool) -> None:
    """Your own images with VOC-style XML annotations as a manifest (no ImageSets needed)."""
    from ..data.folder import prepare_folder
    from ..data.name_lists import read_class_file

    if split_file is not None and val_fraction is not None:
        raise ConfigError("give --split-file or --val-fraction, not both")
    name = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    inputs = {"--classes": classes_file, "--split-file": split_file}
    hold_output(out, "--out", inputs=inputs)
    if val_fraction is not None:
        hold_output(out.with_name(f"{name}.val.json"), "--out", inputs=inputs)
    classes = read_class_file(classes_file) if classes_file is not None else None
    warnings: list[str] = []
    with _quiet_progress("checking images") as progress:
        result = prepare_folder(images_dir, annotations_dir, classes=classes, split_file=split_file,
                                val_fraction=val_fraction, seed=seed, name=name, on_warning=warnings.append,
                                progress=progress, skip_unreadable=skip_unreadable)
    if isinstance(result, tuple):
        outputs = [(out, result[0]), (out.with_name(f"{name}.val.json"), result[1])]
    else:
        outputs = [(out, result)]
    if classes is None:
        found = ", ".join(outputs[0][1].classes)
        console.info(f"classes found in the XML (sorted; --classes FILE sets the order): {found}")
    _finish(outputs, warnings)
    _suggest_training(out, outputs[1][0] if len(outputs) == 2 else None)


@prepare.command("coco")
@click.option("--annotations", "annotations", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="COCO annotation file (instances_*.json, or a labelling tool's COCO export).")
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The folder the images' file_name is relative to (e.g. train2017/).")
@click.option("--drop-empty", is_flag=True, help="Leave out images without objects (kept as negatives by default).")
@click.option("--name", help="Manifest name. Default: the --out file name without .json.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Manifest to write.")
def coco(annotations: Path, images_dir: Path, drop_empty: bool, name: str | None, out: Path) -> None:
    """COCO-format data (COCO, Objects365, LVIS, CVAT/Label Studio/Roboflow exports) as a manifest.

    Categories become classes in id order (names and original ids kept), crowd regions are kept as
    difficult boxes (never trained on, ignored by evaluation), each image file's header is read (a
    width/height that disagrees with the file is an error).
    """
    from ..data.coco import prepare_coco

    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    hold_output(out, "--out", inputs={"--annotations": annotations})
    warnings: list[str] = []
    with _quiet_progress("checking image files") as progress:
        manifest = prepare_coco(annotations, images_dir, drop_empty=drop_empty, name=name or stem,
                                on_warning=warnings.append, progress=progress)
    _finish([(out, manifest)], warnings)
    _suggest_training(out)


@prepare.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the set (VOC layout, classes.txt, trainval.json, test.json).")
@click.option("--train", "n_train", default=DEFAULT_TRAIN, show_default=True, type=click.IntRange(min=1),
              help="Training images.")
@click.option("--test", "n_test", default=DEFAULT_TEST, show_default=True, type=click.IntRange(min=1),
              help="Test images.")
@click.option("--seed", default=DEFAULT_SEED, show_default=True, type=int, help="Seed of the drawing.")
def synth(out_dir: Path, n_train: int, n_test: int, seed: int) -> None:
    """A synthetic set of drawn shapes (the demo's and the tests' data) with its two manifests."""
    from ..data.synthetic import make_synthetic_set

    hold_output(out_dir, "--out", folder=True)
    paths = make_synthetic_set(out_dir, n_train=n_train, n_test=n_test, seed=seed)
    for path in paths:
        manifest = read_manifest(path)
        _show_report(PrepareReport.from_manifest(manifest), path, manifest)
    for path in paths:
        click.echo(str(path))


def _register() -> None:
    from .prepare_merge import merge
    from .prepare_proposals import proposals

    prepare.add_command(proposals)
    prepare.add_command(merge)


_register()
