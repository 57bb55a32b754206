"""The learning benchmark's data sets (``learning_vs_torchvision.py DATASET``), each as (training, test) manifests:

- ``synth``: a synthetic set of a kind the tests and the demo never use: ``kind=glyphs`` (star, cross, frame,
  arrow; 30-140 px), 320×240 images, seed 11, 300 training + 100 test images;
  ``synth:kind=shapes,seed=5,train=300,test=100,size=256x192`` to change any of these;
- a VOCdevkit-style folder (``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/trainval.txt`` and ``test.txt``),
  e.g. ``../shared/data/bccd/BCCD``: its own trainval / test split;
- a folder with ``images/`` and ``annotations/`` (VOC XML), e.g. ``../shared/data/kangaroo``: split 80/20 by
  file name (the first 80 % of the sorted names train), images that cannot be decoded left out;
- ``TRAIN.json,TEST.json``: two manifests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

SYNTH = {"kind": "glyphs", "seed": "11", "train": "300", "test": "100", "size": "320x240"}


def frcnn(*args, capture: bool = False) -> str:
    """``python -m frcnn_cli ARGS`` from this repository; its stdout when ``capture`` (its stderr then only when
    it fails)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-m", "frcnn_cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        if capture:
            sys.stderr.write(result.stderr.decode(errors="replace"))
        raise subprocess.CalledProcessError(result.returncode, args)
    return result.stdout.decode() if capture else ""


def synth_set(spec: str, out: Path) -> tuple[Path, Path]:
    from frcnn_cli.data.synthetic import make_synthetic_set

    values = dict(SYNTH)
    values.update(dict(kv.split("=", 1) for kv in spec.split(":", 1)[1].split(",")) if ":" in spec else {})
    width, height = (int(v) for v in values["size"].split("x"))
    folder = out / "synth-{kind}-{seed}-{train}-{test}-{size}".format(**values)
    if (folder / "test.json").exists():
        return folder / "trainval.json", folder / "test.json"
    return make_synthetic_set(folder, n_train=int(values["train"]), n_test=int(values["test"]),
                              seed=int(values["seed"]), image_size=(width, height), kind=values["kind"])


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding problem leaves the image out
        return False


def folder_set(root: Path, out: Path) -> tuple[Path, Path]:
    """An 80/20 split by file name of a folder of images and VOC XML (unreadable images left out)."""
    data = out / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "annotations").mkdir(exist_ok=True)
    stems = []
    for image in sorted((root / "images").iterdir()):
        xml = root / "annotations" / (image.stem + ".xml")
        if xml.exists() and _readable(image):
            stems.append(image.stem)
            for link, target in ((data / "images" / image.name, image), (data / "annotations" / xml.name, xml)):
                if not link.exists():
                    link.symlink_to(target.resolve())
        elif xml.exists():
            print(f"left out {image} (cannot be decoded)")
    cut = len(stems) * 8 // 10
    return _prepare(data / "images", data / "annotations", data, {"train": stems[:cut], "test": stems[cut:]})


def devkit_set(root: Path, out: Path) -> tuple[Path, Path]:
    """A VOCdevkit-style folder's own trainval / test split (``ImageSets/Main``)."""
    main = root / "ImageSets" / "Main"
    parts = {name: [s.strip() for s in (main / f"{split}.txt").read_text().split() if s.strip()]
             for name, split in (("train", "trainval"), ("test", "test"))}
    return _prepare(root / "JPEGImages", root / "Annotations", out / "data", parts)


def _prepare(images: Path, annotations: Path, data: Path, parts: dict[str, list[str]]) -> tuple[Path, Path]:
    data.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, stems in parts.items():
        manifest = data / f"{name}.json"
        if not manifest.exists():
            (data / f"{name}.txt").write_text("".join(s + "\n" for s in stems))
            frcnn("prepare", "folder", "--images", images, "--annotations", annotations, "--split-file",
                  data / f"{name}.txt", "--out", manifest)
        paths.append(manifest)
    return paths[0], paths[1]


def dataset(spec: str, out: Path) -> tuple[Path, Path]:
    """(training manifest, test manifest) of a DATASET argument (module docstring)."""
    if spec.startswith("synth"):
        return synth_set(spec, out)
    if "," in spec:
        train, test = (Path(p) for p in spec.split(",", 1))
        return train, test
    root = Path(spec)
    if (root / "ImageSets" / "Main" / "test.txt").exists():
        return devkit_set(root, out)
    return folder_set(root, out)
