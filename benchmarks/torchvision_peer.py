"""torchvision's ``FasterRCNN`` built in the paper's VGG16 configuration: the peer every benchmark compares to.

Same as frcnn's ``vgg16`` preset wherever torchvision allows it:

- backbone: torchvision's VGG16 ``features[:30]`` (conv1_1 … conv5_3 + ReLU, pool5 dropped): 512 channels,
  stride 16 (torchvision's max pools use floor, Caffe's ceil; on inputs padded to a multiple of 32 the
  feature maps are the same size); conv1_x and conv2_x frozen for training, as in the paper;
- anchors: one feature map, sizes 128, 256, 512 × aspect ratios 0.5, 1, 2 (the paper's 9 anchors of
  scales 8, 16, 32 on a 16-pixel base; torchvision centres and rounds them slightly differently);
- RPN: 3×3 conv 512 + ReLU and 1×1 convs (torchvision: one sigmoid logit per anchor, the paper a 2-way
  softmax; the same cost); test 6000 → 300 proposals, NMS 0.7; train 12000 → 2000, 256 anchors/image;
- RoI pooling: ``MultiScaleRoIAlign`` on the single map, 7×7, sampling ratio 2 — the nearest thing to
  RoIPool 7×7 that torchvision's detector offers (RoIAlign interpolates 4 samples per bin instead of
  taking a max over the bin; about the same cost);
- head: ``TwoMLPHead`` 25088 → 4096 → 4096 (no dropout; frcnn's dropout is the identity at test time),
  ``FastRCNNPredictor`` for 21 classes; 64 RoIs per image in training, 25 % foreground;
- post-processing: score > 0.05, per-class NMS 0.3, 100 detections per image;
- input: shorter side 600, longer at most 1000, ImageNet mean/std (frcnn's vgg16 preset too).

Random weights (speed only). ``build_peer`` picks the peer of an frcnn config: this one for ``vgg16``, and for
the ``tiny`` preset of quick runs torchvision's detector around frcnn's tiny shared convs.
"""

from __future__ import annotations

import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from frcnn_cli.config import Config


def _faster_rcnn(backbone, channels: int, head_dim: int, anchor_sizes: tuple[int, ...], *, min_size: int,
                 max_size: int, num_classes: int, pre_nms_test: int, post_nms_test: int, pre_nms_train: int,
                 post_nms_train: int) -> FasterRCNN:
    """torchvision's detector around ``backbone`` (``channels`` out, stride 16) with the paper's RPN, RoI and
    post-processing settings, a ``head_dim`` fc head and anchors of ``anchor_sizes`` x ratios 0.5, 1, 2."""
    anchors = AnchorGenerator(sizes=(anchor_sizes,), aspect_ratios=((0.5, 1.0, 2.0),))
    return FasterRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        rpn_anchor_generator=anchors, rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=pre_nms_train, rpn_post_nms_top_n_train=post_nms_train,
        rpn_pre_nms_top_n_test=pre_nms_test, rpn_post_nms_top_n_test=post_nms_test, rpn_nms_thresh=0.7,
        rpn_batch_size_per_image=256,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, head_dim), box_predictor=FastRCNNPredictor(head_dim, num_classes),
        box_score_thresh=0.05, box_nms_thresh=0.3, box_detections_per_img=100,
        box_batch_size_per_image=64, box_positive_fraction=0.25,
    )


def build_torchvision_vgg16(*, min_size: int = 600, max_size: int = 1000, num_classes: int = 21,
                            pre_nms_test: int = 6000, post_nms_test: int = 300, pre_nms_train: int = 12000,
                            post_nms_train: int = 2000) -> FasterRCNN:
    """torchvision's Faster R-CNN with the paper's VGG16 backbone and head sizes (random weights)."""
    backbone = torchvision.models.vgg16(weights=None).features[:30]
    backbone.out_channels = 512
    for i in (0, 2, 5, 7):  # conv1_1, conv1_2, conv2_1, conv2_2: never trained in the paper
        for p in backbone[i].parameters():
            p.requires_grad_(False)
    return _faster_rcnn(backbone, 512, 4096, (128, 256, 512), min_size=min_size, max_size=max_size,
                        num_classes=num_classes, pre_nms_test=pre_nms_test, post_nms_test=post_nms_test,
                        pre_nms_train=pre_nms_train, post_nms_train=post_nms_train)


def build_peer(cfg: Config, *, min_size: int | None = None, num_classes: int = 21) -> FasterRCNN:
    """The peer of an frcnn config, with its sizes (shorter side ``min_size``, default the test scale) and
    proposal numbers: the VGG16 detector above for ``vgg16``; for ``tiny`` (quick runs) torchvision's detector
    around frcnn's own tiny shared convs (128 channels, stride 16; fc head 256; anchors 24, 48, 96)."""
    rpn = cfg.rpn
    settings = dict(min_size=min_size or cfg.input.test_scale, max_size=cfg.input.max_size, num_classes=num_classes,
                    pre_nms_test=rpn.test_pre_nms_top_n, post_nms_test=rpn.test_post_nms_top_n,
                    pre_nms_train=rpn.train_pre_nms_top_n, post_nms_train=rpn.train_post_nms_top_n)
    if cfg.backbone == "vgg16":
        return build_torchvision_vgg16(**settings)
    if cfg.backbone == "tiny":
        from frcnn_cli.model.backbones import build_backbone

        parts = build_backbone("tiny")
        parts.shared.out_channels = parts.out_channels
        sizes = tuple(int(cfg.anchors.base_size * s) for s in cfg.anchors.scales)
        return _faster_rcnn(parts.shared, parts.out_channels, parts.head_dim, sizes, **settings)
    raise ValueError(f"no torchvision peer for the {cfg.backbone} backbone; use vgg16 or tiny")


def torchvision_network(model: FasterRCNN, images, original_sizes):
    """torchvision's ``GeneralizedRCNN.forward`` at test time after ``model.transform``: backbone, RPN,
    RoI heads, post-processing (so the pre-processing can be timed apart)."""
    from collections import OrderedDict

    features = OrderedDict([("0", model.backbone(images.tensors))])
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    return model.transform.postprocess(detections, images.image_sizes, original_sizes)
