"""The exported graph's single-image, tensor-only equivalents (frcnn_cli/export/graph.py) against the library
functions they stand for, so that the two cannot drift: the scale rule, the input pipeline, the anchors, the
proposal layer and the detections."""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_predictor, tiny_config

from frcnn_cli.boxes import BoxCoder
from frcnn_cli.data.images import batch_from_images, compute_scale, resized_size
from frcnn_cli.export.graph import DeployedDetector, image_detections, image_proposals, preprocess, scale_and_size
from frcnn_cli.model.anchors import AnchorGrid, shift_templates
from frcnn_cli.model.detector import FasterRCNN
from frcnn_cli.model.postprocess import DetectionSettings, postprocess_detections
from frcnn_cli.model.rpn import ProposalSettings, generate_proposals

CODER = BoxCoder(means=(0.0, 0.0, 0.0, 0.0), stds=(0.1, 0.1, 0.2, 0.2))


@pytest.mark.parametrize(("height", "width", "test_scale", "max_size"), [
    (375, 500, 600, 1000), (500, 375, 600, 1000), (600, 800, 600, 1000), (100, 1000, 600, 1000),
    (333, 500, 600, 1000), (48, 64, 64, 96), (10, 300, 64, 96), (1, 1, 600, 1000), (7, 3, 64, 96),
    (1000, 667, 600, 1000), (4000, 6000, 600, 1000), (301, 401, 600, 1000),
])
def test_scale_rule_equals_compute_scale_and_resized_size(height, width, test_scale, max_size):
    scale, size = scale_and_size(torch.tensor([height, width]), test_scale, max_size)
    want = compute_scale(height, width, test_scale, max_size)
    assert scale.item() == want  # float64, bit for bit
    assert size.tolist() == list(resized_size(height, width, want))


def test_scale_rule_rounds_half_to_even_as_python():
    # 600/400 * 500 = 750 exactly; 1.5 * 3 = 4.5 rounds to 4 (Python's round), not 5
    scale, size = scale_and_size(torch.tensor([2, 3]), 3, 4)
    assert scale.item() == compute_scale(2, 3, 3, 4) == 1.5
    assert size.tolist() == list(resized_size(2, 3, 1.5)) == [3, 4]


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize(("height", "width", "extra"), [
    (48, 64, ()),  # shrunk a little
    (20, 30, ()),  # enlarged
    (300, 400, ()),  # shrunk more than twice, 128+ columns: the library resizes by bands of rows
    (50, 70, ("input.pixel_order=bgr", "input.size_divisor=1")),
    (64, 64, ()),  # the test scale already: no resize at all
])
def test_preprocess_equals_the_loaders_padded_batch(height, width, extra):
    cfg = tiny_config(*extra)
    image = _image(height, width)
    x, scale, size = preprocess(image, cfg.input)
    batch = batch_from_images([image], cfg.input)
    assert x.shape == batch.tensor.shape
    assert size.tolist() == batch.image_sizes[0].tolist()
    assert scale.item() == batch.scales[0].item()
    # values: the same bilinear kernel; the library's row-band path agrees within a float32 ulp
    torch.testing.assert_close(x, batch.tensor, rtol=0, atol=1e-5)


def test_anchor_templates_shifted_by_tensor_sizes_equal_the_grid():
    grid = AnchorGrid(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32), stride=16)
    traced_sizes = torch.tensor([3, 5])
    anchors = shift_templates(grid.templates, traced_sizes[0], traced_sizes[1], grid.stride)
    assert torch.equal(anchors, grid.grid(3, 5))
    assert torch.equal(anchors[(1 * 5 + 2) * 9], grid.templates[0] + torch.tensor([32.0, 16.0, 32.0, 16.0]))


