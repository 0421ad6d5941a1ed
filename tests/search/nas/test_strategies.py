import time

import numpy as np

from tensorfold.search.nas.space import random_genotype
from tensorfold.search.nas.strategies import Scored, aging_evolution, nsga2_search, random_search
from tensorfold.search.pareto import front


def _fake(objectives):
    """A cheap stand-in for proxy training: 'accuracy' counts conv ops, 'params' counts non-skip ops."""
    count = {"n": 0}

    def evaluate(g):
        ops = [o for cell in (g.normal, g.reduce) for node in cell for o, _ in node]
        m = {
            "accuracy": sum(o.startswith(("conv", "sep")) for o in ops) / len(ops),
            "params": float(sum(o != "skip_connect" and "pool" not in o for o in ops)),
        }
        s = Scored(count["n"], g, [m[o] for o in objectives], m, 0.0)
        count["n"] += 1
        return s

    return evaluate


def test_aging_evolution_improves_on_its_random_start():
    far = time.perf_counter() + 60
    hist = aging_evolution(
        _fake(("accuracy",)),
        far,
        np.random.default_rng(0),
        3,
        ("accuracy",),
        population=10,
        sample=3,
        max_candidates=200,
    )
    assert len(hist) == 200
    first = max(s.values[0] for s in hist[:10])
    assert max(s.values[0] for s in hist) > first
    assert np.mean([s.values[0] for s in hist[-50:]]) > np.mean([s.values[0] for s in hist[:10]]) + 0.15


def test_random_and_nsga2_respect_the_count_and_deadline():
    objectives = ("accuracy", "params")
    assert len(random_search(_fake(objectives), time.perf_counter() + 60, np.random.default_rng(0), 3, 15)) == 15
    assert random_search(_fake(objectives), time.perf_counter() - 1, np.random.default_rng(0), 3) == []
    hist = nsga2_search(_fake(objectives), time.perf_counter() + 60, 0, 3, objectives, population=8, max_candidates=40)
    assert len(hist) == 40
    f = front(hist, objectives)
    assert f and all(s in hist for s in f)
    assert all(isinstance(s.genotype, type(random_genotype(np.random.default_rng(0)))) for s in hist)


def _constrained(objectives, limit):
    base = _fake(objectives)

    def evaluate(g):
        s = base(g)
        s.metrics["latency"] = s.metrics["params"]  # stand-in: more ops, slower
        s.user_attrs["constraints"] = [s.metrics["latency"] - limit]
        return s

    return evaluate


def test_a_latency_constraint_steers_evolution_and_filters_the_front():
    far = time.perf_counter() + 60
    hist = aging_evolution(
        _constrained(("accuracy",), 6.0),
        far,
        np.random.default_rng(1),
        3,
        ("accuracy",),
        population=10,
        sample=3,
        max_candidates=150,
    )
    late = hist[-50:]
    assert np.mean([s.user_attrs["constraints"][0] <= 0 for s in late]) > 0.8
    objectives = ("accuracy", "params")
    hist = nsga2_search(_constrained(objectives, 6.0), far, 0, 3, objectives, population=8, max_candidates=40)
    assert all(s.metrics["latency"] <= 6.0 for s in front(hist, objectives))


def test_choosing_fails_clearly_when_nothing_meets_the_constraint():
    import pytest

    from tensorfold.errors import TensorfoldError
    from tensorfold.search.nas.run import _choose

    hist = random_search(_constrained(("accuracy",), -1.0), time.perf_counter() + 60, np.random.default_rng(0), 3, 5)
    with pytest.raises(TensorfoldError, match="no candidate met --max-latency -1"):
        _choose(hist, ("accuracy",), {"latency": -1.0, "memory": None})
    # the constraint that failed is the one named, with the least value seen
    for s in hist:
        s.metrics["memory"] = 2.0
    least = min(s.metrics["latency"] for s in hist)
    with pytest.raises(TensorfoldError, match=r"no candidate met --max-memory-mb 1 \(the least of 5: 2.000 MB\)$"):
        _choose(hist, ("accuracy",), {"latency": least, "memory": 1.0})


def test_a_single_network_is_held_to_the_constraints_too():
    """DARTS and --genotype give one network: it is checked, not chosen (the constraints were ignored)."""
    import pytest

    from tensorfold.errors import TensorfoldError
    from tensorfold.search.nas.run import _choose
    from tensorfold.search.nas.strategies import Scored

    one = [Scored(0, None, [], {"latency": 0.3, "memory": 0.2}, 0.0)]
    with pytest.raises(TensorfoldError, match=r"does not meet --max-memory-mb 0.001 \(it has 0.200 MB\)"):
        _choose(one, ("accuracy",), {"latency": None, "memory": 0.001})
    assert _choose(one, ("accuracy",), {"latency": 1.0, "memory": 1.0})[1] is one[0]
