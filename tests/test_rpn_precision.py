"""Test-time proposals keep float32 resolution under bf16 autocast (CUDA's default for dumps, eval, detect).

In bf16 the RPN's objectness logits have 8 significant bits: the top 2000 scores of a VGG16 image collapse to
about 830 distinct values, and NMS orders the ties arbitrarily. At test time the RPN head's 1x1 convs run in
float32 (``RPNHead.forward``), so the scores, the deltas and everything after them are float32. Checked here
under the CPU's bf16 autocast, which casts the same convolutions as CUDA's.
"""

from __future__ import annotations

import torch
from conftest import tiny_config

from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.rpn import ProposalSettings, RPNHead, RPNProposer, objectness_scores


def _head() -> RPNHead:
    torch.manual_seed(0)
    head = RPNHead(64, 64, 9)
    for layer in (head.cls_logits, head.bbox_pred):
        torch.nn.init.normal_(layer.weight, std=0.05)
    return head


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@torch.no_grad()
def test_the_rpn_head_computes_its_outputs_in_float32_at_test_time_under_autocast():
    head, features = _head().eval(), torch.randn(1, 64, 30, 40)
    with _bf16():
        logits, deltas = head(features)
        shared = torch.relu(head.conv(features))  # the 3x3 conv stays in bf16: only the outputs change
    assert logits.dtype == deltas.dtype == torch.float32 and shared.dtype == torch.bfloat16
    a, (n, _, h, w) = head.num_anchors, features.shape
    expected = head.cls_logits(shared.float()).view(n, 2, a, h, w).permute(0, 3, 4, 2, 1).reshape(n, h * w * a, 2)
    assert torch.equal(logits, expected)  # the float32 1x1 conv of the bf16 features, exactly
    top = objectness_scores(logits)[0].topk(2000).values
    assert len(torch.unique(top)) >= 1990  # float32: (almost) no ties among the top 2000


@torch.no_grad()
def test_training_under_autocast_keeps_bf16_outputs():
    head, features = _head().train(), torch.randn(1, 64, 30, 40)
    with _bf16():
        logits, _ = head(features)
    assert logits.dtype == torch.bfloat16
    assert len(torch.unique(objectness_scores(logits)[0].topk(2000).values)) < 1000  # what the test time avoids


@torch.no_grad()
def test_proposals_of_the_whole_model_under_autocast_have_float32_scores():
    torch.manual_seed(0)
    model = FasterRCNN(tiny_config("input.test_scale=320", "input.max_size=480"), ["a", "b"]).eval()
    for layer in (model.rpn.cls_logits, model.rpn.bbox_pred):
        torch.nn.init.normal_(layer.weight, std=0.05)
    images = torch.randn(1, 3, 320, 480)
    proposer = RPNProposer(ProposalSettings(pre_nms_top_n=0, post_nms_top_n=2000, nms_thresh=1.0, min_size=0.0))
    args = (images, torch.tensor([[320, 480]]), torch.tensor([1.0]))
    with _bf16():
        out = model(*args, run_roi_head=False, proposer=proposer)
    scores = out.proposal_scores[0]
    assert scores.dtype == torch.float32 and len(scores) == 2000
    assert len(torch.unique(scores)) >= 1990, len(torch.unique(scores))
    plain = model(*args, run_roi_head=False, proposer=proposer)  # float32 throughout
    # the same proposals up to the bf16 backbone: the scores differ by bf16's rounding of the features only
    assert (scores - plain.proposal_scores[0]).abs().max() < 0.05
