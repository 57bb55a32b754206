"""Every hyper-parameter as a frozen dataclass; named presets; TOML files and ``--set`` overrides.

Two kinds of settings, kept apart:

- ``Config``, the model and its training recipe: saved in every artefact (checkpoints, proposal files, run
  folders), hashed and compared when a run resumes. Defaults are py-faster-rcnn's alternating-optimisation
  values (shared/reference), except the switches added since the first version (``anchors.auto``,
  ``roi_head.box_target_norm``, ``solver.bias_lr_factor``, ``solver.rpn_drop_empty``), whose defaults keep
  what a config did before they existed, so that an older checkpoint's config replays as it was trained; the
  ``vgg16``/``zf`` presets set them to py-faster-rcnn's values. Presets change only what differs. Its
  test-time keys (``TEST_TIME_KEYS``) are the defaults a checkpoint offers to ``detect``/``eval``/
  ``dump-proposals``, and the only ones ``--set`` may change there.
- ``RuntimeConfig``, this machine now (loader workers, AMP, channels-last, Winograd convs, logging,
  threads): never replayed from a checkpoint, a proposal file or ``state.json``, never compared on resume.
  Spelt ``runtime.<key>``; the five that lived in ``solver`` before (``solver.num_workers``, ``amp``,
  ``channels_last``, ``cpu_winograd``, ``log_every``) keep that spelling too.

``config_to_dict`` / ``config_from_dict`` round-trip exactly. Every section is checked whenever one is made
(``_Checked``: numbers against ``_RANGES``, names against ``_CHOICES``), so a file, a ``--set``, ``replace``
or a checkpoint's stored config can never ask for, say, a zero stride, a 10^6-pixel input or an unknown
backbone: a ``ConfigError`` names the key and what is allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError

BACKBONES = ("vgg16", "zf", "resnet50", "resnet101", "tiny")
PIXEL_ORDERS = ("rgb", "bgr")
OBJECTNESS = ("softmax", "sigmoid")
LOSS_NORMALIZATIONS = ("sampled", "paper")
POOLERS = ("roipool", "roialign")
TRAIN_MODES = ("alternating", "joint")
BOX_TARGET_NORMS = ("fixed", "dataset")
MAX_INPUT_SIDE = 8192  # pixels of a rescaled image side: a config (or a checkpoint's) may not ask for more
MAX_CHANNELS = 8192


class _Checked:
    """A config section checked whenever one is made (``replace`` too): numbers against ``_RANGES``, names
    against ``_CHOICES``, so that no path (a file, ``--set``, a checkpoint's config, code) gets a value that
    cannot work."""

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_choices(self)


@dataclass(frozen=True)
class InputConfig(_Checked):
    """Image rescaling, normalisation and augmentation."""

    train_scales: tuple[int, ...] = (600,)  # shorter side; one drawn per image when several
    test_scale: int = 600
    max_size: int = 1000  # longer side cap
    flip: bool = True  # horizontal flip augmentation (dataset doubled, as py-faster-rcnn)
    pixel_order: str = "rgb"  # "rgb" (torchvision weights) or "bgr" (Caffe-converted weights)
    pixel_range: float = 1.0  # 1.0: pixels in [0, 1]; 255.0: Caffe's [0, 255]
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # in pixel_order and pixel_range
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # Caffe: (1, 1, 1)
    size_divisor: int = 1  # padded batch sides are multiples of this (1: the largest image, as py-faster-rcnn)
    # augmentation of training images (data/augment.py; off in the paper presets, which stay exact):
    # scale_jitter: each image's shorter side drawn uniformly from min(train_scales) to max(train_scales)
    # instead of one of the listed scales; photometric: brightness, contrast and saturation each scaled by a
    # factor drawn from [1 - p, 1 + p] (0: off)
    scale_jitter: bool = False
    photometric: float = 0.0


@dataclass(frozen=True)
class AnchorConfig(_Checked):
    base_size: int = 16
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    stride: int = 16
    # fit scales and ratios to the training boxes when they cover them poorly (model/anchor_fit.py); false:
    # keep these and only warn (the paper presets); a fitted config holds the fitted anchors and says false
    auto: bool = False


@dataclass(frozen=True)
class RPNConfig(_Checked):
    conv_channels: int = 512  # 256 for ZF
    objectness: str = "softmax"  # "softmax" (2k scores, the paper) or "sigmoid" (k logistic outputs)
    positive_iou: float = 0.7  # >=
    negative_iou: float = 0.3  # <
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    allowed_border: float = 0.0  # anchors further than this outside the image are ignored
    ignore_cross_boundary: bool = True
    box_loss_sigma: float = 3.0
    box_loss_weight: float = 1.0  # lambda
    loss_normalization: str = "sampled"  # "sampled" (py-faster-rcnn) | "paper" (Eq. 1)
    train_pre_nms_top_n: int = 12000  # joint training; 0 = no cap
    train_post_nms_top_n: int = 2000
    test_pre_nms_top_n: int = 6000
    test_post_nms_top_n: int = 300
    dump_pre_nms_top_n: int = 0
    dump_post_nms_top_n: int = 2000
    nms_thresh: float = 0.7
    min_size: float = 16.0  # at the original image's scale


@dataclass(frozen=True)
class RoIHeadConfig(_Checked):
    pooler: str = "roipool"  # "roipool" (the paper) or "roialign"
    sampling_ratio: int = 2  # roialign only
    batch_size_per_image: int = 64  # 128 RoIs per 2 images
    fg_fraction: float = 0.25
    fg_iou: float = 0.5  # >=
    bg_iou_hi: float = 0.5  # <
    bg_iou_lo: float = 0.0  # >=
    add_gt_as_proposals: bool = True
    box_target_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    box_target_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    # "dataset" (py-faster-rcnn alt-opt): the detector steps normalise their targets by per-class means and
    # stds of the stored proposals' targets, folded into bbox_pred when saved (train/target_stats.py);
    # "fixed": by box_target_means/stds (end-to-end; joint mode always)
    box_target_norm: str = "fixed"
    box_loss_sigma: float = 1.0
    score_thresh: float = 0.05  # >
    nms_thresh: float = 0.3
    detections_per_image: int = 100  # 0 = keep all
    fc_svd_rank: int = 0  # truncated SVD of fc6/fc7 at test time (0 = off), as Fast R-CNN


# the paper's schedule on VOC07 trainval, 5,011 images flipped to 10,022 entries: 80k RPN iterations of one
# image and 40k detector iterations of two are each 80,000 / 10,022 epochs; joint (end-to-end) 70k of two
PAPER_EPOCHS = 80000 / 10022
PAPER_JOINT_EPOCHS = 140000 / 10022


@dataclass(frozen=True)
class SolverConfig(_Checked):
    """SGD and the schedule of each step. A step runs ``*_epochs`` passes over its training entries (images,
    and their mirror images when ``input.flip``), at least ``min_iters`` iterations, the lr multiplied by
    ``gamma`` at each fraction ``lr_drops`` of it (train/schedule.py); ``*_iters`` > 0 gives a fixed
    iteration count instead, with the drops at ``*_steps`` (iterations), as configs before epochs did."""

    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    gamma: float = 0.1
    bias_lr_factor: float = 1.0  # 2.0: Caffe's lr_mult 2 on biases (the paper presets)
    rpn_epochs: float = PAPER_EPOCHS
    det_epochs: float = PAPER_EPOCHS
    joint_epochs: float = PAPER_JOINT_EPOCHS
    lr_drops: tuple[float, ...] = (0.75,)  # the paper: 60k of 80k, 30k of 40k
    min_iters: int = 0  # epoch schedules: at least this many iterations per step (small sets)
    rpn_iters: int = 0  # > 0: a fixed iteration count instead of the epochs
    rpn_steps: tuple[int, ...] = ()
    det_iters: int = 0
    det_steps: tuple[int, ...] = ()
    joint_iters: int = 0
    joint_steps: tuple[int, ...] = ()
    rpn_images_per_batch: int = 1
    det_images_per_batch: int = 2
    warmup_iters: int = 0
    warmup_epochs: float = 0.0  # epoch schedules: the warm-up in epochs (added to warmup_iters)
    warmup_factor: float = 0.001
    # RPN steps (and joint mode) leave out images without a non-difficult object (py-faster-rcnn's
    # filter_roidb); detector steps keep them as negatives
    rpn_drop_empty: bool = False
    # `frcnn train`'s default --mode (the paper presets: the 4-step alternating optimisation)
    mode: str = "alternating"
    # the length chosen from the data (train/data_schedule.py), when no --epochs/--iters/--time is given:
    # val_fraction of the training images held out for validation when no --val is given (0: none, the
    # paper presets); with validation, each step runs up to max_epochs (0: its *_epochs), its lr drop and its
    # end brought forward by a patience of `patience` validations without progress (0: none)
    val_fraction: float = 0.0
    max_epochs: float = 0.0
    patience: int = 0


@dataclass(frozen=True)
class RuntimeConfig(_Checked):
    """How this machine runs a command now; never saved as part of a model's recipe nor replayed from one."""

    num_workers: int = 2  # data loader processes (0: load in the main process)
    # bf16 autocast: None ("auto") on CUDA and on CPUs that compute bf16 natively (devices.amp_enabled);
    # true forces it (also where the CPU would emulate bf16), false is float32
    amp: bool | None = None
    channels_last: bool = True  # NHWC convs: inference on CPU and CUDA, training on CUDA
    cpu_winograd: bool = True  # CPU inference and training: 3x3 convs with >= 128 channels as Winograd F(4x4, 3x3)
    log_every: int = 20  # training: a progress line and a metrics.jsonl row every N iterations (0: only the last)
    threads: int = 0  # CPU intra-op threads (0: torch's default)


@dataclass(frozen=True)
class Config(_Checked):
    """The whole configuration of a model and its training: frozen sections, checked whenever one is made.

    >>> from dataclasses import replace
    >>> cfg = frcnn_cli.get_preset("tiny")
    >>> cfg.backbone, cfg.input.test_scale, cfg.roi_head.score_thresh
    ('tiny', 192, 0.05)
    >>> replace(cfg, rpn=replace(cfg.rpn, nms_thresh=0.6)).rpn.nms_thresh
    0.6
    """

    name: str = "vgg16"
    backbone: str = "vgg16"
    init: str = "imagenet"  # what steps 1 and 2 start from: "imagenet", "none" or a weights file
    seed: int = 3
    input: InputConfig = field(default_factory=InputConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)


_POSITIVE, _NON_NEGATIVE, _UNIT = (0, math.inf, True), (0, math.inf, False), (0, 1, False)
_AT_LEAST_1, _FINITE, _SIDE = (1, math.inf, False), (-math.inf, math.inf, False), (1, MAX_INPUT_SIDE, False)
_RANGES: dict[str, dict[str, tuple[float, float, bool]]] = {  # key -> (low, high, low excluded)
    "InputConfig": {"train_scales": _SIDE, "test_scale": _SIDE, "max_size": _SIDE, "pixel_range": _POSITIVE,
                    "pixel_mean": _FINITE, "pixel_std": _POSITIVE, "size_divisor": (1, 1024, False),
                    "photometric": (0, 0.9, False)},
    "AnchorConfig": {"base_size": _POSITIVE, "ratios": _POSITIVE, "scales": _POSITIVE, "stride": _AT_LEAST_1},
    "RPNConfig": {"conv_channels": (1, MAX_CHANNELS, False), "positive_iou": _UNIT, "negative_iou": _UNIT,
                  "batch_size_per_image": _AT_LEAST_1, "positive_fraction": _UNIT, "allowed_border": _FINITE,
                  "box_loss_sigma": _POSITIVE, "box_loss_weight": _NON_NEGATIVE, "nms_thresh": _UNIT,
                  "min_size": _NON_NEGATIVE, **{f"{m}_{w}_nms_top_n": _NON_NEGATIVE
                                               for m in ("train", "test", "dump") for w in ("pre", "post")}},
    "RoIHeadConfig": {"sampling_ratio": _NON_NEGATIVE, "batch_size_per_image": _AT_LEAST_1,
                      "fg_fraction": _UNIT, "fg_iou": _UNIT, "bg_iou_hi": _UNIT, "bg_iou_lo": _UNIT,
                      "box_target_means": _FINITE, "box_target_stds": _POSITIVE, "box_loss_sigma": _POSITIVE,
                      "score_thresh": _UNIT, "nms_thresh": _UNIT, "detections_per_image": _NON_NEGATIVE,
                      "fc_svd_rank": _NON_NEGATIVE},
    "SolverConfig": {"lr": _NON_NEGATIVE, "momentum": _UNIT, "weight_decay": _NON_NEGATIVE, "gamma": _POSITIVE,
                     "bias_lr_factor": _NON_NEGATIVE, "warmup_iters": _NON_NEGATIVE,
                     "warmup_epochs": _NON_NEGATIVE, "warmup_factor": _POSITIVE, "lr_drops": _UNIT,
                     "min_iters": _NON_NEGATIVE, "val_fraction": (0, 0.5, False), "max_epochs": (0, 1e6, False),
                     "patience": (0, 10_000, False),
                     **{f"{k}_iters": _NON_NEGATIVE for k in ("rpn", "det", "joint")},
                     **{f"{k}_epochs": (0, 1e6, False) for k in ("rpn", "det", "joint")},
                     **{f"{k}_steps": _NON_NEGATIVE for k in ("rpn", "det", "joint")},
                     **{f"{k}_images_per_batch": _AT_LEAST_1 for k in ("rpn", "det")}},
    "Config": {"seed": (0, 2**63 - 1, False)},
    "RuntimeConfig": {"num_workers": (0, 256, False), "log_every": _NON_NEGATIVE, "threads": (0, 4096, False)},
}
_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {  # key -> the allowed names, each list written once above
    "InputConfig": {"pixel_order": PIXEL_ORDERS},
    "RPNConfig": {"objectness": OBJECTNESS, "loss_normalization": LOSS_NORMALIZATIONS},
    "RoIHeadConfig": {"pooler": POOLERS, "box_target_norm": BOX_TARGET_NORMS},
    "SolverConfig": {"mode": TRAIN_MODES},
    "Config": {"backbone": BACKBONES},
}
_SECTIONS = {"InputConfig": "input.", "AnchorConfig": "anchors.", "RPNConfig": "rpn.",
             "RoIHeadConfig": "roi_head.", "SolverConfig": "solver.", "Config": "", "RuntimeConfig": "runtime."}
_NON_EMPTY = ("train_scales", "ratios", "scales")


def _describe(low: float, high: float, low_excluded: bool, many: bool) -> str:
    if high < math.inf:
        return f"from {low} to {high}"
    if low == -math.inf:
        return "that are finite" if many else "that is finite"
    return "above 0" if (low, low_excluded) == (0, True) else f"of {low} or more"


def _check_ranges(section: Any) -> None:
    kind = type(section).__name__
    for name, (low, high, low_excluded) in _RANGES[kind].items():
        value = getattr(section, name)
        many = isinstance(value, tuple)
        ok = not many or bool(value) or name not in _NON_EMPTY
        for v in value if many else (value,):
            ok = ok and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
                low < v if low_excluded else low <= v) and v <= high
        if not ok:
            raise ConfigError(f"config key '{_SECTIONS[kind]}{name}' is {value!r}; give "
                              f"{'one or more values' if many else 'a value'} "
                              f"{_describe(low, high, low_excluded, many)}")


