"""The learning rate recover picks without --lr: the step probe's (it follows how far a step moves
the model, and leaves the weights as they were); where no step helps, the range test's, inside its
bounds, or the short-run rate for a run too short for it; --lr wins. optimize --recover's rate:
whole runs from the same start, the best kept, started lower for a sharp model."""

from __future__ import annotations

import numpy as np
import onnx
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
    PROBE_RATES,
    RATE_MARGIN,
    RUN_RATES,
    SHORT_RUN_LR,
    find_lr,
    rate_by_runs,
    run_rates,
    step_probe,
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


def test_the_best_whole_run_is_kept_and_its_rate_chosen(student, tmp_path):
    """Each rate trains the candidate for the whole run from the same start; the module ends on the
    winning run's weights, which are that run's best."""
    from dataclasses import replace

    from tensorfold.recovery.finetune import train
    from tensorfold.recovery.validation import evaluate

    model = load_model(student)
    module = OnnxModule(model)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    teacher = OnnxTeacher(load_model(TEACHER), rewritten_outputs(model))
    spec = Outputs.of(model)
    x = np.asarray(smooth_images(96, 1), dtype=np.float32).reshape(96, 1, 28, 28)
    cfg = RecoverConfig(batch_size=16, max_steps=12, eval_every=6, workers=0)
    starts = []

    def run(rate):
        starts.append({k: v.clone() for k, v in module.state_dict().items()})
        return train(
            module,
            teacher,
            x[:80],
            None,
            x[80:],
            None,
            replace(cfg, lr=rate),
            tmp_path / f"r{rate:g}",
            progress=False,
            spec=spec,
            metric="output_error",
        )

    choice, result = rate_by_runs(module, run)
    assert all(all(torch.equal(before[k], v) for k, v in s.items()) for s in starts)  # every run from the start
    listed = dict(part.split(": ") for part in choice.how.split("(")[1].split(")")[0].split(", "))
    assert set(map(float, listed)) >= set(RUN_RATES) and len(listed) <= len(RUN_RATES) + EDGE_RUNS
    chosen, least = float(listed[f"{choice.lr:g}"]), min(map(float, listed.values()))
    assert chosen == least or (chosen * (1 - RATE_MARGIN) <= least and "must win by" in choice.how)
    assert result.best is not None and float(listed[f"{choice.lr:g}"]) == pytest.approx(
        result.best["output_error"], rel=1e-3
    )
    again = evaluate(module, x[80:], None, teacher, spec, 16)  # the module holds the winner's best weights
    assert again["output_error"] == pytest.approx(result.best["output_error"], rel=1e-5)


def _matmul_pair(scale: float):
    """A 64x64 MatMul student whose weights have RMS `scale`, and its teacher: the same weights
    moved by a fifth. The same problem at every scale, save how far one Adam step moves it."""
    from tests.passes.single_node import matmul_model

    student, _ = matmul_model(64, 64, lead=(128,))
    teacher, _ = matmul_model(64, 64, lead=(128,))
    w = np.random.default_rng(3).standard_normal((64, 64))
    for model, weight in ((student, w), (teacher, w + 0.2 * np.random.default_rng(4).standard_normal((64, 64)))):
        model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array((scale * weight).astype(np.float32), "W"))
    return student, teacher


def _probe(scale: float):
    student, teacher_model = _matmul_pair(scale)
    module = OnnxModule(student)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = np.random.default_rng(5).standard_normal((128, 64)).astype(np.float32)
    cfg = RecoverConfig(batch_size=64, distill="feature")  # the relative output error, not KD on a "class" axis
    rate = step_probe(module, OnnxTeacher(teacher_model, []), x, None, cfg, Outputs.of(student))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(p.grad is None for p in module.parameters())
    return rate


def test_the_step_probe_follows_how_far_a_step_moves_the_model():
    """Adam moves every weight by about the rate whatever its size: weights 1000x smaller need a
    rate about 1000x smaller, which the probe finds (the fixed brackets did not: a ViT diverged at
    every rate they tried)."""
    big, small = _probe(1e-2), _probe(1e-5)
    assert big in PROBE_RATES and small in PROBE_RATES
    assert 10**2.4 <= big / small <= 10**3.6