def _rpn_outputs(m: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(m, 2, generator=gen) * 80
    sides = 4 + torch.rand(m, 2, generator=gen) * 40
    anchors = torch.cat((centres - sides / 2, centres + sides / 2), 1)
    deltas = torch.randn(m, 4, generator=gen) * 0.3
    scores = torch.rand(m, generator=gen)
    return anchors, scores, deltas


@pytest.mark.parametrize(("pre", "post", "nms"), [(100, 20, 0.7), (0, 0, 0.5), (5000, 30, 0.7), (50, 0, 0.3)])
def test_image_proposals_equal_generate_proposals(pre, post, nms):
    anchors, scores, deltas = _rpn_outputs(600, seed=pre + post)
    size, min_size = torch.tensor([60, 90]), torch.tensor(6.0)
    settings = ProposalSettings(pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=nms, min_size=6.0)
    boxes, kept = image_proposals(anchors, scores, deltas, size, min_size, settings)
    (want_boxes, want_scores), = generate_proposals(anchors, scores[None], deltas[None], size[None], min_size[None],
                                                   pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=nms)
    assert 0 < len(want_scores) < 600  # the case drops small boxes and suppresses some
    assert torch.equal(boxes, want_boxes) and torch.equal(kept, want_scores)


def test_image_proposals_of_an_image_without_large_boxes_are_empty():
    anchors, scores, deltas = _rpn_outputs(50, seed=1)
    settings = ProposalSettings(pre_nms_top_n=10, post_nms_top_n=5, nms_thresh=0.7, min_size=500.0)
    boxes, kept = image_proposals(anchors, scores, deltas, torch.tensor([60, 90]), torch.tensor(500.0), settings)
    assert boxes.shape == (0, 4) and kept.shape == (0,)


def _head_outputs(r: int, k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(r, k + 1, generator=gen) * 2
    deltas = torch.randn(r, 4 * (k + 1), generator=gen) * 0.5
    corners = torch.rand(r, 2, generator=gen) * 50
    proposals = torch.cat((corners, corners + 8 + torch.rand(r, 2, generator=gen) * 30), 1)
    return logits, deltas, proposals


@pytest.mark.parametrize(("score_thresh", "cap"), [(0.05, 100), (0.2, 10), (0.05, 0), (0.99, 100)])
def test_image_detections_equal_postprocess_detections(score_thresh, cap):
    logits, deltas, proposals = _head_outputs(80, 4, seed=int(score_thresh * 100) + cap)
    scale, original = torch.tensor(1.25), torch.tensor([61, 77])
    settings = DetectionSettings(score_thresh=score_thresh, nms_thresh=0.3, detections_per_image=cap)
    boxes, scores, labels = image_detections(logits, deltas, proposals, scale, original, box_coder=CODER,
                                             settings=settings)
    want, = postprocess_detections(logits, deltas, [proposals], torch.tensor([[76, 96]]), scale[None],
                                   box_coder=CODER, settings=settings, original_sizes=original[None])
    assert len(want["scores"]) == len(scores)
    if score_thresh < 0.5:
        assert 5 < len(scores) and (cap == 0 or len(scores) <= cap)
    torch.testing.assert_close(boxes, want["boxes"])
    torch.testing.assert_close(scores, want["scores"])
    assert torch.equal(labels + 1, want["labels"])


def test_a_masked_sentinel_row_changes_no_detection():
    logits, deltas, proposals = _head_outputs(30, 3, seed=5)
    settings = DetectionSettings(score_thresh=0.05, nms_thresh=0.3, detections_per_image=100)
    common = {"box_coder": CODER, "settings": settings}
    plain = image_detections(logits, deltas, proposals, torch.tensor(1.0), torch.tensor([80, 80]), **common)
    confident = torch.tensor([[-10.0, 10.0, 0.0, 0.0]])  # a sentinel that would be a 0.99 detection
    padded = image_detections(torch.cat((logits, confident)), torch.cat((deltas, torch.zeros(1, 16))),
                              torch.cat((proposals, torch.zeros(1, 4))), torch.tensor(1.0), torch.tensor([80, 80]),
                              real=torch.tensor(30), **common)
    for a, b in zip(plain, padded):
        assert torch.equal(a, b)


@pytest.mark.parametrize("extra", [(), ("roi_head.pooler=roipool", "rpn.objectness=sigmoid")])
def test_deployed_detector_gives_the_predictors_detections(extra):
    torch.manual_seed(0)
    model = FasterRCNN(tiny_config(*extra), ["a", "b", "c"]).eval()
    predictor = cpu_predictor(model)
    deployed = DeployedDetector(model, proposals=predictor.settings.proposals,
                                detections=predictor.settings.detections)
    for image in (_image(48, 64, 1), _image(90, 40, 2)):
        want = predictor.run(batch_from_images([image], model.cfg.input)).detections[0]
        with torch.no_grad():
            boxes, scores, labels = deployed(image)
        assert len(scores) == len(want["scores"]) > 0
        torch.testing.assert_close(boxes, want["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(scores, want["scores"], rtol=0, atol=1e-5)
        assert torch.equal(labels + 1, want["labels"])
