"""``frcnn prepare merge``: several manifests as one (the paper's 07+12 and 07++12)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..data.manifest import PrepareReport, read_manifest, write_manifest
from . import console
from .options import hold_output


@click.command("merge")
@click.argument("manifests", nargs=-1, required=True, metavar="A.json B.json...",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Manifest to write.")
@click.option("--name", default=None, help="Name of the merged manifest. Default: the --out file name without .json.")
def merge(manifests: tuple[Path, ...], out: Path, name: str | None) -> None:
    """Merge manifests of the same classes into one, e.g. 07++12 (VOC2007 trainval and test, VOC2012 trainval).

    Images keep their ids; an id that an earlier manifest already has for another image file becomes
    <manifest name>/<id>, and the same image in two manifests is an error (the parts overlap). The merged
    manifest records each part's file, name, hash and image range under "parts".
    """
    from ..data.merge import merge_manifests

    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    hold_output(out, "--out", inputs={"a manifest to merge": list(manifests)})
    parts = [(path, read_manifest(path)) for path in manifests]
    merged = merge_manifests(parts, name or stem)
    write_manifest(out, merged)
    for record in merged.parts:
        renamed = f", {record['renamed']} ids renamed {record['name']}/<id>" if record["renamed"] else ""
        console.info(escape(f"{record['name']}: {record['images']} images from {record['file']}{renamed}"))
    report = PrepareReport.from_manifest(merged)
    console.info(f"{report.images} images, {report.objects} objects ({report.difficult} difficult)"
                 if merged.annotated else f"{report.images} images, no annotations (images only)")
    click.echo(str(out))