def test_run_rates_follow_a_low_probe_only():
    assert run_rates(None) == RUN_RATES
    assert run_rates(max(RUN_RATES) / 10) == RUN_RATES  # the zoo, det, cls: as measured before
    assert run_rates(3.2e-5) == (3.2e-5, 1e-4)  # det and rec, chains alone: a whole run bears more
    assert run_rates(1e-6) == (1e-6, 3.2e-6)  # a ViT's best single step, every weight trained


@pytest.mark.parametrize(
    "steps, lr, probe_helps, expect",
    [
        (5, None, True, "step probe"),
        (45, None, True, "step probe"),
        (5, None, False, "too few for a range test"),
        (45, None, False, "range test"),
        (45, 3e-4, True, "--lr"),
    ],
)
def test_recover_says_where_its_rate_came_from(student, data, tmp_path, monkeypatch, steps, lr, probe_helps, expect):
    import tensorfold.recovery.lr_finder as lr_finder

    if not probe_helps:
        monkeypatch.setattr(lr_finder, "step_probe", lambda *a, **k: None)
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
    elif probe_helps:
        assert config["lr"] in PROBE_RATES
    elif steps < 40:
        assert config["lr"] == SHORT_RUN_LR
    else:
        assert FLOOR <= config["lr"] <= CEILING


@pytest.mark.parametrize(
    "best, extra",
    [
        (1e-9, [3.2e-5, 1e-5]),  # the smallest rate keeps winning: two runs below
        (3.2e-5, [3.2e-5, 1e-5]),  # the first step below wins; the second is tried and loses
        (1e-4, [3.2e-5]),  # the smallest wins again: one run below, which loses
        (3e-4, [3.2e-5]),  # nearer 1e-4 than 1e-3 (in decades): one run below, which loses
        (1.0, [3.2e-3, 1e-2]),  # the largest keeps winning: two runs above
    ],
)
def test_a_winner_at_an_end_is_followed_past_it(best, extra):
    """Runs scored by distance (in decades) from `best`: which rates run, and which is chosen."""
    import math
    from types import SimpleNamespace

    ran = []

    def fake_run(rate):
        ran.append(rate)
        error = abs(math.log10(rate) - math.log10(best))
        return SimpleNamespace(best={"output_error": error, "step": 1}, stop="done")

    choice, result = rate_by_runs(torch.nn.Linear(2, 2), fake_run)
    assert ran == [*RUN_RATES, *extra]
    assert choice.lr == min(ran, key=lambda r: abs(math.log10(r) - math.log10(best)))
    assert result.best["output_error"] == min(abs(math.log10(r) - math.log10(best)) for r in ran)


def test_a_sharp_models_runs_start_at_its_probe():
    """A ViT's best single step is at 1e-6: its runs start there and half a decade up, not at 1e-4
    and 1e-3 (which never beat its start), and follow the winner down as usual."""
    from types import SimpleNamespace

    ran = []

    def fake_run(rate):
        ran.append(rate)
        ok = rate <= 1e-6
        return SimpleNamespace(best={"output_error": 0.04 if ok else 0.05, "step": 5 if ok else 0}, stop="done")

    choice, _ = rate_by_runs(torch.nn.Linear(2, 2), fake_run, probe=1e-6)
    assert ran == [1e-6, 3.2e-6, 3.2e-7]  # the winner at the smaller end is followed down, ties there
    assert choice.lr == 1e-6 and "best single step at 1e-06" in choice.how  # a tie keeps the earlier rate


@pytest.mark.parametrize(
    "errors, chosen",
    [
        ({1e-4: 0.0617, 1e-3: 0.0604}, 1e-3),  # between the first runs any gain wins
        ({1e-4: 0.0700, 1e-3: 0.0617, 3.2e-3: 0.0604}, 1e-3),  # an edge run 2% better: not enough
        ({1e-4: 0.0700, 1e-3: 0.0617, 3.2e-3: 0.0500}, 3.2e-3),  # 19% better: the edge run wins
        ({1e-4: 0.0500, 1e-3: 0.0600, 3.2e-5: 0.0490}, 3.2e-5),  # a smaller rate wins on any gain
    ],
)
def test_a_rate_past_the_first_runs_must_win_by_a_margin(errors, chosen):
    """The chosen rate trains the later, closer candidates too: a near tie past the first runs goes
    to the rate the first runs chose (zoo MobileNetV2's 3.2e-3 at 2% better)."""
    from types import SimpleNamespace

    def fake_run(rate):
        return SimpleNamespace(best={"output_error": errors.get(rate, 1.0), "step": 1}, stop="done")

    choice, result = rate_by_runs(torch.nn.Linear(2, 2), fake_run)
    assert choice.lr == chosen and result.best["output_error"] == errors[chosen]
    assert ("must win by 5%" in choice.how) == (min(errors, key=errors.get) != chosen)


