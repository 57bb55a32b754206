"""The alternating steps and the joint mode as declarative stage specs, and how each step's model starts.

The paper's 4-step alternating optimisation (Sec. 3.2, py-faster-rcnn ``train_faster_rcnn_alt_opt.py``):

1. ``rpn``: backbone from ImageNet, RPN layers new; backbone (less the paper's always-frozen layers) and RPN
   learn.
2. ``detector``: its own backbone from ImageNet, Fast R-CNN on step 1's proposals; backbone and region head
   learn.
3. ``rpn --freeze-shared``: shared convs from step 2, frozen; only the RPN layers learn. The step-2 region
   head travels along unchanged so that step 4 can start its fc layers from it.
4. ``detector --freeze-shared``: shared convs and the step-3 RPN frozen; fc6/fc7 start from step 2's, the
   class scores and box predictors are re-initialised (py-faster-rcnn: not stored in the stage-2 RPN model).
   Its output is the unified detector.

``joint``: approximate joint training, every part learns, proposals treated as constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..config import Config, RuntimeConfig, SolverConfig, runtime_defaults
from ..config_io import Overrides, resolve_settings
from ..errors import CheckpointError, ConfigError
from ..model.checkpoint import Init, checkpoint_config, load_parts, read_init
from ..model.detector import FasterRCNN
from ..model.weights import init_backbone

KINDS = ("rpn", "detector", "joint")


@dataclass(frozen=True)
class StageSpec:
    """What one training stage runs, trains and saves."""

    kind: str  # "rpn", "detector" or "joint"
    freeze_shared: bool
    run_rpn: bool
    run_roi_head: bool
    needs_proposal_file: bool
    trainable: tuple[str, ...]  # parts whose parameters learn; these and the loaded parts are saved

    @property
    def name(self) -> str:
        return f"{self.kind}{' (shared convs frozen)' if self.freeze_shared else ''}"

    @property
    def label(self) -> str:
        """The ``stage`` its checkpoints record: rpn, detector, rpn-shared-frozen, detector-shared-frozen, joint."""
        return self.kind + ("-shared-frozen" if self.freeze_shared else "")

    def images_per_batch(self, solver: SolverConfig) -> int:
        return solver.rpn_images_per_batch if self.kind == "rpn" else solver.det_images_per_batch


def stage_spec(kind: str, *, freeze_shared: bool = False) -> StageSpec:
    """The spec of a ``train-rpn`` / ``train-detector`` / joint stage."""
    if kind not in KINDS:
        raise ConfigError(f"unknown training stage '{kind}'; choose one of {', '.join(KINDS)}")
    if kind == "joint" and freeze_shared:
        raise ConfigError("--freeze-shared makes no sense for joint training: every part learns there")
    if kind == "rpn":
        trainable = ("rpn",) if freeze_shared else ("backbone", "rpn")
        return StageSpec("rpn", freeze_shared, True, False, False, trainable)
    if kind == "detector":
        trainable = ("roi_head",) if freeze_shared else ("backbone", "roi_head")
        return StageSpec("detector", freeze_shared, False, True, True, trainable)
    return StageSpec("joint", False, True, True, False, ("backbone", "rpn", "roi_head"))


def build_stage_model(cfg: Config, classes: list[str], spec: StageSpec,
                      init: Init) -> tuple[FasterRCNN, dict, tuple[str, ...]]:
    """The model a stage starts from, its initialisation provenance, and the parts that were loaded.

    ``init`` (``read_init``): ImageNet, none, a weights file or a checkpoint. Every part a checkpoint holds is loaded,
    except that step 4 (detector, shared convs frozen) takes only fc6/fc7 of the region head and starts the
    class scores and box predictors afresh, as py-faster-rcnn. Parts not loaded keep the paper's fresh
    initialisation (N(0, 0.01) for the RPN and cls_score, N(0, 0.001) for bbox_pred).
    """
    model = FasterRCNN(cfg, classes)
    if init.kind != "checkpoint":
        if spec.freeze_shared:
            raise ConfigError("--freeze-shared needs --init CHECKPOINT: the shared convs must come from an "
                              "earlier step (step 3: --init det1.pt, step 4: --init rpn2.pt)")
        init_backbone(model.backbone_parts, cfg.backbone, init)  # imagenet, none, or a weights file
        return model, {"init": init.spec}, ()
    ckpt, path = init.data, init.spec
    present = tuple(p for p in model.part_names if p in ckpt.get("parts", {}))
    if spec.kind == "detector" and spec.freeze_shared and "rpn" not in present:
        raise CheckpointError(f"{path} has no RPN head; step 4 starts from the step-3 RPN checkpoint "
                              "(frcnn train-rpn --init det1.pt --freeze-shared)")
    head_top_only = spec.kind == "detector" and spec.freeze_shared
    for part in present:
        load_parts(model, ckpt, (part,), path, head_top_only=head_top_only and part == "roi_head")
    provenance = {"init": path, "init_stage": ckpt.get("stage"), "init_parts": list(present)}
    return model, provenance, present


# checkpoint stages whose shared convs a --freeze-shared step keeps: the step-2 detector's as steps 3 and 4
# keep them, or convs trained jointly with both heads
_SHARED_CONVS_KEPT = ("rpn-shared-frozen", "detector-shared-frozen", "joint")
_STEP_DESCRIPTIONS = {"rpn": "a step-1 RPN (stage 'rpn')", "detector": "a step-2 detector (stage 'detector')"}


def shared_convs_warning(spec: StageSpec, init_info: dict) -> str | None:
    """A warning when ``--freeze-shared`` keeps convs other than those of the paper's schedule, else None.

    Step 3 freezes the step-2 detector's convs (``--init det1.pt``); step 4 freezes the same convs as kept by
    step 3 (``--init rpn2.pt``), so that the RPN and the detector of the result share them. Another
    checkpoint (e.g. step 1's ``rpn1.pt``) may be on purpose: a warning, not an error.
    """
    if not spec.freeze_shared or "init_stage" not in init_info:
        return None
    stage, init = init_info["init_stage"], init_info["init"]
    if stage in _SHARED_CONVS_KEPT or (spec.kind == "rpn" and stage == "detector"):
        return None
    what = _STEP_DESCRIPTIONS.get(str(stage), f"a checkpoint of stage '{stage}', which frcnn does not write")
    if spec.kind == "rpn":
        paper, fix = "step 3 freezes the step-2 detector's convs", "--init det1.pt"
    else:
        paper = ("step 4 freezes the step-2 detector's convs as kept by step 3 (the output of frcnn train-rpn "
                 "--init det1.pt --freeze-shared)")
        fix = "--init rpn2.pt"
    message = f"--freeze-shared freezes the shared convs of {init}, {what}; the paper's {paper}"
    if spec.kind == "detector" and "roi_head" not in init_info.get("init_parts", ()):
        message += f"; {init} has no region head either, so fc6/fc7 start from random weights"
    return message + f". Training goes on: stop it and use {fix} unless this is on purpose"


def stage_config(config: str | None, overrides: Overrides | Sequence[str], seed: int | None,
                 init: str | None) -> tuple[Config, RuntimeConfig, Init]:
    """The config, runtime settings and init of a ``train-rpn``/``train-detector`` stage, with ``init`` read
    once: ``--config`` (default vgg16) then ``--set`` then ``--seed``; ``--init`` (default: the config's
    ``init``). A checkpoint init brings its own config unless ``--config`` was given; backbones must agree.
    """
    cfg, runtime = resolve_settings(config)
    overrides = Overrides.parse(overrides)
    init_read = read_init(init or overrides.apply(cfg).init)
    if init_read.kind == "checkpoint":
        ckpt_cfg = checkpoint_config(init_read.data, init_read.spec)
        if config is not None and ckpt_cfg.backbone != cfg.backbone:
            raise CheckpointError(f"{init_read.spec} holds a {ckpt_cfg.backbone} backbone but --config asks "
                                  f"for {cfg.backbone}; use a checkpoint of the same backbone or drop --config")
        if config is None:
            cfg, runtime = ckpt_cfg, runtime_defaults(ckpt_cfg.name)
    cfg = overrides.apply(cfg)
    cfg = cfg if seed is None else replace(cfg, seed=seed)
    return cfg, overrides.apply_runtime(runtime), init_read


def freeze_for_stage(model: FasterRCNN, spec: StageSpec) -> None:
    """Parts outside ``spec.trainable`` get ``requires_grad = False``; the paper's frozen layers stay frozen."""
    for part in model.part_names:
        if part in spec.trainable:
            model.unfreeze(part)
        else:
            model.freeze(part)
    model.apply_paper_freezing()
