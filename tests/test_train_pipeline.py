"""``frcnn train``: the four steps and both dumps as one job in a run folder that a rerun continues, after a
kill between steps or inside one, to the weights of an uninterrupted run; and approximate joint training."""

from __future__ import annotations

import json

import pytest
import torch

from frcnn_cli.data.proposal_store import ProposalWriter
from frcnn_cli.model.checkpoint import read_checkpoint
from frcnn_cli.train import pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = ["rpn1", "props1", "det1", "rpn2", "props2", "final"]


def assert_same_weights(a, b) -> None:
    parts_a, parts_b = read_checkpoint(a)["parts"], read_checkpoint(b)["parts"]
    assert parts_a.keys() == parts_b.keys()
    for name, state in parts_a.items():
        assert all(torch.equal(v, parts_b[name][k]) for k, v in state.items()), f"{a}: {name} differs"


def done_steps(workdir) -> list[str]:
    return json.loads((workdir / "state.json").read_text())["done"]


def kill_before_step(monkeypatch, name: str) -> None:
    """The next ``frcnn train`` dies as it is about to start step ``name``."""
    real = pipeline._run_step

    def run_step(req, step, cfg, **kwargs):
        if step.name == name:
            monkeypatch.setattr(pipeline, "_run_step", real)
            raise KeyboardInterrupt  # Ctrl-C: the CLI says how to continue
        real(req, step, cfg, **kwargs)

    monkeypatch.setattr(pipeline, "_run_step", run_step)


def kill_while_dumping(monkeypatch, images: int) -> None:
    """The next dump dies after writing ``images`` images to its ``.partial`` file."""
    real, written = ProposalWriter.write, []

    def write(self, *args, **kwargs):
        real(self, *args, **kwargs)
        written.append(1)
        if len(written) == images:
            monkeypatch.setattr(ProposalWriter, "write", real)
            raise BaseException("killed after writing 5 images")

    monkeypatch.setattr(ProposalWriter, "write", write)


@pytest.fixture(scope="module")
def whole_run(train_set, frcnn, train_options, tmp_path_factory, one_thread):
    """An uninterrupted ``frcnn train`` of 4 iterations a step."""
    workdir = tmp_path_factory.mktemp("whole_run")
    frcnn("train", "--data", train_set[0], "--workdir", workdir, "--iters", 4, "--checkpoint-every", 2,
          *train_options())
    return workdir


def test_a_run_folder_holds_every_step_and_says_which_are_done(whole_run):
    assert done_steps(whole_run) == STEPS
    for name in STEPS:
        assert (whole_run / f"{name}{'.h5' if name.startswith('props') else '.pt'}").is_file()
    assert not list(whole_run.glob("*.resume.pt")) and not list(whole_run.glob("*.partial"))
    assert sorted(read_checkpoint(whole_run / "final.pt")["parts"]) == ["backbone", "roi_head", "rpn"]


def test_a_rerun_after_kills_between_and_inside_steps_equals_the_uninterrupted_run(
        whole_run, train_set, frcnn, train_options, kill_after_saving, monkeypatch, tmp_path):
    args = ["train", "--data", train_set[0], "--workdir", tmp_path, "--iters", 4, "--checkpoint-every", 2,
            *train_options()]
    kill_before_step(monkeypatch, "det1")  # between steps
    result = frcnn(*args, ok=False)
    assert result.exit_code == 130 and "rerun the same command" in result.output
    assert done_steps(tmp_path) == ["rpn1", "props1"] and not (tmp_path / "det1.pt").exists()
    rpn1_bytes = (tmp_path / "rpn1.pt").read_bytes()

    kill_after_saving(2, name="rpn2.pt.resume.pt")  # inside a training step
    with pytest.raises(BaseException, match="killed after writing"):
        frcnn(*args)
    assert done_steps(tmp_path) == ["rpn1", "props1", "det1"]
    assert (tmp_path / "rpn2.pt.resume.pt").exists()

    kill_while_dumping(monkeypatch, images=5)  # inside a dump
    with pytest.raises(BaseException, match="killed after writing 5 images"):
        frcnn(*args)
    assert (tmp_path / "props2.h5.partial").exists() and not (tmp_path / "props2.h5").exists()

    result = frcnn(*args)
    for name in ("rpn1", "props1", "det1", "rpn2"):
        assert f"step {name} already done" in result.output
    assert (tmp_path / "rpn1.pt").read_bytes() == rpn1_bytes  # skipped, not trained again
    assert done_steps(tmp_path) == STEPS
    for name in ("rpn1", "det1", "rpn2", "final"):
        assert_same_weights(whole_run / f"{name}.pt", tmp_path / f"{name}.pt")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["stage"] == "rpn-shared-frozen"] == [1, 2, 3, 4]


