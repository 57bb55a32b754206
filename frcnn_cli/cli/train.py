"""``frcnn train-rpn``, ``dump-proposals``, ``train-detector`` and ``train``: parse, call the library, render."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..config import TRAIN_MODES
from ..data.manifest import read_manifest, require_annotations
from ..devices import process_settings, resolve_device
from ..train.budget import format_duration
from . import console
from .options import (
    FiniteFloatRange,
    checkpoint_overrides,
    checkpoint_set_option,
    config_options,
    hold_output,
    inference_process,
    positive_int,
)
from .schedule_options import (
    Estimates,
    ValidationView,
    best_summary,
    read_val,
    schedule_options,
    show_plan,
)

_NO_TRAINING = "there is nothing to train on: give an annotated manifest (frcnn prepare of a trainval split)"
_ITERS_HELP = "Iterations of this step (default: the preset's; lr drops keep their fraction of the run)."


def _training_options(f):
    f = click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")(f)
    f = click.option("--resume", is_flag=True, help="Continue from OUT.resume.pt where an earlier run stopped.")(f)
    f = click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Write a resumable state every N iterations (0: only at the end).")(f)
    f = click.option("--seed", type=int, default=None, help="Random seed (default: the config's, 3).")(f)
    f = click.option("--iters", type=positive_int, default=None, help=_ITERS_HELP)(f)
    f = click.option("--freeze-shared", is_flag=True,
                     help="Freeze the shared convs taken from --init (steps 3 and 4).")(f)
    f = click.option("--init", default=None,
                     help="imagenet, none (explicit random init), a frcnn checkpoint or a weights file "
                          "(a state dict, e.g. converted Caffe weights) (default: the preset's).")(f)
    f = schedule_options(f)
    f = config_options(f)
    f = click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Checkpoint to write (.pt).")(f)
    f = click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Dataset manifest (frcnn prepare).")(f)
    return f


def _is_main_process() -> bool:
    """Under ``torchrun`` only rank 0 talks (messages, progress, the output path); the other ranks train quietly."""
    from ..train import distributed

    return distributed.is_main()


def _run_training(kind: str, *, data, out, config, set_, init, freeze_shared, iters, seed, checkpoint_every,
                  resume, device, proposals=None, schedule: dict) -> None:
    from ..train.budget import budget_seconds, process_start
    from ..train.budget_control import StepBudget
    from ..train.data_schedule import choose_length
    from ..train.stage import StageRequest, resume_path, run_stage
    from ..train.stage_setup import best_path
    from ..train.steps import stage_config, stage_spec

    started = process_start()
    hold_output(out, "--out", inputs={"--data": data, "--init": init, "--proposals": proposals,
                                      "--val": schedule["val"]})
    seconds = budget_seconds(schedule["time_budget"], iters=iters, epochs=schedule["epochs"])
    manifest = read_manifest(data)
    require_annotations(manifest, data, _NO_TRAINING)
    val = read_val(schedule["val"], manifest, data, iters=iters, epochs=schedule["epochs"],
                   val_every=schedule["val_every"], patience=schedule["patience"])
    cfg, runtime, init_read = stage_config(config, set_, seed, init)
    length = choose_length(cfg, iters=iters, epochs=schedule["epochs"], seconds=seconds, validating=val is not None,
                           patience=schedule["patience"])
    spec = stage_spec(kind, freeze_shared=freeze_shared)
    dev = resolve_device(device)
    process_settings(dev, runtime)
    req = StageRequest(cfg=cfg, spec=spec, manifest=manifest, manifest_path=data, out=out, init=init_read,
                       device=dev, runtime=runtime, iters=iters, proposals_path=proposals,
                       checkpoint_every=checkpoint_every, resume=resume, metrics_path=out.parent / "metrics.jsonl",
                       epochs=schedule["epochs"], val_manifest=val, val_path=schedule["val"],
                       val_every=schedule["val_every"], patience=length.patience,
                       until_plateau=length.until_plateau)
    estimates, view = Estimates(), ValidationView()

    def on_start(start: int, total: int) -> None:  # after the init, the proposal file and the resume state are checked
        console.info(f"training {spec.name} on {len(manifest.images)} images ({cfg.name}, {req.device})")
        if resume and start == 0:
            console.warn(f"--resume: there is no {escape(str(resume_path(out)))} (no resumable state was kept); "
                         "starting from iteration 0")
        elif resume:
            console.info(f"resuming from {escape(str(resume_path(out)))} at iteration {start} of {total}")

    def on_plan(plan) -> None:
        if seconds is not None and not fitted:  # under --time, shown once the first iterations are timed
            console.info(f"--time {format_duration(seconds)}: the step's length is fitted to the budget once its "
                         "first iterations are timed, and fitted again as it goes")
            return
        show_plan([(spec.label, plan)], epochs=schedule["epochs"])
        estimates.set_plans([(spec.label, plan)])

    fitted: list = []
    if seconds is not None:
        req.budget = StepBudget(seconds, on_fitted=lambda plan: (fitted.append(plan), on_plan(plan)), started=started)
    req.on_start, req.on_plan, req.on_validation = on_start, on_plan, view
    req.on_warning = lambda message: console.warn(escape(message))  # paths may hold [brackets]
    req.on_note = lambda message: console.info(escape(message))
    with console.TrainingProgress(spec.kind) as progress:
        req.on_log = lambda state: _log(progress, view, estimates, state)
        run_stage(req)
    if _is_main_process():
        if val is not None and best_path(out).exists():
            console.info(escape(best_summary(best_path(out), last=out) or ""))
        click.echo(str(out))


def _log(progress, view: ValidationView, estimates: Estimates, state) -> None:
    progress.note = view.text
    progress(state)
    estimates(state)


@click.command("train-rpn")
@_training_options
def train_rpn(data, out, config, set_, init, freeze_shared, iters, seed, checkpoint_every, resume, device, epochs,
              time_budget, val, val_every, patience):
    """Train a Region Proposal Network: step 1 (--init imagenet) or step 3 (--init det1.pt --freeze-shared)."""
    _run_training("rpn", data=data, out=out, config=config, set_=set_, init=init, freeze_shared=freeze_shared,
                  iters=iters, seed=seed, checkpoint_every=checkpoint_every, resume=resume, device=device,
                  schedule={"epochs": epochs, "val": val, "val_every": val_every, "patience": patience,
                            "time_budget": time_budget})


@click.command("train-detector")
@_training_options
@click.option("--proposals", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="HDF5 proposals of this manifest (frcnn dump-proposals, or external ones: frcnn prepare "
                   "proposals), or dense / dense-square: the dense sliding windows of the paper's one-stage "
                   "ablation (Table 5; 3 scales x 3 ratios / x 1:1).")
def train_detector(data, out, config, set_, init, freeze_shared, iters, seed, checkpoint_every, resume, device,
                   epochs, time_budget, val, val_every, patience, proposals):
    """Train Fast R-CNN on stored proposals: step 2 (--init imagenet) or step 4 (--init rpn2.pt --freeze-shared)."""
    _run_training("detector", data=data, out=out, config=config, set_=set_, init=init,
                  freeze_shared=freeze_shared, iters=iters, seed=seed, checkpoint_every=checkpoint_every,
                  resume=resume, device=device, proposals=proposals,
                  schedule={"epochs": epochs, "val": val, "val_every": val_every, "patience": patience,
                            "time_budget": time_budget})


@click.command("dump-proposals")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A checkpoint with an RPN (train-rpn's output).")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Dataset manifest.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="HDF5 file to write.")
@click.option("--post-nms-top-n", type=positive_int, default=None, help="Proposals kept per image [2000].")
@click.option("--pre-nms-top-n", type=click.IntRange(min=0), default=None,
              help="Boxes kept before NMS, 0 for all [0].")
@click.option("--nms", "nms_thresh", type=FiniteFloatRange(0, 1), default=None, help="NMS IoU threshold [0.7].")
@click.option("--batch-size", type=positive_int, default=1, show_default=True)
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@checkpoint_set_option
def dump_proposals(model_path, data, out, post_nms_top_n, pre_nms_top_n, nms_thresh, batch_size, device, set_):
    """Run the RPN over every image of a manifest and store the proposals (resumes an interrupted dump).

    Under torchrun the images are shared among the processes, and the file is the one a single process writes.
    """
    from ..inference import load_predictor
    from ..sharded_inference import dump_sharded
    from ..sharding import RankGroup

    group, dev = RankGroup.join(resolve_device(device))

    def set_up():
        hold_output(out, "--out", inputs={"--data": data, "--model": model_path})
        overrides = checkpoint_overrides(set_, model_path)
        return read_manifest(data), load_predictor(model_path, dev, overrides=overrides, require=("rpn",),
                                                   mode="dump", nms_thresh=nms_thresh, pre_nms_top_n=pre_nms_top_n,
                                                   post_nms_top_n=post_nms_top_n, on_runtime=inference_process)

    manifest, predictor = group.agree(set_up)
    with console.ProgressReporter("proposals", every=50, quiet=not group.is_main) as bar:
        dump_sharded(predictor, manifest, out, group, checkpoint_path=model_path, batch_size=batch_size,
                     progress=bar)
    if group.is_main:
        click.echo(str(out))


@click.command("train")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Dataset manifest.")
@click.option("--workdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: every step's checkpoint and proposals, metrics.jsonl, state.json.")
@config_options
@click.option("--mode", type=click.Choice(TRAIN_MODES), default=None,
              help="The paper's 4-step alternating optimisation or one jointly trained network [the preset's "
                   "solver.mode: alternating for the paper presets, joint for tiny].")
@click.option("--iters", type=positive_int, default=None, help="Iterations of EACH training step.")
@schedule_options
@click.option("--seed", type=int, default=None)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=None,
              help="Resumable state every N iterations [a tenth of the first detector step's iterations].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --workdir (rerunning the same command resumes anyway; with --resume a "
                   "folder holding no run is a warning).")
@click.option("--device", default=None)
def train(data, workdir, config, set_, mode, iters, epochs, time_budget, val, val_every, patience, seed,
          checkpoint_every, resume, device):
    """The whole 4-step alternating optimisation (or --mode joint), resumable: rerun to continue.

    The length of each step: --epochs, --iters, or --time for the whole run; else chosen from the data where
    the preset validates (tiny: a validation split carved from the training set unless --val is given, each
    step run until the validation stops improving), or the preset's epochs (the paper presets). The plan is
    printed at the start. With validation each step keeps its best checkpoint: final.pt is then the best
    unified detector (final.last.pt the last).
    """
    from ..train.api import train as run_training
    from ..train.budget import process_start

    hold_output(workdir, "--workdir", folder=True)
    talk = _is_main_process()
    estimates, view = Estimates(), ValidationView()

    def on_step(name: str, what: str) -> None:
        if talk:
            console.info({"start": f"[bold]step {name}[/bold]", "done": f"step {name} done",
                          "skip": f"step {name} already done"}[what])
        if what == "start":
            estimates.start(name)
            view.step, view.text = name, ""

    def on_plan(rows) -> None:
        show_plan(rows, epochs=epochs)
        estimates.set_plans(rows)

    with console.TrainingProgress("training") as progress:
        final = run_training(data, workdir, config=config, overrides=set_, mode=mode, iters=iters, epochs=epochs,
                             val=val, val_every=val_every, patience=patience, seed=seed, device=device,
                             checkpoint_every=checkpoint_every, resume=resume, time_budget=time_budget,
                             budget_from=process_start(),
                             progress=lambda state: _log(progress, view, estimates, state), on_step=on_step,
                             on_warning=lambda m: console.warn(escape(m)), on_note=lambda m: console.info(escape(m)),
                             on_plan=on_plan, on_validation=lambda _, row: view(row), on_runtime=process_settings)
    if talk:
        last = final.with_name("final.last.pt")
        if last.exists():  # validated (on --val or on the split the run carved): final.pt is the best
            console.info(escape(best_summary(final, last=last) or ""))
        click.echo(str(final))
