"""The learning rate recover picks without --lr: the range test leaves the weights as they were and
lands inside its bounds; a run too short for it takes the short-run rate; --lr wins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tensorfold.demo import demo_model_path
from tensorfold.graph.io import load_model
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.distill import OnnxTeacher, Outputs, rewritten_outputs
from tensorfold.recovery.lr_finder import (
    CEILING,
    EDGE_RUNS,
    FLOOR,
    SHORT_RUN_LR,
    TRIAL_RATES,
    find_lr,
    trial_lr,
)
from tensorfold.recovery.onnx_torch import OnnxModule
from tensorfold.recovery.run import recover
from tests.helpers.data import smooth_images

TEACHER = demo_model_path()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "x.npz"
    np.savez(path, x=smooth_images(160, 0))
    return path


def test_the_range_test_keeps_the_weights_and_its_bounds(student):
    model = load_model(student)
    module = OnnxModule(model)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    teacher = OnnxTeacher(load_model(TEACHER), rewritten_outputs(model))
    x = np.asarray(smooth_images(64, 1), dtype=np.float32).reshape(64, 1, 28, 28)
    choice = find_lr(module, teacher, x, None, RecoverConfig(batch_size=16), Outputs.of(model), tuple(teacher.features))
    assert FLOOR <= choice.lr <= CEILING
    assert len(choice.curve) >= 5 and "range test" in choice.how
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_trial_runs_pick_the_rate_that_recovers_best_and_keep_the_weights(student):
    model = load_model(student)
    module = OnnxModule(model)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    teacher = OnnxTeacher(load_model(TEACHER), rewritten_outputs(model))
    x = np.asarray(smooth_images(96, 1), dtype=np.float32).reshape(96, 1, 28, 28)
    choice = trial_lr(module, teacher, x[:80], x[80:], RecoverConfig(batch_size=16), Outputs.of(model))
    # every rate ran and is listed with its validation error (the grid, and past its end where the
    # winner sat there); the chosen one has the lowest
    listed = dict(part.split(": ") for part in choice.how.split("(")[1].split(")")[0].split(", "))
    assert set(map(float, listed)) >= set(TRIAL_RATES) and len(listed) <= len(TRIAL_RATES) + EDGE_RUNS
    assert float(listed[f"{choice.lr:g}"]) == min(map(float, listed.values()))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize(
    "steps, lr, expect",
    [(5, None, "too few for a range test"), (45, None, "range test"), (45, 3e-4, "--lr")],
)
def test_recover_says_where_its_rate_came_from(student, data, tmp_path, steps, lr, expect):
    report = recover(
        student,
        tmp_path / "r.onnx",
        teacher_path=TEACHER,
        data=str(data),
        cfg=RecoverConfig(max_steps=steps, batch_size=16, lr=lr),
        progress=False,
    )
    config = report["config"]
    assert expect in config["lr_from"]
    if lr is not None:
        assert config["lr"] == lr
    elif steps < 40:
        assert config["lr"] == SHORT_RUN_LR
    else:
        assert FLOOR <= config["lr"] <= CEILING


@pytest.mark.parametrize(
    "best, extra",
    [
        (1e-9, [3.2e-6, 1e-6]),  # the smallest rate keeps winning: two runs below the grid
        (3.2e-6, [3.2e-6, 1e-6]),  # the first step below wins; the second is tried and loses
        (1e-5, [3.2e-6]),  # the grid's end wins again: one run below, which loses
        (3e-4, []),  # a winner inside the grid: nothing more
        (1.0, [3.2e-3, 1e-2]),  # the largest keeps winning: two runs above
    ],
)
def test_a_winner_at_the_grid_end_is_followed_past_it(monkeypatch, best, extra):
    """Trial runs scored by distance (in decades) from `best`: the runs past the grid's ends."""
    import math
    from types import SimpleNamespace

    from tensorfold.recovery import lr_finder

    ran = []

    def fake_train(module, teacher, x, y, vx, vy, cfg, folder, **kwargs):
        ran.append(cfg.lr)
        error = abs(math.log10(cfg.lr) - math.log10(best))
        return SimpleNamespace(history=SimpleNamespace(evals=[{"output_error": error}]), stop="max steps")

    monkeypatch.setattr(lr_finder, "train", fake_train)
    module = torch.nn.Linear(2, 2)
    choice = trial_lr(module, None, np.zeros((4, 2)), np.zeros((2, 2)), RecoverConfig(), Outputs((), {}))
    assert ran == [*TRIAL_RATES, *extra]
    assert choice.lr == min(ran, key=lambda r: abs(math.log10(r) - math.log10(best)))
