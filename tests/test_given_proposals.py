"""``frcnn eval --test-proposals``: a detector evaluated on another model's or a file's proposals (the paper's
unshared rows, Table 1 58.7 and Table 2 68.5; given_proposals.py, cli/eval_proposals.py)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from frcnn_cli.cli.main import cli
from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.evaluate.voc import read_result_files

pytestmark = pytest.mark.usefixtures("one_thread")

RUNTIME = ["--set", "runtime.num_workers=0", "--device", "cpu"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _detections(out, data):
    manifest = read_manifest(data)
    found = read_result_files(out, manifest, "test")
    return {k: (image.tolist(), scores, boxes) for k, (image, scores, boxes) in found.items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0], k
        np.testing.assert_allclose(a[k][1], b[k][1], atol=2e-6)
        np.testing.assert_allclose(a[k][2], b[k][2], atol=2e-3)


def test_a_detector_on_its_own_rpns_proposals_gives_the_shared_models_detections(synth_set, tmp_path,
                                                                                 tiny_checkpoint):
    """Shared and unshared differ only by whose RPN proposes: with the model's own RPN given as the other
    model (the same weights, the detector saved without its RPN), eval --test-proposals gives eval's detections;
    so do the same RPN's proposals dumped with the test settings (6000 before NMS, 300 after) to a file."""
    data = synth_set[1]
    # scale 1 (64 x 48 images, shorter side 48): proposals in original pixels are the forward's to the bit
    overrides = ("roi_head.score_thresh=0.01", "input.test_scale=48")
    whole = tiny_checkpoint("final.pt", overrides=overrides)
    det = tiny_checkpoint("det1.pt", parts=("backbone", "roi_head"), stage="detector",
                          overrides=overrides)  # the same seed: the same weights
    shared = _run("eval", "--model", whole, "--data", data, "--out", tmp_path / "shared", *RUNTIME)
    assert shared.exit_code == 0, shared.output
    unshared = _run("eval", "--model", det, "--data", data, "--test-proposals", whole, "--out",
                    tmp_path / "unshared", *RUNTIME)
    assert unshared.exit_code == 0, unshared.output
    assert "proposals: RPN proposals of" in unshared.output
    reference = _detections(tmp_path / "shared", data)
    assert sum(len(v[0]) for v in reference.values()) > 0
    _assert_same(reference, _detections(tmp_path / "unshared", data))
    props = tmp_path / "test-props.h5"
    dumped = _run("dump-proposals", "--model", whole, "--data", data, "--out", props, "--pre-nms-top-n", 6000,
                  "--post-nms-top-n", 300, *RUNTIME)
    assert dumped.exit_code == 0, dumped.output
    from_file = _run("eval", "--model", det, "--data", data, "--test-proposals", props, "--out",
                     tmp_path / "from-file", *RUNTIME)
    assert from_file.exit_code == 0, from_file.output
    _assert_same(reference, _detections(tmp_path / "from-file", data))


def test_a_proposal_files_top_n(synth_set, tmp_path, tiny_checkpoint):
    from frcnn_cli.data.proposal_store import ProposalStore
    from frcnn_cli.given_proposals import StoredProposals

    data = synth_set[1]
    props = tmp_path / "p.h5"
    assert _run("dump-proposals", "--model", tiny_checkpoint(), "--data", data, "--out", props,
                *RUNTIME).exit_code == 0
    import torch

    with ProposalStore(props) as store:
        boxes, scores = store.get(0)
        found = StoredProposals(store, top_n=5)(None, None, torch.zeros(1, 1, 4), torch.tensor([[48, 64]]),
                                                torch.tensor([2.0]), keys=[0])
    torch.testing.assert_close(found[0][0], boxes[:5] * 2)
    torch.testing.assert_close(found[0][1], scores[:5])


@pytest.mark.parametrize("extra, needle", [
    (["--no-rpn-nms"], "--test-proposals P.h5 is not an RPN"),
    (["--proposals-n", "10", "--test-proposals", "dense"], "--proposals-n does not apply to the dense windows"),
])
def test_options_that_do_not_fit_the_test_proposals_are_clean_errors(synth_set, tmp_path, tiny_checkpoint,
                                                                     assert_clean_error, extra, needle):
    data = synth_set[1]
    props = tmp_path / "P.h5"
    assert _run("dump-proposals", "--model", tiny_checkpoint(), "--data", data, "--out", props,
                *RUNTIME).exit_code == 0
    given = [] if "--test-proposals" in extra else ["--test-proposals", props]
    result = _run("eval", "--model", tiny_checkpoint("det.pt", parts=("backbone", "roi_head")), "--data", data,
                  *given, *extra, *RUNTIME)
    assert_clean_error(result, needle.replace("P.h5", str(props)))


def test_test_proposals_that_do_not_exist_are_a_clean_error(synth_set, tmp_path, tiny_checkpoint,
                                                             assert_clean_error):
    result = _run("eval", "--model", tiny_checkpoint("det.pt", parts=("backbone", "roi_head")), "--data",
                  synth_set[1], "--test-proposals", tmp_path / "rpn1.pt", *RUNTIME)
    assert_clean_error(result, "--test-proposals", "rpn1.pt does not exist")


def test_test_proposals_without_a_detector_are_a_usage_error(synth_set, tmp_path, assert_clean_error):
    result = _run("eval", "--proposals", tmp_path / "p.h5", "--data", synth_set[1], "--test-proposals", "dense")
    assert_clean_error(result, "--test-proposals are the proposals a detector (--model) is evaluated on")
