"""Running an exported detector: ONNX files in ONNX Runtime, TorchScript files with ``torch.jit.load``,
behind the interface of ``inference.Predictor`` so that ``detect``, ``eval`` and ``bench`` take either.

Shapes: N images of a batch, D detections of one image, K classes without background.

``ExportedPredictor.run(batch)`` runs the graph once per image of a ``DecodedBatch`` (the graph takes one
image of any size; it resizes and normalises itself) and returns the ``BatchResult`` a ``Predictor`` would:
boxes in original pixels, labels 1..K. The settings are the ones baked in at export; ``with_settings`` accepts
only a higher score threshold (``detect --score-thresh``), applied to the graph's outputs, which gives the
same detections as a graph exported with it (a box above the threshold is never suppressed by one below it).

ONNX Runtime runs on the CPU, or with its CUDA provider when ``device`` is CUDA and the installed ONNX Runtime
has it (``onnxruntime-gpu``). A TorchScript file runs on the CPU, where it was traced (the trace holds CPU
device constants).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from ..protobuf_wire import WireError
from .integrity import (
    TORCHSCRIPT_MARKS,
    onnx_class_count,
    onnx_graph_digest,
    torchscript_class_count,
    torchscript_digest,
    zip_entry_names,
)
from .metadata import TORCHSCRIPT_EXTRA

OUTPUT_NAMES = ("boxes", "scores", "labels")
INPUT_NAME = "image"
_PROTOBUF_FIRST_BYTE = 0x08  # an ONNX ModelProto starts with field 1 (ir_version), a varint
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".ts", ".torchscript", ".jit")}


def exported_format(path: str | Path) -> str | None:
    """``"onnx"``, ``"torchscript"`` or None (a checkpoint, or not a file), by content where it tells, else by
    suffix: ``.onnx`` files and files that open like a protocol buffer are ONNX; zip archives holding TorchScript
    code, even cut short (their first entries say so), and ``.ts``/``.torchscript``/``.jit`` files that are not a
    checkpoint's zip archive are TorchScript, so that a damaged one is reported as a damaged TorchScript model."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SUFFIXES["onnx"]:
        return "onnx"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK"):
        names = zip_entry_names(path)
        if any(mark in f"/{name}" for name in names for mark in TORCHSCRIPT_MARKS):
            return "torchscript"
        if any(name.endswith("/data.pkl") for name in names):
            return None  # a torch.save file: a checkpoint (also when named .ts)
    elif head[:1] == bytes([_PROTOBUF_FIRST_BYTE]):
        return "onnx"
    return "torchscript" if suffix in SUFFIXES["torchscript"] else None


class OnnxRunner:
    """An ONNX file in an ONNX Runtime session: ``runner(image) -> (boxes, scores, labels)`` on the host."""

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the library never prints
        # ONNX Runtime's default, made explicit: the fastest level measured, and the only other options that keep
        # the export's tolerance are the thread count (float16, bfloat16 weights, int8: docs/benchmarks.md)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            options.intra_op_num_threads = threads
        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own types for unreadable and invalid files
            raise CheckpointError(f"{path} is not a readable ONNX model ({_first_line(exc)}); the file is damaged "
                                  "or not an ONNX file: rerun frcnn export to write it again") from None
        self.device = torch.device("cuda" if cuda else "cpu")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.path = Path(path)
        self.format = "onnx"

    def graph_digest(self) -> str:
        """The SHA-256 of the graph as stored (``integrity.onnx_graph_digest``)."""
        return _read_graph(onnx_graph_digest, self.path)

    def class_count(self) -> int | None:
        """K, the classes the graph scores; None when it does not say."""
        return _read_graph(onnx_class_count, self.path)

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.contiguous().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)


class TorchScriptRunner:
    """A TorchScript file loaded on the CPU: ``runner(image) -> (boxes, scores, labels)``."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        extra = {TORCHSCRIPT_EXTRA: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # PyTorch deprecates TorchScript; it still runs
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:  # the loader raises RuntimeError and others for damaged archives
            raise CheckpointError(f"{path} is not a readable TorchScript model ({_first_line(exc)}); the file is "
                                  "damaged: rerun frcnn export to write it again") from None
        self.device = torch.device("cpu")
        self.metadata = _json_mapping(extra[TORCHSCRIPT_EXTRA], path)
        self.format = "torchscript"

    def graph_digest(self) -> str:
        """The SHA-256 of the module's parameters and buffers (``integrity.torchscript_digest``)."""
        return torchscript_digest(self.module)

    def class_count(self) -> int | None:
        return torchscript_class_count(self.module)

    @torch.inference_mode()
    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.module(image)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("running an ONNX model needs ONNX Runtime: pip install 'frcnn[export]' "
                          "(or pip install onnxruntime)") from None
    return onnxruntime


def _read_graph(read, path: Path):
    try:
        return read(path)
    except (WireError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable ONNX model ({exc}); the file is damaged: rerun frcnn export "
                              "to write it again") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _json_mapping(text: str, path: Path) -> dict[str, str]:
    import json

    try:
        values = json.loads(text) if text else {}
    except ValueError:
        values = None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} has damaged frcnn metadata ({TORCHSCRIPT_EXTRA} is not a JSON object); "
                              "rerun frcnn export to write it again")
    return {str(k): str(v) for k, v in values.items()}


def open_runner(path: Path, fmt: str, device: torch.device, threads: int = 0):
    """The runner of an exported file of format ``fmt``."""
    return OnnxRunner(path, device, threads) if fmt == "onnx" else TorchScriptRunner(path, threads)
