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
        m = {"accuracy": sum(o.startswith(("conv", "sep")) for o in ops) / len(ops),
             "params": float(sum(o != "skip_connect" and "pool" not in o for o in ops))}
        s = Scored(count["n"], g, [m[o] for o in objectives], m, 0.0)
        count["n"] += 1
        return s
    return evaluate


def test_aging_evolution_improves_on_its_random_start():
    far = time.perf_counter() + 60
    hist = aging_evolution(_fake(("accuracy",)), far, np.random.default_rng(0), 3, ("accuracy",), population=10,
                           sample=3, max_candidates=200)
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
