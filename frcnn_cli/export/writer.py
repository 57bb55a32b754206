"""``export_model``: a checkpoint's detector as one ONNX or TorchScript graph, checked before it is written.

The graph is ``graph.DeployedDetector`` traced on the CPU (``torch.jit.trace``; ONNX through the TorchScript-
based exporter, opset ``OPSET``, whose tracer keeps every size the graph reads from a shape dynamic, and which
knows torchvision's ``nms``, ``roi_pool`` and ``roi_align``; the newer ``torch.export``-based exporter would
need translations of those ops and guards on the data-dependent sizes). The file goes to a temporary name
beside ``out``, is loaded back (ONNX Runtime / ``torch.jit.load``) and compared with the checkpoint's
``Predictor`` on the check images (``verify.verify_export``); only then is it renamed to ``out``. A failed
check is an ``ExportError`` naming the largest difference, and nothing is left behind.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_path
from ..config import RuntimeConfig, runtime_defaults
from ..errors import ConfigError, FrcnnError
from ..inference import InferenceSettings, Predictor
from ..model.checkpoint import file_sha256
from ..model.detector import FasterRCNN
from ..model.svd import compress_fc_svd
from .graph import DeployedDetector
from .integrity import GRAPH_HASH_KEY, append_onnx_metadata, onnx_graph_digest, torchscript_digest
from .metadata import FORMATS, TORCHSCRIPT_EXTRA, ExportMetadata
from .predictor import ExportedPredictor, check_graph
from .runtime import INPUT_NAME, OUTPUT_NAMES, SUFFIXES, open_runner
from .verify import Verification, check_images, verify_export

OPSET = 17  # RoiAlign's half-pixel mode needs 16; ONNX Runtime 1.16 and later run 17


class ExportError(FrcnnError):
    """An export whose graph does not give the checkpoint's detections, or that could not be traced."""


@dataclass
class ExportReport:
    """What ``export_model`` wrote and how close its graph came to the checkpoint on the check images."""

    path: Path
    format: str
    verification: Verification
    metadata: ExportMetadata


def graph_settings(settings: InferenceSettings) -> InferenceSettings:
    """``settings`` as the graph runs them: a ``--proposals-n`` ablation folded into the proposal settings."""
    if settings.mode != "test":
        raise ConfigError("an exported graph detects objects; it is made from test settings (mode='test')")
    if settings.ablation is None:
        return settings
    if settings.ablation.top_n is None or not (settings.ablation.nms and settings.ablation.use_scores
                                                and settings.ablation.use_regression):
        raise ConfigError("of the proposal ablations only --proposals-n N can be exported (the graph runs the "
                          "RPN's own proposal layer); drop --no-rpn-*")
    proposals = replace(settings.proposals, post_nms_top_n=settings.ablation.top_n)
    return replace(settings, proposals=proposals, ablation=None)


def deployed_detector(model: FasterRCNN, settings: InferenceSettings) -> DeployedDetector:
    """The graph module of ``model`` (on the CPU in eval mode, never ``place_model``-d: plain convs) with
    ``settings``: its own modules, or those of a copy with fc6/fc7 compressed when ``settings`` ask for it."""
    if settings.fc_svd_rank > 0:
        model = copy.deepcopy(model)
        compress_fc_svd(model, settings.fc_svd_rank)
    return DeployedDetector(model, proposals=settings.proposals, detections=settings.detections)


