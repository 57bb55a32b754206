"""``frcnn eval --test-proposals``: the proposals a detector is evaluated on when they are not its own RPN's
(``given_proposals.py``, ``dense_proposals.py``), and ``eval --results-only``: the evaluation server's files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.markup import escape

from ..data.manifest import Manifest
from ..errors import ConfigError, DataError
from . import console
from .options import inference_process

TEST_PROPOSALS_HELP = ("Evaluate the detector on these proposals instead of its own RPN's: a checkpoint with an RPN "
                       "(e.g. step 1's rpn1.pt: the paper's unshared rows; its test-time settings and "
                       "--proposals-n/--no-rpn-*), a proposal file (dump-proposals or prepare proposals; "
                       "--proposals-n N keeps its top N), or dense / dense-square (Table 5's sliding windows). "
                       "The detector needs no RPN of its own (det1.pt).")


def _is_proposal_file(path: Path) -> bool:
    import h5py

    return path.is_file() and bool(h5py.is_hdf5(path))


def test_proposer(spec: Path, predictor, *, manifest: Manifest, data: Path, set_: tuple[str, ...], device,
                  ablation, batch_size: int):
    """The proposal strategy ``--test-proposals spec`` names, for ``predictor``'s detector on ``manifest``
    (an ablation-like value for ``InferenceSettings``); a ``ConfigError`` for options that do not apply."""
    from ..dense_proposals import DenseProposer, DenseWindows, is_dense
    from ..export.runtime import exported_format

    if not is_dense(spec) and not spec.is_file():
        raise DataError(f"--test-proposals {spec} does not exist; give a checkpoint with an RPN (e.g. rpn1.pt), a "
                        "proposal file (dump-proposals, prepare proposals), dense or dense-square")
    if is_dense(spec) or _is_proposal_file(spec):
        if ablation is not None and (not ablation.nms or not ablation.use_scores or not ablation.use_regression):
            raise ConfigError(f"--no-rpn-nms, --no-rpn-scores and --no-rpn-reg change an RPN's proposals; "
                              f"--test-proposals {spec} is not an RPN: drop them")
    if is_dense(spec):
        if ablation is not None:
            raise ConfigError("--proposals-n does not apply to the dense windows (all of them are used); drop it")
        return DenseProposer(DenseWindows.from_config(predictor.settings.config, str(spec)))
    if _is_proposal_file(spec):
        from ..data.proposal_store import ProposalStore
        from ..given_proposals import StoredProposals

        store = ProposalStore(spec)
        store.check_manifest(manifest, data)
        return StoredProposals(store, top_n=None if ablation is None else ablation.top_n)
    if exported_format(spec) is not None:
        raise ConfigError(f"--test-proposals {spec} is an exported model; give the checkpoint it was exported from "
                          "(frcnn runs its RPN through the one inference path)")
    return _model_proposals(spec, manifest=manifest, set_=set_, device=device, ablation=ablation,
                            batch_size=batch_size)


def _model_proposals(spec: Path, *, manifest: Manifest, set_, device, ablation, batch_size: int):
    from ..given_proposals import GivenProposals, proposals_of
    from ..inference import load_predictor

    rpn = load_predictor(spec, device, overrides=set_, require=("rpn",), ablation=ablation,
                         on_runtime=inference_process)
    what = ablation.describe() if ablation is not None else "RPN proposals"
    console.info(escape(f"test proposals: {what} of {spec}"))
    with console.ProgressReporter("proposals", every=100) as bar:
        boxes = proposals_of(rpn, manifest, batch_size=batch_size, progress=bar)
    return GivenProposals(boxes, label=f"{what} of {spec}")


def with_test_proposals(predictor, spec: Path, **kwargs):
    """``predictor`` (a detector's) running on the proposals of ``spec`` (``test_proposer``)."""
    if predictor.format is not None:  # inference.PredictorLike: an exported graph
        raise ConfigError("--test-proposals needs a checkpoint as --model: an exported model runs its own RPN")
    given = test_proposer(spec, predictor, **kwargs)
    return predictor.with_settings(replace(predictor.settings, ablation=given))


def write_results_only(detections: list, manifest: Manifest, out: Path) -> dict:
    """``--results-only``: the detections of every image (``predict_manifest``'s, one per image of ``manifest``)
    as the evaluation server's files under ``out``."""
    from ..evaluate.submission import results_folder, submission_year, write_submission
    from ..evaluate.voc import detections_by_class
    from .eval_outputs import split_of

    year, split = submission_year(manifest.name), split_of(manifest.name)
    paths, archive = write_submission(out, detections_by_class(detections, len(manifest.classes)), manifest,
                                      split=split, year=year)
    console.info(escape(f"wrote {len(paths)} result files to {results_folder(out, year)} and {archive}: upload the "
                        "archive to the PASCAL VOC evaluation server"))
    return {"results": [str(p) for p in paths], "archive": str(archive), "year": year, "split": split,
            "detections": sum(len(d["scores"]) for d in detections)}
