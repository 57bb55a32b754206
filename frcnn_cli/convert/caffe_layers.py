"""Which layer of a Caffe ZF or VGG16 net fills which frcnn parameters (py-faster-rcnn's layer names).

Names from py-faster-rcnn's prototxts (``models/pascal_voc/{ZF,VGG16}/faster_rcnn_alt_opt/*.pt``,
``faster_rcnn_end2end``, ``fast_rcnn``; ``models/coco/VGG16``), which load the ImageNet models
(``data/imagenet_models/ZF.v2.caffemodel``, ``VGG16.v2.caffemodel``) by the same names:

- shared: ZF ``conv1`` … ``conv5``, VGG16 ``conv1_1`` … ``conv5_3`` → part ``backbone``: ``conv1`` … ``conv5``,
  ``features.0`` … ``features.28`` (torchvision's indices);
- head_top: ``fc6``, ``fc7`` → ``roi_head``: ``head_top.fc6``/``fc7`` (ZF), ``head_top.classifier.0``/``3`` (VGG16);
- rpn: ``rpn_conv1`` (ZF alt-opt) or ``rpn_conv/3x3`` (the others), ``rpn_cls_score``, ``rpn_bbox_pred`` →
  ``rpn``: ``conv``, ``cls_logits``, ``bbox_pred``;
- predictors: ``cls_score``, ``bbox_pred`` → ``roi_head``: ``cls_score``, ``bbox_pred``.

Every one of them is a layer with two blobs, weights and bias, in PyTorch's layouts already: Caffe's
convolution weights are ``[O, I, kH, kW]`` and its fully connected weights ``[O, I]`` with ``I`` the
pooled ``C×H×W`` flattened in that order, as ``torch.flatten`` of ``[S, C, H, W]``. The RPN's channel
layouts are py-faster-rcnn's in frcnn too (``RPNHead``: scores ``c*A + a`` with the A background scores first,
deltas ``4*a + coord``), so no tensor is permuted. The ImageNet classifier ``fc8`` is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUPS = ("shared", "head_top", "rpn", "predictors")
IMAGENET_CLASSIFIER = ("fc8",)  # by name; any other fully connected layer on fc7 of an ImageNet model too
_VGG16_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
                "conv4_3", "conv5_1", "conv5_2", "conv5_3")
_VGG16_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision's features.N of each conv


@dataclass(frozen=True)
class LayerSlot:
    """A Caffe layer frcnn reads: the ``names`` it may have (messages use the first), the ``FasterRCNN``
    ``part`` and the ``module`` inside it that its weights and bias fill, its Caffe ``type`` and its
    ``group`` (one of ``GROUPS``)."""

    names: tuple[str, ...]
    part: str
    module: str
    type: str
    group: str

    @property
    def name(self) -> str:
        return self.names[0]


def _shared(backbone: str) -> list[LayerSlot]:
    if backbone == "vgg16":
        return [LayerSlot((n,), "backbone", f"features.{i}", "Convolution", "shared")
                for n, i in zip(_VGG16_CONVS, _VGG16_INDICES)]
    return [LayerSlot((f"conv{i}",), "backbone", f"conv{i}", "Convolution", "shared") for i in range(1, 6)]


def layer_slots(backbone: str) -> tuple[LayerSlot, ...]:
    """Every layer frcnn reads from a Caffe ``backbone`` net ("zf" or "vgg16"), grouped as in ``GROUPS``."""
    fc = {"vgg16": ("classifier.0", "classifier.3")}.get(backbone, ("fc6", "fc7"))
    return (
        *_shared(backbone),
        LayerSlot(("fc6",), "roi_head", f"head_top.{fc[0]}", "InnerProduct", "head_top"),
        LayerSlot(("fc7",), "roi_head", f"head_top.{fc[1]}", "InnerProduct", "head_top"),
        LayerSlot(("rpn_conv1", "rpn_conv/3x3"), "rpn", "conv", "Convolution", "rpn"),
        LayerSlot(("rpn_cls_score",), "rpn", "cls_logits", "Convolution", "rpn"),
        LayerSlot(("rpn_bbox_pred",), "rpn", "bbox_pred", "Convolution", "rpn"),
        LayerSlot(("cls_score",), "roi_head", "cls_score", "InnerProduct", "predictors"),
        LayerSlot(("bbox_pred",), "roi_head", "bbox_pred", "InnerProduct", "predictors"),
    )


def guess_backbone(names: set[str]) -> str | None:
    """"vgg16" for a net with ``conv1_1``, "zf" for one with ``conv1``, else None."""
    if "conv1_1" in names:
        return "vgg16"
    if "conv1" in names:
        return "zf"
    return None
