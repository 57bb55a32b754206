"""The training-time target code does not wait for the device, and the inference path neither reads a device batch
back before its forward nor runs device ops per image.

On the CPU a ``TorchFunctionMode`` records every call that would make the host wait on a CUDA device:
reading values back (``.item()``, ``.tolist()``, ``bool``/``int``/``float`` of a tensor), output sizes that
depend on values (``nonzero``, boolean-mask indexing, ``bincount``, ``unique``, ``repeat_interleave``
without ``output_size``) and tensors made from host data (``torch.tensor``: a host-to-device copy). With a
GPU, ``torch.cuda.set_sync_debug_mode("error")`` checks the real thing.
"""

from __future__ import annotations

import pytest
import torch
from conftest import rpn_losses_of
from torch.overrides import TorchFunctionMode

from frcnn_cli.config import RoIHeadConfig, RPNConfig
from frcnn_cli.model.anchors import AnchorGrid
from frcnn_cli.model.roi_targets import label_and_sample_rois
from frcnn_cli.model.rpn import _split_by_image, select_proposals

_READ_BACK = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
              "masked_select", "unique", "unique_consecutive", "bincount", "cpu", "numpy", "equal", "allclose",
              "tensor", "as_tensor"}
_INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


def _has_mask(index) -> bool:
    parts = index if isinstance(index, (tuple, list)) else (index,)
    return any((isinstance(p, torch.Tensor) and p.dtype == torch.bool)
               or (isinstance(p, slice) and any(isinstance(v, torch.Tensor) for v in (p.start, p.stop, p.step)))
               for p in parts)


class SyncRecorder(TorchFunctionMode):
    """Names of the calls that would sync on CUDA, in order (``self.syncs``)."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in _READ_BACK or (name in _INDEXING and len(args) > 1 and _has_mask(args[1])) \
                or (name == "where" and len(args) + len(kwargs) == 1) \
                or (name == "repeat_interleave" and isinstance(kwargs.get("repeats", args[1] if len(args) > 1
                                                                          else None), torch.Tensor)
                    and kwargs.get("output_size") is None):
            self.syncs.append(name)
        return func(*args, **kwargs)


def _batch():
    anchors = AnchorGrid(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32), stride=16).grid(20, 26, "cpu")
    gt = [torch.tensor([[30.0, 40.0, 200.0, 220.0], [250.0, 10.0, 400.0, 120.0]]), torch.zeros(0, 4),
          torch.tensor([[0.0, 0.0, 100.0, 90.0]])]
    return anchors, gt, torch.tensor([[320, 416], [300, 400], [280, 416]])


def _rpn_loss_inputs(objectness: str):
    anchors, gt, sizes = _batch()
    torch.manual_seed(0)
    logits = torch.randn(3, anchors.shape[0], 2 if objectness == "softmax" else 1, requires_grad=True)
    deltas = torch.randn(3, anchors.shape[0], 4, requires_grad=True)
    return logits, deltas, anchors, gt, sizes


@pytest.mark.parametrize(("objectness", "normalization"),
                         [("softmax", "sampled"), ("sigmoid", "sampled"), ("softmax", "paper")])
def test_rpn_losses_make_no_host_sync(objectness, normalization):
    cfg = RPNConfig(objectness=objectness, loss_normalization=normalization)
    inputs = _rpn_loss_inputs(objectness)
    rpn_losses_of(*inputs, cfg=cfg)  # warm-up: the box coder's constants are made once per device
    with SyncRecorder() as recorder:
        losses = rpn_losses_of(*inputs, cfg=cfg)
    assert recorder.syncs == []
    (losses["loss_rpn_cls"] + losses["loss_rpn_box"]).backward()


def test_roi_sampling_makes_one_sync_for_the_number_of_rois():
    anchors, gt, _ = _batch()
    proposals = [anchors[::7] + 3.0, anchors[1::11], anchors[2::5] - 1.0]
    labels = [torch.arange(1, g.shape[0] + 1) for g in gt]
    label_and_sample_rois(proposals, gt, labels, cfg=RoIHeadConfig())
    with SyncRecorder() as recorder:
        rois, _, _ = label_and_sample_rois(proposals, gt, labels, cfg=RoIHeadConfig())
    assert recorder.syncs == ["__getitem__"] and rois.shape[0] > 0


def test_proposal_split_reads_the_counts_back_once():
    keep = torch.randperm(50)
    image = torch.randint(0, 4, (50,))
    with SyncRecorder() as recorder:
        parts = _split_by_image(keep, image, 5, 6)
    assert recorder.syncs == ["tolist"]
    assert [p.tolist() for p in parts] == [keep[image == i][:6].tolist() for i in range(5)]


def test_selection_without_nms_syncs_for_the_valid_count_and_the_split():
    boxes = torch.rand(2, 100, 4).cumsum(-1)
    with SyncRecorder() as recorder:
        select_proposals(boxes, torch.rand(2, 100), torch.rand(2, 100) < 0.7, pre_nms_top_n=40,
                         post_nms_top_n=20, nms_thresh=None)
    assert recorder.syncs == ["nonzero", "tolist"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rpn_losses_on_cuda_pass_the_sync_debug_mode():
    cfg = RPNConfig()
    logits, deltas, anchors, gt, sizes = (x.cuda() if isinstance(x, torch.Tensor) else [g.cuda() for g in x]
                                          for x in _rpn_loss_inputs("softmax"))
    rpn_losses_of(logits, deltas, anchors, gt, sizes, cfg=cfg)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = rpn_losses_of(logits, deltas, anchors, gt, sizes, cfg=cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(losses["loss_rpn_cls"]).item()


# --------------------------------------------------------------------------------------------------
# inference: the forward is queued before anything is read back, and no device op runs per image


def test_predictor_run_never_reads_the_device_batch_back_before_the_forward(monkeypatch):
    """The image keys come from the host batch: reading them from the device copy would make the host wait for
    the batch's copy before it could queue the forward."""
    from conftest import cpu_predictor, tiny_config

    from frcnn_cli.data.images import ImageBatch, batch_from_images
    from frcnn_cli.model.detector import FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN(tiny_config(), ["a", "b", "c"])
    images = [torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8) for _ in range(2)]
    batch = batch_from_images(images, model.cfg.input)
    expected = cpu_predictor(model).run(batch)
    real_to = ImageBatch.to

    def to_unreadable(self, device, non_blocking=False):
        moved = real_to(self, device, non_blocking)
        moved.indices = torch.empty(moved.indices.shape, dtype=moved.indices.dtype, device="meta")  # no values
        return moved

    monkeypatch.setattr(ImageBatch, "to", to_unreadable)
    result = cpu_predictor(model).run(batch, proposals=True)
    for got, ref in zip(result.detections, expected.detections):
        assert all(torch.equal(got[k], ref[k]) for k in ("boxes", "scores", "labels"))


