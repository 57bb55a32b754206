"""How long a run trains when the user does not say (no ``--epochs``, ``--iters`` or ``--time``): as long as a
held-out part of the data keeps getting better.

- **Validation**: the user's ``--val``; else, when ``solver.val_fraction`` > 0 (``tiny``; the paper presets
  have 0), a split carved from the training manifest: ``round(fraction × images)`` images, at most
  ``MAX_CARVED``, drawn by the config's seed (``manifest.split_manifest``), so the same manifest and seed
  always carve the same images and a rerun resumes on them; the rest is what trains. A set too small to give
  ``MIN_CARVED`` images is trained on whole. ``frcnn train`` carves (with ``--time`` too: its best checkpoint
  is chosen on that split), and says so in its plan with the way to turn it off; the single-step commands
  validate on ``--val`` only (a detector step's stored proposals are those of the whole manifest).
- **Length**: with validation, no length given and ``solver.patience`` K > 0, each step runs up to
  ``solver.max_epochs`` epochs (``plan_step(until_plateau=True)``), and K validations without progress bring
  its lr drop forward, K more end it (``step_control.py``). ``--patience`` overrides K; ``--epochs``,
  ``--iters`` and ``--time`` fix the length (the patience then applies only when given).
- Without validation, each step runs its fixed ``solver.<kind>_epochs`` (the paper presets, exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..data.manifest import Manifest, split_manifest

MIN_CARVED = 5  # validation images worth holding out: fewer would measure nothing
MAX_CARVED = 250  # a validation beyond this many images costs more than it tells


@dataclass(frozen=True)
class LengthChoice:
    """What decides a run's length: ``source`` ("--iters", "--epochs", "--time", "validation" or "epochs"),
    the patience to use (None: never stop early) and whether the steps run up to ``solver.max_epochs``."""

    source: str
    patience: int | None
    until_plateau: bool


def choose_length(cfg: Config, *, iters: int | None, epochs: float | None, seconds: float | None,
                  validating: bool, patience: int | None) -> LengthChoice:
    """The length rule of a run (module docstring); ``validating``: a validation set is given or carved."""
    for source, value in (("--iters", iters), ("--epochs", epochs), ("--time", seconds)):
        if value is not None:
            return LengthChoice(source, patience, False)
    if validating and (patience is not None or cfg.solver.patience > 0):
        return LengthChoice("validation", patience if patience is not None else cfg.solver.patience, True)
    return LengthChoice("epochs", patience, False)


def carves(cfg: Config, *, iters: int | None, epochs: float | None) -> bool:
    """``frcnn train`` holds out a validation split of its own: none given, ``solver.val_fraction`` > 0 and
    the length left to the data or to ``--time`` (not fixed by ``--epochs`` / ``--iters``)."""
    return cfg.solver.val_fraction > 0 and iters is None and epochs is None


def carved_count(images: int, fraction: float) -> int:
    """How many of ``images`` a carve holds out: ``round(fraction × images)`` up to ``MAX_CARVED``; 0 when
    that is under ``MIN_CARVED`` or would leave fewer images to train on than it holds out."""
    count = min(round(images * fraction), MAX_CARVED)
    return count if count >= MIN_CARVED and images - count >= count else 0


def carve_validation(manifest: Manifest, cfg: Config) -> tuple[Manifest, Manifest] | None:
    """``(train, val)``: the training manifest less the carved validation images, and those; None when the
    set is too small (``carved_count``). Deterministic in the manifest and ``cfg.seed``."""
    count = carved_count(len(manifest.images), cfg.solver.val_fraction)
    if count == 0:
        return None
    return split_manifest(manifest, count / len(manifest.images), cfg.seed)


def carve_note(train: Manifest, val: Manifest | None, cfg: Config, path) -> str:
    """What the plan says about a carved split (or about a set too small for one)."""
    if val is None:
        return (f"{path} has {len(train.images)} images: too few to hold out a validation split "
                f"(at least {MIN_CARVED} images, no more than half); every image trains and each step runs its "
                "fixed epochs (give --val M.json to validate on other images)")
    total = len(train.images) + len(val.images)
    return (f"validation: {len(val.images)} of the {total} images of {path} "
            f"({100 * len(val.images) / total:.0f} %, drawn by seed {cfg.seed}) are held out to choose each step's "
            f"length and its best checkpoint, and the other {len(train.images)} train; give --val M.json to "
            "validate on your own split, or --set solver.val_fraction=0 to train on every image for the "
            "preset's fixed epochs")
