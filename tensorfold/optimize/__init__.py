"""`optimize` as typed stages: load -> prepare (normalize, statistics) -> build -> verify -> deploy
(int8 and the objective) -> report -> save. Each stage is a function of stages.py with typed input
and output; `run` strings them together and api.optimize is its facade."""

from tensorfold.optimize.options import OptimizeOptions
from tensorfold.optimize.stages import run

__all__ = ["OptimizeOptions", "run"]
