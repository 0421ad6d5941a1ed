import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorfold.decompose.ranks import Option, allocate_budget, clip_rank, evbmf_rank, rank_for_energy

# numerical properties, cheap per example: few examples keep the folder fast and reproducible
FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def test_clip_rank():
    assert clip_rank(10, 4, 7) == 4
    assert clip_rank(3, 4, 7) == 3
    assert clip_rank(5) == 5
    with pytest.raises(ValueError):
        clip_rank(0, 4)


def test_rank_for_energy_examples():
    s = np.array([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(s, 9 / 14) == 1
    assert rank_for_energy(s, 9 / 14 + 1e-6) == 2
    assert rank_for_energy(s, 13 / 14) == 2
    assert rank_for_energy(s, 0.99) == 3
    assert rank_for_energy(s, 1.0) == 3
    assert rank_for_energy([1.0, 1.0], 0.5) == 1
    assert rank_for_energy(np.zeros(4), 0.9) == 1
    assert rank_for_energy([], 0.9) == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            rank_for_energy(s, bad)


@FAST
@given(s=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=20), e=st.floats(0.01, 1.0))
def test_rank_for_energy_is_the_smallest_sufficient(s, e):
    s = np.sort(np.array(s))[::-1]
    r = rank_for_energy(s, e)
    assert 1 <= r <= len(s)
    total = np.sum(s**2)
    if total > 0 and e < 1.0:
        assert np.sum(s[:r] ** 2) >= e * total * (1 - 1e-9)
        if r > 1:
            assert np.sum(s[: r - 1] ** 2) < e * total


@pytest.mark.parametrize(
    "L,M,rank,seed", [(50, 80, 5, 0), (80, 50, 3, 1), (64, 576, 12, 2), (128, 128, 20, 3), (30, 30, 1, 4)]
)
def test_evbmf_recovers_true_rank(L, M, rank, seed):
    rng = np.random.default_rng(seed)
    sigma = 0.1
    # signal singular values well above the noise edge sigma*(sqrt(L)+sqrt(M))
    edge = sigma * (np.sqrt(L) + np.sqrt(M))
    u, _ = np.linalg.qr(rng.standard_normal((L, rank)))
    v, _ = np.linalg.qr(rng.standard_normal((M, rank)))
    s = edge * np.linspace(4.0, 2.0, rank)
    y = (u * s) @ v.T + sigma * rng.standard_normal((L, M))
    assert evbmf_rank(y) == rank


def test_evbmf_on_pure_noise_and_scale_invariant():
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((40, 60))
    assert evbmf_rank(noise) == 1  # nothing to keep, but at least 1
    rng = np.random.default_rng(6)
    y = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 50)) * 3 + 0.05 * rng.standard_normal((30, 50))
    assert evbmf_rank(y) == evbmf_rank(y * 1e-6) == evbmf_rank(y * 1e6) == 4


@pytest.mark.parametrize(
    "y",
    [
        np.zeros((5, 7)),
        np.zeros((1, 1)),
        np.ones((1, 9)),
        np.ones((9, 1)),
        np.ones((4, 4)),
        np.eye(3),
        np.outer(np.arange(6.0), np.arange(8.0)),
        np.diag([1.0, 1e-20, 0, 0]),
    ],
)
def test_evbmf_guards(y):
    r = evbmf_rank(y)
    assert 1 <= r <= min(y.shape)


def _brute_force(options, budget):
    best = None
    for combo in itertools.product(*[range(len(o)) for o in options]):
        p = sum(options[i][k].params for i, k in enumerate(combo))
        if p > budget:
            continue
        e = sum(options[i][k].error2 for i, k in enumerate(combo))
        if best is None or e < best - 1e-15:
            best = e
    return best


def _objective(options, pick):
    return (
        sum(options[i][k].params for i, k in enumerate(pick)),
        sum(options[i][k].error2 for i, k in enumerate(pick)),
    )


def _convex_layer(rng, n_opts, step):
    # errors decreasing with diminishing returns, every option costing `step` more params
    dec = np.sort(rng.uniform(0.0, 1.0, n_opts - 1))[::-1]
    err = np.concatenate([[1.0], 1.0 - np.cumsum(dec) / (dec.sum() * 1.0001)])
    return [Option(int(step * (k + 1)), float(e)) for k, e in enumerate(err)]


@pytest.mark.parametrize("seed", range(6))
def test_allocate_budget_optimal_on_convex_layers_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    options = [_convex_layer(rng, 5, 10) for _ in range(4)]
    lo = sum(o[0].params for o in options)
    hi = sum(o[-1].params for o in options)
    for budget in range(lo, hi + 1, 7):
        pick = allocate_budget(options, budget)
        p, e = _objective(options, pick)
        assert p <= budget
        assert e == pytest.approx(_brute_force(options, budget), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_allocate_budget_general_case_within_budget_and_one_opt(seed):
    rng = np.random.default_rng(100 + seed)
    options = [
        [Option(int(p), float(e)) for p, e in zip(rng.integers(1, 100, 6), rng.uniform(0, 1, 6))] for _ in range(4)
    ]
    for budget in (60, 120, 200, 300):
        pick = allocate_budget(options, budget)
        p, e = _objective(options, pick)
        if p > budget:  # only when even the smallest options do not fit
            assert pick == [int(np.argmin([o.params for o in opts])) for opts in options]
            continue
        optimum = _brute_force(options, budget)
        assert e >= optimum - 1e-12
        # no single-layer change that fits the budget improves the sum of errors
        for i, opts in enumerate(options):
            for k, _ in enumerate(opts):
                trial = list(pick)
                trial[i] = k
                tp, te = _objective(options, trial)
                if tp <= budget:
                    assert te >= e - 1e-12


def test_allocate_budget_is_usually_optimal_on_random_small_cases():
    rng = np.random.default_rng(11)
    optimal = total = 0
    for _ in range(60):
        options = [
            [Option(int(p), float(e)) for p, e in zip(rng.integers(1, 100, 5), rng.uniform(0, 1, 5))] for _ in range(4)
        ]
        budget = int(rng.integers(60, 300))
        pick = allocate_budget(options, budget)
        p, e = _objective(options, pick)
        if p > budget:
            continue
        total += 1
        optimal += e <= _brute_force(options, budget) + 1e-12
    assert total >= 40 and optimal >= 0.9 * total


def test_allocate_budget_infeasible_returns_smallest_and_ties_are_deterministic():
    options = [[Option(100, 0.0), Option(30, 0.4), Option(30, 0.2)], [Option(50, 0.0), Option(20, 0.5)]]
    assert allocate_budget(options, 10) == [2, 1]
    assert allocate_budget(options, 10**9) == [0, 0]
    assert allocate_budget(options, 50) == [2, 1]
    assert allocate_budget([], 5) == []
    with pytest.raises(ValueError):
        allocate_budget([[]], 5)


def test_allocate_budget_is_fast_for_100_layers_by_1000_options():
    rng = np.random.default_rng(7)
    options = []
    for _ in range(100):
        params = np.sort(rng.integers(1_000, 2_000_000, 1000))
        err = np.sort(rng.uniform(0, 1, 1000))[::-1]
        options.append([Option(int(p), float(e)) for p, e in zip(params, err)])
    budget = sum(int(o[len(o) // 3].params) for o in options)
    t = time.perf_counter()
    pick = allocate_budget(options, budget)
    elapsed = time.perf_counter() - t
    assert sum(options[i][k].params for i, k in enumerate(pick)) <= budget
    assert pick == allocate_budget(options, budget)
    assert elapsed < 5.0  # ~0.3 s here; generous for a loaded 2-core machine