def test_a_rerun_with_other_options_is_refused(whole_run, train_set, frcnn, train_options):
    result = frcnn("train", "--data", train_set[0], "--workdir", whole_run, "--iters", 5, *train_options(),
                   ok=False)
    assert result.exit_code == 2
    assert (f"Error: {whole_run} holds a run started with other options (--iters 4 when the run started, 5 now; "
            f"see {whole_run / 'state.json'})") in " ".join(result.output.split())
    result = frcnn("train", "--data", train_set[1], "--workdir", whole_run, "--iters", 4, *train_options(),
                   ok=False)
    assert result.exit_code == 1 and f"holds a run on another dataset than {train_set[1]}" in result.output


def test_joint_training_learns_all_four_losses_into_one_model(train_set, frcnn, train_options, tmp_path):
    frcnn("train", "--mode", "joint", "--data", train_set[0], "--workdir", tmp_path, "--iters", 3,
          *train_options())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["iteration"]) for r in rows] == [("joint", 1), ("joint", 2), ("joint", 3)]
    for row in rows:
        losses = [row[k] for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box")]
        assert all(v == v and v >= 0 for v in losses)
        assert row["loss"] == pytest.approx(sum(losses), rel=1e-6)
    ckpt = read_checkpoint(tmp_path / "final.pt")
    assert sorted(ckpt["parts"]) == ["backbone", "roi_head", "rpn"] and ckpt["stage"] == "joint"
    assert done_steps(tmp_path) == ["final"]


def test_the_run_decides_its_anchors_once_hands_them_to_every_step_and_reads_its_init_once(
        train_set, train_config, tiny_checkpoint, tmp_path, monkeypatch):
    """Issue 29, item 4: ``decide_run_anchors`` once at the start; each stage is handed that decision (none
    decides again) and the steps started from ``cfg.init`` (rpn1, det1) share one read of the file."""
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.model import checkpoint

    init = tiny_checkpoint("init.pt", parts=("backbone",))  # no RPN: the anchors may be fitted
    stages, reads = [], []
    monkeypatch.setattr(pipeline, "run_stage", lambda req: stages.append(req))
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: (None, None))
    monkeypatch.setattr(pipeline.Predictor, "for_model", classmethod(lambda cls, *a, **k: None))
    monkeypatch.setattr(pipeline, "dump_proposals", lambda *a, **k: None)
    real_read = checkpoint.read_init  # the steps' own checkpoints are not written here: stand-ins
    monkeypatch.setattr(pipeline, "read_init", lambda spec: reads.append(spec) or (
        real_read(spec) if spec == str(init) else checkpoint.Init(spec, "checkpoint", {"parts": {}})))
    notes = []
    req = pipeline.PipelineRequest(cfg=train_config("anchors.auto=true", f"init={init}"),
                                   manifest=read_manifest(train_set[0]), manifest_path=train_set[0],
                                   workdir=tmp_path / "run", device=torch.device("cpu"), on_note=notes.append,
                                   on_warning=notes.append)
    pipeline.run_pipeline(req)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [s.out.stem for s in stages] == ["rpn1", "det1", "rpn2", "final"]
    assert all(s.anchors.to_dict() == state["anchors"] and s.cfg == s.anchors.config for s in stages)
    assert state["trained_config"]["anchors"]["scales"] == state["anchors"]["scales"]
    assert sum("anchors" in note for note in notes) == 1  # said once, at the start, not by each stage
    assert reads.count(str(init)) == 1 and stages[0].init is stages[1].init  # rpn1 and det1: one read
    assert [s.init.spec for s in stages[2:]] == [str(tmp_path / "run" / "det1.pt"), str(tmp_path / "run" / "rpn2.pt")]
    # a rerun resumes with the recorded decision, measuring nothing
    monkeypatch.setattr(pipeline, "decide_run_anchors", lambda *a, **k: pytest.fail("decided again"))
    (tmp_path / "run" / "state.json").write_text(json.dumps({**state, "done": ["rpn1", "props1"]}))
    stages.clear()
    pipeline.run_pipeline(req)
    assert [s.out.stem for s in stages] == ["det1", "rpn2", "final"]
    assert all(s.anchors.to_dict() == state["anchors"] for s in stages)