def _check_choices(section: Any) -> None:
    kind = type(section).__name__
    for name, allowed in _CHOICES.get(kind, {}).items():
        value = getattr(section, name)
        if value not in allowed:
            raise ConfigError(f"config key '{_SECTIONS[kind]}{name}' is {value!r}; choose one of the allowed values: "
                              f"{', '.join(allowed)}")


def _with(cfg: Config, **sections: dict[str, Any]) -> Config:
    changes = {name: replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return replace(cfg, **changes)


def _presets() -> dict[str, Config]:
    # py-faster-rcnn alt-opt's switches (the dataclass defaults keep what configs did before they existed)
    vgg16 = _with(Config(), anchors={"auto": False}, roi_head={"box_target_norm": "dataset"},
                  solver={"bias_lr_factor": 2.0, "rpn_drop_empty": True})
    zf = replace(_with(vgg16, rpn={"conv_channels": 256}), name="zf", backbone="zf")
    resnet50 = replace(vgg16, name="resnet50", backbone="resnet50")
    resnet101 = replace(vgg16, name="resnet101", backbone="resnet101")
    tiny = _with(
        replace(vgg16, name="tiny", backbone="tiny", init="none", seed=3),
        input={"train_scales": (144, 240), "scale_jitter": True, "photometric": 0.25, "test_scale": 192,
               "max_size": 320, "size_divisor": 16},
        rpn={"conv_channels": 128, "min_size": 4.0, "test_pre_nms_top_n": 1000, "test_post_nms_top_n": 100,
             "train_pre_nms_top_n": 2000, "train_post_nms_top_n": 300, "dump_post_nms_top_n": 300},
        anchors={"scales": (1.5, 3.0, 6.0), "auto": True},
        roi_head={"pooler": "roialign", "box_target_norm": "fixed"},
        solver={"lr": 0.01, "rpn_epochs": 4.0, "det_epochs": 5.0, "joint_epochs": 6.0, "min_iters": 0,
                "rpn_images_per_batch": 4, "det_images_per_batch": 4, "warmup_epochs": 0.5,
                "bias_lr_factor": 1.0, "rpn_drop_empty": False, "mode": "joint", "val_fraction": 0.15,
                "max_epochs": 60.0, "patience": 5},
    )
    return {c.name: c for c in (vgg16, zf, resnet50, resnet101, tiny)}


PRESETS: dict[str, Config] = _presets()
# the tiny preset's runs are short and share the cores with one loader process: half the cores compute (more
# threads than free cores make PyTorch's CPU kernels wait on each other; docs/demo.md)
_PRESET_RUNTIME = {"tiny": RuntimeConfig(num_workers=1, log_every=10, threads=max(1, (os.cpu_count() or 2) // 2))}


def runtime_defaults(config_name: str) -> RuntimeConfig:
    """The runtime defaults that go with a preset (by the config's ``name``): this machine's choice, not the
    model's, so a checkpoint of the preset gets them too whatever ran when it was trained."""
    return _PRESET_RUNTIME.get(config_name, RuntimeConfig())


# the keys of a Config that only matter at test time: the defaults a checkpoint offers, and the only ones
# `--set` may change on a checkpoint (detect, eval, dump-proposals, bench --model)
TEST_TIME_KEYS = ("input.test_scale", "input.max_size", "rpn.test_pre_nms_top_n", "rpn.test_post_nms_top_n",
                  "rpn.dump_pre_nms_top_n", "rpn.dump_post_nms_top_n", "rpn.nms_thresh", "rpn.min_size",
                  "roi_head.score_thresh", "roi_head.nms_thresh", "roi_head.detections_per_image",
                  "roi_head.fc_svd_rank")
RUNTIME_KEYS = tuple(f.name for f in fields(RuntimeConfig))
LEGACY_RUNTIME_KEYS = ("amp", "channels_last", "cpu_winograd", "log_every", "num_workers")  # once in `solver`


def get_preset(name: str) -> Config:
    """The named preset (``vgg16``, ``zf``, ``resnet50``, ``resnet101``, ``tiny``); ``ConfigError`` lists the
    known names.

    >>> frcnn_cli.get_preset("zf").rpn.conv_channels
    256
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)} or a .toml file")
    return PRESETS[name]