def test_a_probe_below_the_run_rates_starts_the_runs_at_it_and_half_a_decade_up():
    """PP-OCRv4 det with the chains alone trained (its first candidate's validation error at each
    rate, measured): the probe reads 3.2e-5, a whole run does better at 1e-4, and 3.2e-4, 3.5%
    better again, is an edge run that falls short of the margin. 1e-4 reaches 1.37x at 0.05 where
    3.2e-5 (the probe's rate and its tenth as first runs) reached 1.31x."""
    from types import SimpleNamespace

    errors = {3.2e-6: 0.1038, 3.2e-5: 0.0997, 1e-4: 0.0964, 3.2e-4: 0.0930}
    ran = []

    def fake_run(rate):
        ran.append(rate)
        return SimpleNamespace(best={"output_error": errors.get(rate, 1.0), "step": 1}, stop="done")

    choice, _ = rate_by_runs(torch.nn.Linear(2, 2), fake_run, probe=3.2e-5)
    assert ran == [3.2e-5, 1e-4, 3.2e-4]
    assert choice.lr == 1e-4 and "not 0.00032: a rate past the first runs must win by 5%" in choice.how
    assert choice.how.startswith("best single step at 3.2e-05; ")


def test_the_probe_is_named_where_the_runs_start_at_the_defaults_too():
    from types import SimpleNamespace

    def fake_run(rate):
        return SimpleNamespace(best={"output_error": rate, "step": 1}, stop="done")

    assert rate_by_runs(torch.nn.Linear(2, 2), fake_run, probe=3.2e-4)[0].how.startswith(
        "best single step at 0.00032; "
    )
    assert rate_by_runs(torch.nn.Linear(2, 2), fake_run)[0].how.startswith("whole runs")


def test_a_rate_past_the_first_runs_must_win_by_a_margin_in_agreement_too():
    """A classifier's runs are scored by agreement: the margin is on the share not agreeing."""
    from types import SimpleNamespace

    agreement = {1e-4: 0.850, 1e-3: 0.900, 3.2e-3: 0.902}  # 2% fewer disagreements: not enough

    def fake_run(rate):
        return SimpleNamespace(best={"teacher_agreement": agreement.get(rate, 0.5), "step": 1}, stop="done")

    choice, _ = rate_by_runs(torch.nn.Linear(2, 2), fake_run, metric="teacher_agreement")
    assert choice.lr == 1e-3
    agreement[3.2e-3] = 0.92  # 20% fewer
    assert rate_by_runs(torch.nn.Linear(2, 2), fake_run, metric="teacher_agreement")[0].lr == 3.2e-3


def test_a_failed_run_is_never_chosen():
    """A rate whose loss became NaN loses to any finished run, whatever its last evaluation said."""
    from types import SimpleNamespace

    def fake_run(rate):
        if rate >= 1e-3:
            return SimpleNamespace(best={"output_error": 0.0, "step": 3}, stop="loss became nan at step 4")
        return SimpleNamespace(best={"output_error": 0.5, "step": 5}, stop="done")

    choice, _ = rate_by_runs(torch.nn.Linear(2, 2), fake_run)
    assert choice.lr == RUN_RATES[0] and "failed" in choice.how


def test_a_rate_whose_run_never_beat_the_start_is_marked_so():
    """Two rates reading the same error were the starting weights twice, not two measurements."""
    from types import SimpleNamespace

    def fake_run(rate):
        step = 5 if rate == 1e-4 else 0  # only 1e-4 improved on the start (0.0822)
        return SimpleNamespace(best={"output_error": 0.0796 if step else 0.0822, "step": step}, stop="done")

    choice, _ = rate_by_runs(torch.nn.Linear(2, 2), fake_run)
    assert choice.lr == 1e-4
    assert "0.0001: 0.0796, 0.001: 0.0822 (no step beat the start)" in choice.how
