"""Discrete search strategies over genotypes, all driven by one `evaluate(genotype) -> Scored`
within a wall-clock deadline:

  random     genotypes drawn uniformly (Li & Talwalkar 2019: the baseline every NAS result needs);
  evolution  one objective: aging (regularized) evolution, Real et al. 2019 (population P, tournament
             of S, the child of the best replaces the oldest); several objectives: NSGA-II through
             Optuna's ask/tell, the genotype's ops and inputs as categorical parameters.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import optuna

from tensorfold.search.constraints import record, sampler_kwargs
from tensorfold.search.nas.space import DISCRETE_OPS, Genotype, mutate, random_genotype
from tensorfold.search.objectives import DIRECTIONS

_COMPLETE = SimpleNamespace(name="COMPLETE")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Scored:
    """One evaluated genotype, shaped like an Optuna trial for search/pareto.py."""

    number: int
    genotype: Genotype
    values: list[float]
    metrics: dict
    seconds: float
    user_attrs: dict = field(default_factory=dict)
    weights: dict | None = field(default=None, repr=False, compare=False)  # the proxy-trained network's

    @property
    def state(self) -> SimpleNamespace:
        return _COMPLETE

    def as_dict(self) -> dict:
        return {
            "number": self.number,
            "genotype": self.genotype.as_dict(),
            "metrics": self.metrics,
            "seconds": round(self.seconds, 2),
        }


def _score(s: Scored, objectives) -> tuple:
    """What single-objective strategies rank by (higher is better): feasible first, then the objective."""
    v = s.values[0]
    violation = sum(max(0.0, c) for c in s.user_attrs.get("constraints", []))
    return (-violation, v if DIRECTIONS[objectives[0]] == "maximize" else -v)


def random_search(evaluate, deadline: float, rng, nodes: int, max_candidates: int | None = None) -> list[Scored]:
    out = []
    while time.perf_counter() < deadline and (max_candidates is None or len(out) < max_candidates):
        out.append(evaluate(random_genotype(rng, nodes)))
    return out


def aging_evolution(
    evaluate,
    deadline: float,
    rng,
    nodes: int,
    objectives,
    population: int = 10,
    sample: int = 3,
    max_candidates: int | None = None,
) -> list[Scored]:
    history: list[Scored] = []
    alive: collections.deque[Scored] = collections.deque()

    def more():
        return time.perf_counter() < deadline and (max_candidates is None or len(history) < max_candidates)

    while len(alive) < population and more():
        s = evaluate(random_genotype(rng, nodes))
        alive.append(s)
        history.append(s)
    while more():
        picks = [alive[i] for i in rng.choice(len(alive), size=min(sample, len(alive)), replace=False)]
        parent = max(picks, key=lambda s: _score(s, objectives))
        child = evaluate(mutate(parent.genotype, rng))
        alive.append(child)
        history.append(child)
        alive.popleft()  # aging: the oldest dies, not the worst
    return history


def genotype_from_trial(trial, nodes: int) -> Genotype:
    cells = {}
    for kind in ("normal", "reduce"):
        cell = []
        for k in range(nodes):
            cell.append(
                tuple(
                    (
                        trial.suggest_categorical(f"{kind}{k}.op{e}", DISCRETE_OPS),
                        trial.suggest_int(f"{kind}{k}.in{e}", 0, k + 1),
                    )
                    for e in range(2)
                )
            )
        cells[kind] = tuple(cell)
    return Genotype(cells["normal"], cells["reduce"])


def nsga2_search(
    evaluate,
    deadline: float,
    seed: int,
    nodes: int,
    objectives,
    population: int = 10,
    max_candidates: int | None = None,
) -> list[Scored]:
    study = optuna.create_study(
        directions=[DIRECTIONS[o] for o in objectives],
        sampler=optuna.samplers.NSGAIISampler(population_size=population, seed=seed, **sampler_kwargs(True)),
    )
    out = []
    while time.perf_counter() < deadline and (max_candidates is None or len(out) < max_candidates):
        trial = study.ask()
        s = evaluate(genotype_from_trial(trial, nodes))
        if "constraints" in s.user_attrs:
            record(trial, s.user_attrs["constraints"])
        study.tell(trial, s.values)
        out.append(s)
    return out
