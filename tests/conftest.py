"""Shared fixtures.

Reliability suite (tests/test_bad_input.py, test_odd_input.py, test_crash_safety.py, test_security.py):
a tiny model at 64 px, checkpoints of it with random weights, an 8+4 image synthetic set, and the check
that a failed command printed one clean ``Error:`` line and wrote nothing.

Training (tests/test_train_*.py, test_ddp.py): a 12+6 image synthetic set, the tiny preset at 96 px, the
CLI run in this process, one intra-op thread, and the paper's four steps run once per session.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

# bf16 autocast follows the CPU (devices.cpu_bf16_kind): pinned to "no native bf16" so that the suite computes in
# float32 on every machine, AVX512-BF16 and AMX ones included; the tests of the policy set it themselves
os.environ["FRCNN_CPU_BF16"] = "0"

# the tests' images are not the preset's: the anchors stay the preset's (no fit), so each test means one model;
# `frcnn train` runs the paper's alternating optimisation there (tiny's own default is joint training)
TINY_OVERRIDES = ("input.train_scales=64", "input.test_scale=64", "input.max_size=96", "anchors.auto=false",
                  "solver.mode=alternating")
TINY_RUNTIME = ("runtime.num_workers=0",)  # this machine's settings: loading in the test's process
# the same as command-line options, on the CPU
TINY_CLI = ["--config", "tiny", *(arg for kv in (*TINY_OVERRIDES, *TINY_RUNTIME) for arg in ("--set", kv)),
            "--device", "cpu"]


def truncate_file(path: Path, keep: float = 0.5) -> None:
    """Cut ``path`` to the first ``keep`` of its bytes (a file cut short by a crash or a full disk)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_file(path: Path, text: str | bytes) -> None:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
ACTION = re.compile(r"\b(use|fix|give|check|run|rerun|delete|choose|add|replace|remove|upgrade|pick|lower|make|"
                    r"dump|train|evaluate|prepare|free|try|rename|keep|write|name|ask|needs|drop)\b", re.IGNORECASE)


def tiny_config(*extra: str):
    """The tiny preset at 64 px, with ``extra`` ``--set`` overrides of the config."""
    from frcnn_cli.config import get_preset
    from frcnn_cli.config_io import apply_overrides

    return apply_overrides(get_preset("tiny"), [*TINY_OVERRIDES, *extra])


def tiny_runtime(*extra: str):
    """The tests' runtime settings (no loader workers), with ``extra`` runtime ``--set`` overrides."""
    from frcnn_cli.config import RuntimeConfig
    from frcnn_cli.config_io import apply_runtime_overrides

    return apply_runtime_overrides(RuntimeConfig(), [*TINY_RUNTIME, *extra])


