"""What an exported model file says about itself: the class names, the config, the source checkpoint's hash
and the settings baked into its graph (docs/formats.md, "Exported models").

An ONNX file holds these as ``metadata_props`` (string keys and values: ``classes`` and ``config`` are JSON);
a TorchScript file holds the same mapping as JSON in its extra file ``frcnn.json``. ``ExportMetadata`` reads
and writes both and gives back the ``InferenceSettings`` the graph runs with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .. import __version__
from ..config_io import config_from_dict, config_to_dict
from ..errors import CheckpointError, ConfigError
from ..inference import InferenceSettings
from ..model.postprocess import DetectionSettings
from ..model.rpn import ProposalSettings

FORMAT = "frcnn-detector"
VERSION = 1
FORMATS = ("onnx", "torchscript")
TORCHSCRIPT_EXTRA = "frcnn.json"
INPUT_CONTRACT = "image: uint8 [3, H, W] RGB, any H and W"
OUTPUT_CONTRACT = ("boxes: float32 [N, 4] x1 y1 x2 y2 in the input image's pixels (0-based continuous); "
                   "scores: float32 [N], descending; labels: int64 [N], index into classes")


@dataclass(frozen=True)
class ExportMetadata:
    """An exported detector's description: ``classes`` (label i is ``classes[i]``), ``settings`` (the config
    with ``--set`` applied, and the proposal and detection settings of the graph), the source checkpoint's
    file name and SHA-256, and the file's ``format`` (onnx or torchscript)."""

    classes: list[str]
    settings: InferenceSettings
    checkpoint: str
    checkpoint_sha256: str
    format: str

    def to_strings(self) -> dict[str, str]:
        """The ``key -> string`` mapping stored in the file."""
        return {"format": FORMAT, "version": str(VERSION), "file_format": self.format,
                "frcnn_version": __version__, "classes": json.dumps(self.classes, ensure_ascii=False),
                "config": json.dumps(config_to_dict(self.settings.config), ensure_ascii=False),
                "proposals": json.dumps(asdict(self.settings.proposals)),
                "detections": json.dumps(asdict(self.settings.detections)),
                "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256,
                "input": INPUT_CONTRACT, "outputs": OUTPUT_CONTRACT}

    @classmethod
    def from_strings(cls, values: dict[str, str], path) -> ExportMetadata:
        """The metadata of the file ``path`` from its stored mapping; a ``CheckpointError`` naming the file
        when it is not a frcnn export this version reads."""
        if values.get("format") != FORMAT:
            raise CheckpointError(f"{path} is a model file but not one frcnn exported (no frcnn metadata); give "
                                  "a file written by frcnn export, or a frcnn checkpoint")
        if values.get("version") != str(VERSION):
            raise CheckpointError(f"{path} was exported in format version {values.get('version')}, this frcnn "
                                  f"reads version {VERSION}; rerun frcnn export with this frcnn")
        try:
            classes = json.loads(values["classes"])
            config = config_from_dict(json.loads(values["config"]))
            proposals = ProposalSettings(**json.loads(values["proposals"]))
            detections = DetectionSettings(**json.loads(values["detections"]))
            settings = InferenceSettings(config, proposals, detections)
            return cls(list(classes), settings, values["checkpoint"], values["checkpoint_sha256"],
                       values["file_format"])
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise CheckpointError(f"{path} has damaged frcnn metadata ({type(exc).__name__}: {exc}); rerun "
                                  "frcnn export to write it again") from None
