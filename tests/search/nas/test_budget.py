"""Fitting a search to --budget-minutes: the plan's choices from step times, and a real run that
ends inside its budget."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.search.nas import budget
from tensorfold.search.nas.budget import plan_budget
from tensorfold.search.nas.options import NasOptions
from tests.helpers.cli import invoke
from tests.helpers.data import needs_data

SPLIT = (np.zeros((64, 1, 28, 28), np.float32), np.zeros(64, np.int64))


@pytest.fixture
def step_times(monkeypatch):
    """Step seconds per width, as if measured; each timing costs 4 steps of the pre-check."""
    times = {}

    def fake(self, channels, slowest=False):
        if times[channels] > self.limit_s - self.spent:  # the warm-up step alone overran the share
            return None
        self.spent += 4 * times[channels]
        return times[channels]

    monkeypatch.setattr(budget._Clock, "step_s", fake)
    return times


def test_a_roomy_budget_keeps_every_default(step_times):
    step_times.update({8: 0.01})
    plan = plan_budget(NasOptions(), SPLIT, budget_s=600, elapsed_s=1)
    assert (plan.channels, plan.proxy_steps, plan.final_steps, plan.final_channels) == (8, 100, 600, 8)
    assert plan.final_reserve_s == pytest.approx(600 * 0.01 + budget.FINAL_OVERHEAD_S)
    assert len(plan.notes) == 1 and plan.notes[0].startswith("pre-check")


def test_a_tight_budget_narrows_candidates_then_cuts_proxy_steps_and_says_so(step_times):
    # 6 minutes on a slow host: 600 final steps do not fit 30%, 20 candidates at 8 channels do not fit
    step_times.update({8: 0.4, 6: 0.3, 4: 0.2})
    plan = plan_budget(NasOptions(), SPLIT, budget_s=360, elapsed_s=2)
    assert plan.final_steps == int(0.3 * 360 / 0.4) and plan.final_channels == 8  # the final stays wide
    assert plan.channels == 4 and 30 <= plan.proxy_steps < 100
    search_s = 360 - 2 - plan.precheck_s - plan.final_reserve_s
    assert search_s / (plan.proxy_steps * plan.step_s) >= 2 * 10 - 1  # about two populations
    text = " ".join(plan.notes)
    assert "final training: 270 steps of the slowest" in text and "4 channels" in text and "proxy steps" in text
    assert plan.precheck_s <= 0.1 * 360


def test_values_the_user_gave_are_kept(step_times):
    step_times.update({5: 0.4, 12: 0.9})
    plan = plan_budget(
        NasOptions(channels=5, proxy_steps=80, final_steps=50, final_channels=12), SPLIT, budget_s=600, elapsed_s=0
    )
    assert (plan.channels, plan.proxy_steps, plan.final_steps, plan.final_channels) == (5, 80, 50, 12)
    assert plan.final_step_s == 0.9


def test_darts_and_a_given_genotype_only_size_the_final_training(step_times, tmp_path):
    step_times.update({8: 0.5})
    darts = plan_budget(NasOptions(strategy="darts"), SPLIT, budget_s=360, elapsed_s=0)
    assert darts.channels == 8 and darts.final_steps == int(0.3 * 360 / 0.5)
    given = plan_budget(NasOptions(genotype=tmp_path / "g.json"), SPLIT, budget_s=120, elapsed_s=0)
    # no search: the final training takes what the pre-check and the measurement leave
    assert given.final_steps == int((120 - given.precheck_s - budget.FINAL_OVERHEAD_S) / 0.5)


@pytest.mark.parametrize(
    "times, message",
    [
        ({8: 100.0}, "one training step of the slowest network at 8 channels took over a tenth"),
        ({8: 1.0}, "too small for the final training"),  # 100 steps > 60% of the budget
        ({8: 0.05, 6: 0.05, 4: 0.05}, "too small to train one candidate"),
    ],
)
def test_budgets_that_cannot_hold_the_run_are_refused(step_times, times, message):
    step_times.update(times)
    proxy = 2000 if "candidate" in message else None
    with pytest.raises(TensorfoldError, match=message):
        plan_budget(NasOptions(proxy_steps=proxy), SPLIT, budget_s=60, elapsed_s=0)


def test_the_pre_check_never_spends_more_than_its_share():
    """Real steps: a budget of 2 s lets the pre-check time at most 0.2 s of steps beyond one warm-up."""
    clock = budget._Clock(*SPLIT, layers=3, nodes=3, limit_s=0.2, device="cpu")
    start = time.perf_counter()
    first = clock.step_s(8)
    assert first is None or first > 0
    assert time.perf_counter() - start < 0.2 + 4 * (first or 1.0)


def test_final_training_stops_at_its_deadline():
    from tensorfold.search.nas.space import NetConfig, Network, random_genotype
    from tensorfold.search.nas.train import train_network

    net = Network(random_genotype(np.random.default_rng(0)), NetConfig(channels=4, layers=3))
    start = time.perf_counter()
    out = train_network(net, *SPLIT, steps=100000, deadline=start + 1.0)
    assert 4 <= out["steps"] < 100000 and time.perf_counter() - start < 3.0


@needs_data
def test_a_search_with_defaults_ends_inside_its_budget(tmp_path):
    """No --channels/--proxy-steps/--final-steps: the whole command (search, final training, test
    on 10,000 images, latency) ends inside 1 minute, and the report says how it fit."""
    code, text = invoke(
        "search",
        "nas",
        "--budget-minutes",
        "1",
        "--train-size",
        "400",
        "--val-size",
        "200",
        "--layers",
        "3",
        "--final-channels",
        "4",
        "--threads",
        "1",
        "--json",
        "-o",
        tmp_path / "net.onnx",
    )
    assert code == 0, text
    report = json.loads(text[text.index("{") :])
    assert report["seconds"] <= 60 * 1.05, report["budget"]
    assert report["budget"]["precheck_s"] <= 6 and report["candidates"] >= 1
    assert report["final"]["test_accuracy"] > 0.3 and report["final"]["host_ms"] > 0
    assert report["budget"]["notes"][0].startswith("pre-check")


def test_the_fewest_final_steps_may_take_more_than_the_share(step_times):
    # 100 steps of 0.25 s do not fit 30% of a minute but do fit 60% of it: the search gets the rest
    step_times.update({8: 0.25, 6: 0.2, 4: 0.1})
    plan = plan_budget(NasOptions(), SPLIT, budget_s=60, elapsed_s=0)
    assert plan.final_steps == 100 and plan.proxy_steps >= 30


def test_darts_tries_a_narrower_supernet_before_refusing(tmp_path, monkeypatch):
    """--channels unset: a supernet too slow for three short epochs at 8 channels is tried at 6, then 4."""
    from tensorfold.search.nas import darts
    from tensorfold.search.nas.run import search_nas
    from tensorfold.search.nas.space import random_genotype

    rng = np.random.default_rng(0)
    data = tmp_path / "labelled.npz"
    np.savez(data, x=rng.random((300, 1, 28, 28), dtype=np.float32), y=rng.integers(0, 10, 300))
    widths = []

    def fake(x, y, cfg, **kw):
        widths.append(cfg.channels)
        if cfg.channels > 4:
            raise darts.DartsBudgetError(kw["budget_s"], 1000.0)
        return darts.DartsResult(random_genotype(rng), 1, 10, "epochs done")

    monkeypatch.setattr(darts, "darts_search", fake)
    report = search_nas(
        strategy="darts",
        data=str(data),
        budget_minutes=1,
        layers=3,
        final_steps=5,
        threads=1,
        train_size=200,
        val_size=50,
        progress=False,
    )
    assert widths == [8, 6, 4] and report["space"]["channels"] == 4
    assert any("DARTS supernet at 4 channels" in n for n in report["budget"]["notes"])
    widths.clear()
    with pytest.raises(TensorfoldError, match="too small for DARTS here"):
        search_nas(
            strategy="darts",
            data=str(data),
            budget_minutes=1,
            layers=3,
            final_steps=5,
            threads=1,
            channels=5,
            train_size=200,
            val_size=50,
            progress=False,
        )
    assert widths == [5]
