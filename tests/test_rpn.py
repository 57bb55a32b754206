"""RPN head output layout and proposal generation (py-faster-rcnn's proposal layer, notes section 6b)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import batched_nms

from frcnn_cli.boxes import BoxCoder
from frcnn_cli.model.rpn import RPNHead, generate_proposals, objectness_scores, select_proposals


def _layout_head(objectness: str, a: int) -> RPNHead:
    """A head whose outputs say where they came from: channel ch of a 1x1 conv gives 100*ch + feature."""
    head = RPNHead(1, 1, a, objectness)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.weight[0, 0, 1, 1] = 1.0  # 3x3 conv = identity on the single channel
        head.conv.bias.zero_()
        for conv in (head.cls_logits, head.bbox_pred):
            conv.weight.fill_(1.0)
            conv.bias.copy_(100.0 * torch.arange(conv.out_channels, dtype=torch.float32))
    return head


def _features(h: int, w: int) -> torch.Tensor:
    return (torch.arange(h * w, dtype=torch.float32) + 1).view(1, 1, h, w)  # f[h, w] = h*W + w + 1


def test_head_softmax_channel_c_times_a_plus_a_lands_at_anchor_index_and_class():
    a, h, w = 3, 2, 4
    logits, deltas = _layout_head("softmax", a)(_features(h, w))
    assert logits.shape == (1, h * w * a, 2) and deltas.shape == (1, h * w * a, 4)
    for row in range(h):
        for col in range(w):
            f = row * w + col + 1
            for k in range(a):
                i = (row * w + col) * a + k
                # py-faster-rcnn: channels 0..A-1 background, A..2A-1 foreground
                assert logits[0, i].tolist() == [100.0 * k + f, 100.0 * (a + k) + f]
                assert deltas[0, i].tolist() == [100.0 * (4 * k + c) + f for c in range(4)]


def test_head_sigmoid_has_one_logit_per_anchor():
    a, h, w = 2, 3, 2
    logits, _ = _layout_head("sigmoid", a)(_features(h, w))
    assert logits.shape == (1, h * w * a, 1)
    assert logits[0, (2 * w + 1) * a + 1, 0].item() == 100.0 * 1 + (2 * w + 1) + 1


def test_head_initialisation_is_gaussian_0_01_with_zero_biases():
    torch.manual_seed(0)
    head = RPNHead(64, 128, 9)
    assert head.cls_logits.out_channels == 18 and head.bbox_pred.out_channels == 36
    assert head.conv.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert head.conv.weight.mean().abs().item() < 1e-3
    for conv in (head.conv, head.cls_logits, head.bbox_pred):
        assert conv.bias.abs().sum().item() == 0.0


def test_objectness_scores_are_foreground_probabilities():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])
    assert objectness_scores(logits)[0].tolist() == pytest.approx([0.75, 0.5])
    sigmoid = objectness_scores(torch.tensor([[[math.log(3.0)], [0.0]]]))
    assert sigmoid[0].tolist() == pytest.approx([0.75, 0.5])


# Anchors of the proposal cases; zero deltas make proposals = anchors (clipped).
ANCHORS = torch.tensor([
    [10.0, 10.0, 30.0, 30.0],  # 0
    [11.0, 10.0, 31.0, 30.0],  # 1: IoU 19/21 with 0 -> suppressed by it
    [40.0, 40.0, 42.0, 60.0],  # 2: 2 wide -> dropped by min size 4
    [60.0, 60.0, 70.0, 70.0],  # 3
    [60.0, 60.0, 70.0, 67.0],  # 4: IoU exactly 0.7 with 3 -> kept (only > 0.7 is suppressed)
    [0.0, 0.0, 8.0, 8.0],  # 5: 8 x 8
    [50.0, 0.0, 70.0, 20.0],  # 6
])
SCORES_1 = [0.9, 0.8, 0.99, 0.7, 0.6, 0.1, 0.05]
SCORES_2 = [0.5, 0.6, 0.1, 0.4, 0.45, 0.2, 0.3]


def _proposals(scores, sizes, min_sizes, pre=0, post=0, nms=0.7, deltas=None):
    scores = torch.tensor(scores)
    if deltas is None:
        deltas = torch.zeros(scores.shape[0], ANCHORS.shape[0], 4)
    return generate_proposals(ANCHORS, scores, deltas, torch.tensor(sizes), torch.tensor(min_sizes),
                              pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=nms)


def test_min_size_drop_then_nms_suppresses_only_iou_above_threshold():
    [(boxes, scores)] = _proposals([SCORES_1], [[100, 100]], [4.0])
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.1, 0.05])
    assert torch.equal(boxes, ANCHORS[[0, 3, 4, 5, 6]])


def test_pre_nms_top_n_counts_boxes_left_after_the_min_size_drop():
    # py-faster-rcnn drops small boxes first: top 3 of {0, 1, 3, 4, 5, 6} = 0, 1, 3; NMS removes 1
    [(boxes, scores)] = _proposals([SCORES_1], [[100, 100]], [4.0], pre=3)
    assert torch.equal(boxes, ANCHORS[[0, 3]])
    assert scores.tolist() == pytest.approx([0.9, 0.7])


def test_post_nms_top_n_keeps_the_best_after_nms():
    [(boxes, scores)] = _proposals([SCORES_1], [[100, 100]], [4.0], post=2)
    assert torch.equal(boxes, ANCHORS[[0, 3]])
    [(boxes, _)] = _proposals([SCORES_1], [[100, 100]], [4.0], nms=0.69, post=10)
    assert torch.equal(boxes, ANCHORS[[0, 3, 5, 6]])  # at threshold 0.69 box 4 (IoU 0.7) goes too


def test_two_images_of_different_sizes_do_not_suppress_each_other():
    # image 2 is 50 x 60 with min size 9: anchors 3, 4 clip to nothing, 2 is too thin, 5 (8 px) too small,
    # anchor 6 is clipped to x2 = 60; its anchor 1 outscores anchor 0 there, the reverse of image 1.
    out = _proposals([SCORES_1, SCORES_2], [[100, 100], [50, 60]], [4.0, 9.0])
    (boxes1, scores1), (boxes2, scores2) = out
    assert torch.equal(boxes1, ANCHORS[[0, 3, 4, 5, 6]])
    assert scores2.tolist() == pytest.approx([0.6, 0.3])
    assert boxes2.tolist() == [[11.0, 10.0, 31.0, 30.0], [50.0, 0.0, 60.0, 20.0]]


def test_proposals_apply_the_deltas_and_carry_no_gradient():
    shifted = torch.zeros(1, ANCHORS.shape[0], 4)
    shifted[0, 5] = torch.tensor([0.5, 0.25, math.log(2.0), 0.0])  # anchor 5 -> centre (8, 6), 16 x 8
    [(boxes, scores)] = _proposals([SCORES_1], [[100, 100]], [4.0], deltas=shifted.clone().requires_grad_())
    expected = BoxCoder().decode(shifted[0, 5:6], ANCHORS[5:6])
    assert expected.tolist() == [[0.0, 2.0, 16.0, 10.0]]
    assert torch.equal(boxes[3:4], expected)
    assert not boxes.requires_grad and not scores.requires_grad


def test_an_image_with_every_box_too_small_gets_no_proposals():
    [(boxes, scores)] = _proposals([SCORES_1], [[100, 100]], [100.0], pre=2, post=2)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def reference_select_proposals(boxes, priority, valid, *, pre_nms_top_n, post_nms_top_n, nms_thresh):
    """The former ``select_proposals`` (a boolean mask per image after NMS), unchanged."""
    n, m = priority.shape
    ranked = torch.where(valid, priority.float(), torch.full_like(priority, float("-inf"), dtype=torch.float))
    k = m if pre_nms_top_n <= 0 else min(pre_nms_top_n, m)
    top_priority, top_idx = ranked.topk(k, dim=1, sorted=True)
    keep_valid = valid.gather(1, top_idx)
    cand_boxes = boxes.gather(1, top_idx[..., None].expand(n, k, 4))[keep_valid]
    cand_priority = top_priority[keep_valid]
    cand_image = torch.arange(n, device=boxes.device)[:, None].expand(n, k)[keep_valid]
    if nms_thresh is None:
        keep = torch.arange(cand_image.shape[0], device=boxes.device)
    else:
        keep = batched_nms(cand_boxes.float(), cand_priority, cand_image, nms_thresh)
    kept_image = cand_image[keep]
    out = []
    for i in range(n):
        sel = keep[kept_image == i]
        if post_nms_top_n > 0:
            sel = sel[:post_nms_top_n]
        out.append((cand_boxes[sel], cand_priority[sel]))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_select_proposals_equals_the_per_image_reference_on_random_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    n, m = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 1500, (1,), generator=gen))
    xy = torch.randint(0, 60, (n, m, 2), generator=gen).float()
    boxes = torch.cat((xy, xy + torch.randint(1, 30, (n, m, 2), generator=gen).float()), 2)
    priority = torch.randint(0, 50, (n, m), generator=gen).float() / 50  # many equal priorities
    valid = torch.rand(n, m, generator=gen) < [0.9, 0.5, 0.0, 1.0][seed % 4]
    for pre, post, nms in [(0, 0, 0.7), (300, 40, 0.7), (m // 2, 5, 0.5), (0, 0, None), (50, 10, None)]:
        got = select_proposals(boxes, priority, valid, pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=nms)
        want = reference_select_proposals(boxes, priority, valid, pre_nms_top_n=pre, post_nms_top_n=post,
                                          nms_thresh=nms)
        assert len(got) == n
        for (b, s), (rb, rs) in zip(got, want):
            assert torch.equal(b, rb) and torch.equal(s, rs), (pre, post, nms)
