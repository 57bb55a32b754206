"""What an exported model file says about itself: the class names, the config, the source checkpoint's hash
and the settings baked into its graph (docs/formats.md, "Exported models").

An ONNX file holds these as ``metadata_props`` (string keys and values: ``classes`` and ``config`` are JSON);
a TorchScript file holds the same mapping as JSON in its extra file ``frcnn.json``. ``ExportMetadata`` reads
and writes both and gives back the ``InferenceSettings`` the graph runs with. Reading checks every field (types,
ranges, the settings against the config) and ``check_graph`` what the graph itself says (the classes it scores,
its hash: ``integrity.py``), so damaged metadata is one ``CheckpointError``, never a traceback later.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass

from .. import __version__
from ..config_io import config_from_dict, config_to_dict
from ..data.name_lists import distinct_names
from ..errors import CheckpointError, ConfigError
from ..inference import InferenceSettings
from ..model.postprocess import DetectionSettings
from ..model.rpn import ProposalSettings
from .integrity import GRAPH_HASH_KEY

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
    graph_sha256: str | None = None  # what a file records of its graph (integrity.py); None: written before it

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
            meta = cls(classes, settings, values["checkpoint"], values["checkpoint_sha256"], values["file_format"],
                       values.get(GRAPH_HASH_KEY))
            meta.check_fields()
            return meta
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise damaged(path, f"{type(exc).__name__}: {exc}") from None

    def check_fields(self) -> None:
        """A ``ValueError`` naming the first field that cannot be what ``frcnn export`` wrote."""
        names = self.classes
        if not distinct_names(names):
            shown = json.dumps(names, ensure_ascii=False)[:200]
            raise ValueError(f"classes {shown} is not a list of distinct class names")
        if self.format not in FORMATS:
            raise ValueError(f"file_format {self.format!r} is not one of {', '.join(FORMATS)}")
        for key, value in (("checkpoint_sha256", self.checkpoint_sha256), (GRAPH_HASH_KEY, self.graph_sha256)):
            if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
                raise ValueError(f"{key} {value[:80]!r} is not a SHA-256")
        _check_settings(self.settings)


def damaged(path, what: str) -> CheckpointError:
    """The error of an exported file whose metadata cannot be what ``frcnn export`` wrote."""
    return CheckpointError(f"{path} has damaged frcnn metadata ({what}); rerun frcnn export to write it again")


def _check_settings(settings: InferenceSettings) -> None:
    """``ValueError`` unless the proposal and detection settings are in range and agree with the config (``export``
    derives them from it; only the score threshold and the number of proposals may differ)."""
    p, d, rpn, head = settings.proposals, settings.detections, settings.config.rpn, settings.config.roi_head
    numbers = {"proposals.pre_nms_top_n": (p.pre_nms_top_n, int), "proposals.post_nms_top_n": (p.post_nms_top_n, int),
               "proposals.nms_thresh": (p.nms_thresh, float), "proposals.min_size": (p.min_size, float),
               "detections.score_thresh": (d.score_thresh, float), "detections.nms_thresh": (d.nms_thresh, float),
               "detections.detections_per_image": (d.detections_per_image, int)}
    for key, (value, kind) in numbers.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        if not ok or (kind is int and not isinstance(value, int)) or (key.endswith("thresh") and value > 1):
            raise ValueError(f"{key} is {value!r}")
    wanted = {"proposals.pre_nms_top_n": (p.pre_nms_top_n, rpn.test_pre_nms_top_n),
              "proposals.nms_thresh": (p.nms_thresh, rpn.nms_thresh), "proposals.min_size": (p.min_size, rpn.min_size),
              "detections.nms_thresh": (d.nms_thresh, head.nms_thresh),
              "detections.detections_per_image": (d.detections_per_image, head.detections_per_image)}
    for key, (value, config_value) in wanted.items():
        if value != config_value:
            raise ValueError(f"{key} is {value!r} but the config says {config_value!r}")
