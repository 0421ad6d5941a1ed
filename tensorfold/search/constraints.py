"""Constraint values on Optuna trials (<= 0 is feasible), for Optuna 4 and 5.

Optuna 5 reads them from `Trial.set_constraint` and deprecates the samplers' `constraints_func`;
Optuna 4 only has the latter. Either way the values are also kept in the trial's user attributes,
where search/pareto.py reads feasibility.
"""

from __future__ import annotations

import optuna

HAS_SET_CONSTRAINT = hasattr(optuna.trial.Trial, "set_constraint")


def from_user_attrs(trial) -> list[float]:
    return trial.user_attrs.get("constraints", [])


def sampler_kwargs(constrained: bool) -> dict:
    """What a sampler's constructor needs to see the constraints."""
    return {"constraints_func": from_user_attrs} if constrained and not HAS_SET_CONSTRAINT else {}


def record(trial, values) -> None:
    values = [float(v) for v in values]
    trial.set_user_attr("constraints", values)
    if HAS_SET_CONSTRAINT:
        for i, v in enumerate(values):
            trial.set_constraint(f"c{i}", v)