@pytest.fixture()
def tiny_checkpoint(tmp_path) -> Callable[..., Path]:
    """``make(name, classes, *, parts=..., stage="final", overrides=())``: a checkpoint of a random tiny model
    (``tiny_config(*overrides)``) with ``parts`` under ``tmp_path/ckpts/name``."""
    from frcnn_cli.model.checkpoint import save_checkpoint
    from frcnn_cli.model.detector import FasterRCNN

    def make(name: str = "model.pt", classes: Sequence[str] = ("circle", "bottle", "car", "triangle", "donut"),
             *, parts: Sequence[str] = ("backbone", "rpn", "roi_head"), stage: str = "final",
             overrides: Sequence[str] = ()) -> Path:
        torch.manual_seed(0)
        model = FasterRCNN(tiny_config(*overrides), list(classes))
        path = tmp_path / "ckpts" / name
        save_checkpoint(path, model, stage=stage, provenance={}, parts=tuple(parts))
        return path

    return make


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> tuple[Path, Path]:
    """``(trainval.json, test.json)`` of a synthetic set: 8 + 4 images of about 64x48. Do not modify it."""
    from frcnn_cli.data.synthetic import make_synthetic_set

    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_set(root / "set", n_train=8, n_test=4, seed=0, image_size=(64, 48))


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture()
def assert_clean_error() -> Callable[..., None]:
    """``check(result, *needles, out_dir=None)``: a non-zero exit, exactly one line starting with ``Error:``
    (holding every needle), something a user can do, no traceback, and no file at all under ``out_dir``."""

    def check(result, *needles: str, out_dir: Path | None = None) -> str:
        output = result.output if hasattr(result, "output") else result.stdout + result.stderr
        code = result.exit_code if hasattr(result, "exit_code") else result.returncode
        assert code != 0, output
        assert "Traceback" not in output, output
        if getattr(result, "exception", None) is not None:
            assert isinstance(result.exception, SystemExit), repr(result.exception)
        lines = [line for line in output.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1, output
        message = output[output.index("Error:"):]
        for needle in needles:
            assert needle in message, f"{needle!r} not in {message!r}"
        assert ACTION.search(output), f"no hint of what to do in {output!r}"
        if out_dir is not None:
            assert _files_under(out_dir) == [], _files_under(out_dir)
        return message

    return check


# --------------------------------------------------------------------------------------------------
# training (tests/test_train_steps.py, test_train_resume.py, test_train_pipeline.py, test_ddp.py)

TRAIN_OVERRIDES = ("input.train_scales=96", "input.test_scale=96", "input.max_size=128", "anchors.auto=false",
                   "solver.mode=alternating")
TRAIN_RUNTIME = ("runtime.num_workers=0", "runtime.log_every=1")
NO_WORKERS = ("--set", "runtime.num_workers=0", "--set", "runtime.log_every=1")  # runtime of a checkpoint command


@pytest.fixture(scope="session")
def train_config() -> Callable[..., object]:
    """``config(*extra)``: the tiny preset at 96 px with ``extra`` ``--set`` overrides of the config (the
    runtime part, ``TRAIN_RUNTIME``: no loader workers, a metrics line every iteration)."""
    from frcnn_cli.config import get_preset
    from frcnn_cli.config_io import apply_overrides

    def config(*extra: str):
        return apply_overrides(get_preset("tiny"), [*TRAIN_OVERRIDES, *extra])

    return config


@pytest.fixture(scope="session")
def train_options() -> Callable[..., list[str]]:
    """``options(*extra)``: the ``--config tiny --set …`` arguments of ``train_config(*extra)`` and
    ``TRAIN_RUNTIME``."""

    def options(*extra: str) -> list[str]:
        return ["--config", "tiny", *(a for kv in (*TRAIN_OVERRIDES, *TRAIN_RUNTIME, *extra) for a in ("--set", kv))]

    return options


@contextlib.contextmanager
def single_thread():
    """One intra-op thread inside: on a busy 2-core machine the tiny model trains about 5x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """``single_thread()`` for a whole test module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def frcnn() -> Callable[..., object]:
    """``run(*args, ok=True)``: ``frcnn ARGS`` in this process (CliRunner); with ``ok`` it must exit 0."""
    from click.testing import CliRunner

    from frcnn_cli.cli.main import cli

    def run(*args, ok: bool = True):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        if ok:
            assert result.exit_code == 0, f"frcnn {' '.join(map(str, args))}:\n{result.output}"
        return result

    return run


@pytest.fixture(scope="session")
def train_set(tmp_path_factory) -> tuple[Path, Path]:
    """``(trainval.json, test.json)``: 12 + 6 synthetic images of about 256x192. Do not modify it."""
    from frcnn_cli.data.synthetic import make_synthetic_set

    root = tmp_path_factory.mktemp("train_set")
    return make_synthetic_set(root / "set", n_train=12, n_test=6, seed=1)


@pytest.fixture(scope="session")
def four_steps(train_set, train_options, frcnn, tmp_path_factory) -> dict[str, Path]:
    """The paper's four steps from the command line, 3 iterations each, from random init (``--init none``):
    ``rpn1.pt``, ``props1.h5``, ``det1.pt``, ``rpn2.pt``, ``props2.h5``, ``final.pt`` (and
    ``metrics.jsonl``) in one folder, keyed by stem, plus ``data`` (the manifest). Do not modify them."""
    work = tmp_path_factory.mktemp("four_steps")
    p = {name: work / f"{name}{'.h5' if name.startswith('props') else '.pt'}"
         for name in ("rpn1", "props1", "det1", "rpn2", "props2", "final")}
    data, opts = train_set[0], train_options()
    common = ["--data", data, "--iters", 3]
    with single_thread():
        frcnn("train-rpn", *common, "--out", p["rpn1"], "--init", "none", *opts)
        frcnn("dump-proposals", "--model", p["rpn1"], "--data", data, "--out", p["props1"], *NO_WORKERS)
        frcnn("train-detector", *common, "--out", p["det1"], "--init", "none", "--proposals", p["props1"], *opts)
        frcnn("train-rpn", *common, "--out", p["rpn2"], "--init", p["det1"], "--freeze-shared", *NO_WORKERS)
        frcnn("dump-proposals", "--model", p["rpn2"], "--data", data, "--out", p["props2"], *NO_WORKERS)
        frcnn("train-detector", *common, "--out", p["final"], "--init", p["rpn2"], "--freeze-shared",
              "--proposals", p["props2"], *NO_WORKERS)
    return {**p, "data": data, "metrics": work / "metrics.jsonl"}


class Killed(BaseException):
    """A ``kill -9`` as far as the code under test can tell: no ``except Exception`` catches it."""


@pytest.fixture()
def kill_after_saving(monkeypatch) -> Callable[..., None]:
    """``arm(iteration, name=None)``: the next training stage that writes its resume file (``*.resume.pt``,
    or the file called ``name``) at ``iteration`` raises ``Killed`` just after, once."""
    from frcnn_cli.train import stage

    real, armed = stage.save_checkpoint, {}

    def save(path, model, **kwargs):
        real(path, model, **kwargs)
        iteration = (kwargs.get("train_state") or {}).get("iteration")
        name = Path(path).name
        if armed and iteration == armed["iteration"] and name.endswith(".resume.pt") and (
                armed["name"] in (None, name)):
            armed.clear()
            raise Killed(f"killed after writing {path} at iteration {iteration}")

    def arm(iteration: int, name: str | None = None) -> None:
        armed.update(iteration=iteration, name=name)

    monkeypatch.setattr(stage, "save_checkpoint", save)
    return arm


class PicklePayload:
    """An object whose unpickling touches ``marker``: proves a loader never runs pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_proposal_store(path: Path, manifest_path: Path, boxes, scores) -> Path:
    """A complete proposal file for every image of ``manifest_path``, each with ``boxes``/``scores`` (numpy)."""
    from frcnn_cli.data.manifest import manifest_hash, read_manifest
    from frcnn_cli.data.proposal_store import ProposalWriter

    manifest = read_manifest(manifest_path)
    attrs = {"checkpoint_hash": "0" * 64, "nms_thresh": 0.7, "pre_nms_top_n": 0, "post_nms_top_n": 300,
             "min_size": 4.0, "scale": 64, "max_size": 96, "config": {}}
    with ProposalWriter(path, manifest_hash=manifest_hash(manifest), attrs=attrs, manifest=manifest) as w:
        for i in range(len(manifest.images)):
            w.write(i, boxes, scores)
        w.finish()
    return path


def cpu_predictor(model, *, runtime: Sequence[str] = (), **settings):
    """A ``Predictor`` of ``model`` on the CPU with the test's runtime (no loader workers): ``settings`` go to
    ``InferenceSettings.from_config`` (``ablation=``, ``score_thresh=``, ``overrides=`` …)."""
    from frcnn_cli.inference import Predictor

    return Predictor.for_model(model, "cpu", runtime=tiny_runtime(*runtime), **settings)


def rpn_losses_of(cls_logits, deltas, anchors, gt_boxes, image_sizes, *, cfg, anchors_per_cell: int = 9):
    """The RPN loss of one forward as ``FasterRCNN.losses`` computes it: ``anchor_targets`` (labels and
    samples the anchors), then ``rpn_losses`` (scores them)."""
    from frcnn_cli.model.losses import rpn_losses
    from frcnn_cli.model.rpn_targets import anchor_targets

    labels, targets = anchor_targets(anchors, gt_boxes, image_sizes, cfg=cfg)
    return rpn_losses(cls_logits, deltas, labels, targets, cfg=cfg, anchors_per_cell=anchors_per_cell)


def label_anchors(anchors, gt_boxes, image_size, **rules):
    """The anchors of one image labelled (``rpn_targets.label_anchors_batch`` for a batch of one):
    ``(labels [M], matched_gt [M])`` of ``anchors [M, 4]`` against ``gt_boxes [G, 4]`` in an image of
    ``image_size`` (h, w); ``rules``: ``positive_iou``, ``negative_iou``, ``allowed_border``,
    ``ignore_cross_boundary``."""
    from frcnn_cli.model.rpn_targets import label_anchors_batch, pad_gt_boxes

    gt, valid = pad_gt_boxes([gt_boxes], anchors.device)
    sizes = torch.as_tensor(image_size, device=anchors.device).reshape(1, 2)
    labels, matched = label_anchors_batch(anchors, gt, valid, sizes, **rules)
    return labels[0], matched[0]


def inside_mask(anchors, height, width, border: float = 0.0):
    """py-faster-rcnn's inside-anchor rule, the tests' reference: ``x1 >= -border``, ``y1 >= -border``,
    ``x2 <= width + border``, ``y2 <= height + border`` (its ``x2_inclusive < width + border``)."""
    return ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
            & (anchors[:, 2] <= width + border) & (anchors[:, 3] <= height + border))


@pytest.fixture()
def read_only_dir(tmp_path) -> Path:
    """A folder in which nothing can be created, for root too (tests/filesystems.py says how)."""
    from filesystems import read_only_folder

    with read_only_folder(tmp_path / "read-only") as folder:
        yield folder


@pytest.fixture()
def full_disk(tmp_path) -> Path:
    """A folder on a 64 KiB tmpfs: writes of more fail with the kernel's ENOSPC (root only, else skipped)."""
    from filesystems import small_disk

    with small_disk(tmp_path / "small-disk") as folder:
        yield folder


def forbid_work(monkeypatch, target: str) -> None:
    """Replace the function ``target`` (a dotted path) by one that fails the test: a command that should stop at
    its checks must never reach it."""
    def work(*_args, **_kwargs):
        raise AssertionError(f"{target} ran: the output was not checked before the work")

    monkeypatch.setattr(target, work)


@pytest.fixture()
def figures(monkeypatch):
    """``set(values)``: the validations of the next run measure ``values`` in turn (rows as the real ones)."""
    queue: list[float] = []

    def measure(self, model):
        value = queue.pop(0)
        key = "val_map" if self.kind == "map" else "val_recall"
        return value, {key: value if self.kind == "map" else {"0.5": value, "0.7": value}, "val_seconds": 0.0}

    from frcnn_cli.train import validation

    monkeypatch.setattr(validation.Validator, "measure", measure)
    return lambda values: queue.extend(values)


def write_folder_set(root: Path) -> tuple[Path, Path]:
    """A one-image folder set for ``prepare folder`` (``root/imgs/a.png``, 40x30, and one cat box in
    ``root/xml/a.xml``): ``(images, annotations)``."""
    from PIL import Image

    (root / "imgs").mkdir(parents=True)
    (root / "xml").mkdir()
    Image.new("RGB", (40, 30)).save(root / "imgs" / "a.png")
    (root / "xml" / "a.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
                                        "<xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")
    return root / "imgs", root / "xml"
