"""What a training stage records besides its weights, and reads back when it resumes: where the resumable state
lives (``resume_path``) and loading it (``_load_resume``: model, optimizer, control and per-process RNG states,
checked against the manifest, the stage and the length), the provenance its checkpoints carry
(``_provenance``), and ``metrics.jsonl`` with TensorBoard events (``_MetricsLog``). ``stage.py`` runs the
stage, writes its checkpoints and imports these (``resume_path`` is importable from there too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..atomic import append_text
from ..data.manifest import manifest_hash
from ..dense_proposals import is_dense
from ..devices import precision_name
from ..errors import TrainingError
from ..model.checkpoint import file_sha256, read_checkpoint
from . import distributed
from .loop import LoopState
from .step_control import StepControl

if TYPE_CHECKING:  # annotations only: stage.py imports this module
    from .stage import StageRequest


BUDGET_CAP = 10**9  # the loop's bound under --time: the budget's control ends the step


def resume_path(out: Path) -> Path:
    """Where the resumable state of a stage writing ``out`` lives while it runs."""
    return out.with_name(out.name + ".resume.pt")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _MetricsLog:
    """``metrics.jsonl`` (one line per logged step) and TensorBoard events when tensorboard is installed."""

    def __init__(self, path: Path | None, stage: str) -> None:
        self.path, self.stage, self.tb = path, stage, None
        if path is not None:
            with contextlib.suppress(ImportError, ModuleNotFoundError):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard" / stage))

    def write(self, state: LoopState) -> None:
        if self.path is None:
            return
        row = {"stage": self.stage, "iteration": state.iteration, **state.losses, "lr": state.lr,
               "images_per_s": round(state.images_per_s, 3)}
        append_text(self.path, json.dumps(row) + "\n")  # a full disk: an error naming the file
        if self.tb is not None:
            for key, value in state.losses.items():
                self.tb.add_scalar(f"{self.stage}/{key}", value, state.iteration)
            self.tb.add_scalar(f"{self.stage}/lr", state.lr, state.iteration)

    def write_row(self, row: dict) -> None:
        """A validation (``val_map`` / ``val_recall``) or an event row (``lr_drop``, ``early_stop``)."""
        if self.path is None:
            return
        append_text(self.path, json.dumps({"stage": self.stage, **row}) + "\n")
        if self.tb is not None:
            flat = {k: v for k, v in row.items() if k.startswith("val_") and isinstance(v, (int, float))}
            flat.update({f"val_recall_{t}": v for t, v in (row.get("val_recall") or {}).items()})
            for key, value in flat.items():
                self.tb.add_scalar(f"{self.stage}/{key}", value, row["iteration"])


def _provenance(req: StageRequest, init_info: dict, total: int, seed: int) -> dict:
    prov = {"manifest_hash": manifest_hash(req.manifest), "manifest": str(req.manifest_path),
            "iterations": total, "seed": seed, **init_info,
            "runtime": {**dataclasses.asdict(req.runtime), "device": str(req.device),  # a record, never replayed
                        "precision": precision_name(req.device, req.runtime.amp)}}
    if req.proposals_path is not None:
        prov["proposals"] = str(req.proposals_path)
        if not is_dense(req.proposals_path):  # the dense windows are made, not read
            prov["proposals_hash"] = file_sha256(req.proposals_path)
    return prov


def _load_resume(req: StageRequest, model, optimizer, total: int, control: StepControl) -> int:
    path = resume_path(req.out)
    if not (req.resume and path.exists()):
        return 0
    ckpt = read_checkpoint(path)
    state = ckpt.get("train_state") or {}
    if state.get("manifest_hash") != manifest_hash(req.manifest):
        raise TrainingError(f"{path} was made from another dataset manifest than {req.manifest_path}; "
                            f"delete {path} to start this stage afresh")
    if ckpt.get("stage") != req.spec.label:
        raise TrainingError(f"{path} holds an interrupted '{ckpt.get('stage')}' stage, not "
                            f"'{req.spec.label}'; resume it with the command that started it, or "
                            f"delete {path} to start this stage afresh")
    if state.get("total", total) != total:
        def length(n: int) -> str:
            return "a length fitted to a time budget (--time)" if n == BUDGET_CAP else f"{n} iterations"

        raise TrainingError(f"{path} is a run of {length(state['total'])}, this one asks for {length(total)}; "
                            f"resume with the same --iters/--epochs/--time, or delete {path} to start this stage "
                            "afresh")
    model.load_state_dict({f"{p}.{k}": v for p, sd in ckpt["parts"].items() for k, v in sd.items()},
                          strict=False)
    optimizer.load_state_dict(state["optimizer"])
    control.load_state_dict(state.get("control"))
    per_rank = state.get("rng_per_rank") or []
    _restore_rng(per_rank[distributed.rank()] if len(per_rank) == distributed.world_size() else state["rng"])
    return int(state["iteration"])
