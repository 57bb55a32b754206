"""The schedule in epochs: images x flips / images per iteration -> iterations, the lr drops and the warm-up,
and the options that set it (``--epochs``, ``--iters``)."""

from __future__ import annotations

import pytest

from frcnn_cli.config import get_preset
from frcnn_cli.config_io import apply_overrides
from frcnn_cli.errors import ConfigError
from frcnn_cli.train.schedule import Schedule, plan_step

VOC07_TRAINVAL = 5011


def test_the_paper_presets_give_voc07_exactly_the_papers_iterations_and_drops():
    solver = get_preset("vgg16").solver
    rpn = plan_step(solver, "rpn", images=VOC07_TRAINVAL, flip=True)
    det = plan_step(solver, "detector", images=VOC07_TRAINVAL, flip=True)
    assert (rpn.entries, rpn.iters_per_epoch, rpn.iterations, rpn.drops) == (10022, 10022, 80000, (60000,))
    assert (det.iters_per_epoch, det.iterations, det.drops) == (5011, 40000, (30000,))
    assert rpn.epochs == pytest.approx(7.98, abs=0.01) and rpn.warmup == 0
    joint = plan_step(solver, "joint", images=VOC07_TRAINVAL, flip=True)
    assert (joint.iterations, joint.drops) == (70000, (52500,))


def test_a_small_set_gets_proportionally_fewer_iterations():
    solver = get_preset("zf").solver
    rpn = plan_step(solver, "rpn", images=200, flip=True)  # 400 entries, 1 per iteration
    det = plan_step(solver, "detector", images=200, flip=True)  # 2 per iteration: 200 per epoch
    assert (rpn.iterations, rpn.drops) == (3193, (2395,))  # 7.98 epochs of 400 entries; the drop at 3/4
    assert det.iterations == round(80000 / 10022 * 200) == 1596


def test_an_epoch_is_the_entries_over_the_batch_rounded_up():
    solver = apply_overrides(get_preset("tiny"), ["solver.min_iters=0", "solver.rpn_epochs=3",
                                                  "solver.rpn_images_per_batch=4"]).solver
    plan = plan_step(solver, "rpn", images=13, flip=True)  # 26 entries in 7 batches, the last of 2
    assert (plan.entries, plan.batch, plan.iters_per_epoch, plan.iterations) == (26, 4, 7, 21)
    unflipped = plan_step(solver, "rpn", images=13, flip=False)
    assert (unflipped.entries, unflipped.iters_per_epoch, unflipped.iterations) == (13, 4, 12)
    two_gpus = plan_step(solver, "rpn", images=13, flip=True, world_size=2)  # 8 images per iteration
    assert (two_gpus.batch, two_gpus.iters_per_epoch, two_gpus.iterations) == (8, 4, 12)


def test_the_lr_drops_and_the_warm_up_scale_with_the_length():
    solver = apply_overrides(get_preset("tiny"), ["solver.min_iters=0", "solver.det_epochs=8",
                                                  "solver.warmup_epochs=0.5", "solver.lr_drops=0.5,0.75"]).solver
    plan = plan_step(solver, "detector", images=100, flip=True)  # 50 iterations per epoch
    assert (plan.iterations, plan.drops, plan.warmup) == (400, (200, 300), 25)
    longer = plan_step(solver, "detector", images=100, flip=True, epochs=16)
    assert (longer.iterations, longer.drops, longer.warmup, longer.source) == (800, (400, 600), 25, "--epochs")
    short = plan_step(solver, "detector", images=100, flip=True, iters=30)  # warm-up: at most half the first drop
    assert (short.iterations, short.drops, short.warmup, short.source) == (30, (15, 22), 7, "--iters")


def test_a_floor_on_iterations_holds_small_sets_and_not_an_explicit_epoch_count():
    solver = apply_overrides(get_preset("tiny"), ["solver.rpn_epochs=4", "solver.min_iters=300"]).solver
    small = plan_step(solver, "rpn", images=50, flip=True)  # 25 per epoch: 100 < 300
    assert (small.iterations, small.source, small.epochs) == (300, "min_iters", 12.0)
    large = plan_step(solver, "rpn", images=1000, flip=True)
    assert (large.iterations, large.source) == (2000, "epochs")
    asked = plan_step(solver, "rpn", images=50, flip=True, epochs=2)
    assert asked.iterations == 50


def test_a_config_with_a_fixed_iteration_count_keeps_it():
    cfg = apply_overrides(get_preset("tiny"), ["solver.rpn_iters=400", "solver.rpn_steps=300"])
    plan = plan_step(cfg.solver, "rpn", images=7, flip=True)
    assert (plan.iterations, plan.drops, plan.source) == (400, (300,), "iters")
    assert plan_step(cfg.solver, "rpn", images=7, flip=True, iters=40).drops == (30,)


def test_epochs_and_iters_together_are_refused():
    with pytest.raises(ConfigError, match="--epochs or --iters, not both"):
        plan_step(get_preset("tiny").solver, "rpn", images=10, flip=True, iters=5, epochs=2.0)


def test_a_drop_brought_forward_replaces_the_next_one_only():
    schedule = Schedule(0.01, (60, 90), 0.1)
    early = schedule.with_drop_at(40)
    assert early.steps == (40, 90)
    assert [early.lr_at(i) for i in (39, 40, 89, 90)] == pytest.approx([0.01, 0.001, 0.001, 0.0001])
    assert early.drops_left(41) == 1 and early.with_drop_at(50).with_drop_at(55) == early.with_drop_at(50)
    # a drop at the very iteration the patience runs out has not acted yet: it counts, and the step goes on
    assert schedule.drops_left(60) == 2 and schedule.with_drop_at(60) == schedule


def test_the_cli_refuses_epochs_with_iters_and_val_options_without_val(train_set, frcnn, train_options, tmp_path,
                                                                       assert_clean_error):
    out = tmp_path / "out"
    base = ["train-rpn", "--data", train_set[0], "--out", out / "rpn.pt", "--init", "none", *train_options()]
    assert_clean_error(frcnn(*base, "--epochs", 2, "--iters", 3, ok=False), "give --epochs or --iters, not both",
                       out_dir=out)
    assert_clean_error(frcnn(*base, "--patience", 2, ok=False), "--patience needs --val", out_dir=out)
    result = frcnn("train", "--data", train_set[0], "--workdir", out, "--epochs", 1, "--iters", 2, *train_options(),
                   ok=False)
    assert_clean_error(result, "give --epochs or --iters, not both", out_dir=out)