def _postprocess_ops(num_images: int) -> list[str]:
    from torch.utils._python_dispatch import TorchDispatchMode

    from frcnn_cli.boxes import BoxCoder
    from frcnn_cli.model.postprocess import DetectionSettings, postprocess_detections

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:  # views launch nothing
                self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(0)
    proposals = [torch.rand(30, 2, generator=gen).repeat(1, 2) * 50 + torch.tensor([0.0, 0.0, 20.0, 20.0])
                 for _ in range(num_images)]
    logits, deltas = torch.randn(30 * num_images, 6, generator=gen) * 3, torch.randn(30 * num_images, 24) * 0.1
    with Ops() as ops:
        dets = postprocess_detections(logits, deltas, proposals, torch.tensor([[80, 100]] * num_images),
                                      torch.ones(num_images), box_coder=BoxCoder(),
                                      settings=DetectionSettings(detections_per_image=10))
    assert len(dets) == num_images and all(0 < len(d["scores"]) <= 10 for d in dets)
    return ops.names


def test_detections_of_a_batch_take_the_same_device_ops_for_2_or_6_images():
    assert _postprocess_ops(2) == _postprocess_ops(6)


def _nms_calls(fn) -> tuple[object, int]:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Calls.count += str(func.overloadpacket) == "torchvision.nms"
            return func(*args, **(kwargs or {}))

    with Calls():
        result = fn()
    return result, Calls.count


def test_detection_nms_runs_once_per_image_not_once_per_image_and_class():
    """torchvision's ``batched_nms`` runs one NMS per group above a size (1000 boxes on the CPU, 5000 on CUDA,
    where each reads its result back): split by image first, a batch costs one NMS per image, with the same
    boxes kept. 4 images x 300 candidates of 5 classes: 20 NMS calls in one ``batched_nms``, 4 split."""
    from frcnn_cli.model.postprocess import nms_per_image

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(1200, 2, generator=gen) * 80
    boxes = torch.cat((xy, xy + 10 + torch.rand(1200, 2, generator=gen) * 30), 1)
    scores, labels = torch.rand(1200, generator=gen), torch.randint(1, 6, (1200,), generator=gen)
    image = torch.arange(4).repeat_interleave(300)
    one, one_calls = _nms_calls(lambda: nms_per_image(boxes, scores, labels, image, 4, 0.3, num_classes=5))
    split, split_calls = _nms_calls(lambda: nms_per_image(boxes, scores, labels, image, 4, 0.3, num_classes=5,
                                                          one_call_max=1000))
    assert (one_calls, split_calls) == (20, 4)
    assert sorted(one.tolist()) == sorted(split.tolist()) and 0 < len(split) < 1200
    for i in range(4):  # each image's kept boxes by descending score
        mine = split[image[split] == i]
        assert torch.equal(mine, one[image[one] == i]) and bool((scores[mine][:-1] >= scores[mine][1:]).all())