def _write_graph(module: DeployedDetector, example: Tensor, path: Path, fmt: str,
                 metadata: dict[str, str]) -> None:
    """Trace ``module`` on ``example`` into ``path`` as ``fmt`` with ``metadata`` and the graph's hash
    (``integrity.py``)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on sizes read from shapes: the check decides
        if fmt == "torchscript":
            traced = torch.jit.trace(module, (example,), check_trace=False)
            metadata = {**metadata, GRAPH_HASH_KEY: torchscript_digest(traced)}
            # into an open file, as checkpoints are: torch.jit.save given a path writes the archive's end in a C++
            # destructor, and a full disk there aborts the process (no exception, a core dump, the temporary kept)
            with open(path, "wb") as f:
                torch.jit.save(traced, f, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})
            return
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={INPUT_NAME: {1: "height", 2: "width"},
                                        **{name: {0: "detections"} for name in OUTPUT_NAMES}})
    _add_onnx_metadata(path, metadata)
    append_onnx_metadata(path, GRAPH_HASH_KEY, onnx_graph_digest(path))


def _add_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigError("exporting to ONNX needs the onnx package: pip install 'frcnn[export]' "
                          "(or pip install onnx onnxruntime)") from None
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "frcnn Faster R-CNN detector: " + metadata["input"] + " -> " + metadata["outputs"]
    onnx.save(proto, str(path))


def check_suffix(out: Path, fmt: str) -> None:
    """A ``ConfigError`` for an ``out`` whose suffix names another format than ``fmt`` (``--format onnx --out
    m.ts``), or a checkpoint's (``.pt``/``.pth``) for ONNX: the file would be taken for what it is not."""
    suffix, other = out.suffix.lower(), "torchscript" if fmt == "onnx" else "onnx"
    if suffix in SUFFIXES[other]:
        kind, advice = ("an ONNX model" if other == "onnx" else "a TorchScript model"), f", or give --format {other}"
    elif fmt == "onnx" and suffix in (".pt", ".pth"):
        kind, advice = "a PyTorch checkpoint", ""
    else:
        return
    raise ConfigError(f"--out {out} has the suffix of {kind} but --format is {fmt}; name it "
                      f"{out.with_suffix(SUFFIXES[fmt][0]).name}{advice}")


def export_model(model: FasterRCNN, settings: InferenceSettings, out: str | Path, *, fmt: str,
                 checkpoint: str | Path, images: list[Tensor] | None = None,
                 runtime: RuntimeConfig | None = None) -> ExportReport:
    """Write ``model`` (loaded from ``checkpoint``) with ``settings`` to ``out`` as ``fmt`` ("onnx" or
    "torchscript"), after checking it on ``images`` (uint8 ``[3, H, W]``; default ``verify.check_images()``)
    against the checkpoint's ``Predictor`` on the CPU (``runtime``: its settings, default the preset's)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out, checkpoint = Path(out), Path(checkpoint)
    check_suffix(out, fmt)
    settings = graph_settings(settings)
    runtime = runtime if runtime is not None else runtime_defaults(model.cfg.name)
    metadata = ExportMetadata(list(model.classes), settings, checkpoint.name, file_sha256(checkpoint), fmt)
    images = list(images) if images else check_images()
    model = model.cpu().eval()
    module = deployed_detector(model, settings)
    # the graph computes in float32: so does the reference it must match, whatever this CPU's bf16 policy
    reference = Predictor(model, "cpu", settings, replace(runtime, num_workers=0, amp=False))
    with atomic_path(out) as tmp:
        try:
            _write_graph(module, images[0], tmp, fmt, metadata.to_strings())
        except (RuntimeError, torch.jit.Error) as exc:  # e.g. an op the exporter does not know
            raise ExportError(f"the model could not be exported to {fmt} ({str(exc).strip().splitlines()[0]}); "
                              f"try --format {'torchscript' if fmt == 'onnx' else 'onnx'}") from None
        runner = open_runner(tmp, fmt, torch.device("cpu"), runtime.threads)
        stored = ExportMetadata.from_strings(runner.metadata, tmp)  # as detect will read it back
        check_graph(runner, stored, tmp)
        exported = ExportedPredictor(runner, stored, tmp, runtime)
        verification = verify_export(reference, exported, images)
        if not verification.ok:
            raise ExportError(f"the {fmt} graph does not give the checkpoint's detections on "
                              f"{verification.failure()}; nothing was written to {out}. This is a bug of frcnn "
                              "export: please report it with the checkpoint and the check images")
        del runner, exported
    return ExportReport(out, fmt, verification, stored)
