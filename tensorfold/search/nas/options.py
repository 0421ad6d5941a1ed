"""What a NAS run is asked for: strategies, objectives, the image size, NasOptions (checked once)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tensorfold.errors import TensorfoldError
from tensorfold.limits import check_count, check_seed
from tensorfold.search.objectives import parse_names

STRATEGIES = ("darts", "evolution", "random")
NAS_OBJECTIVES = ("accuracy", "params", "flops", "latency", "memory")
IMAGE = (1, 28, 28)
# the space's size a search can make use of: more cells, nodes or channels than these do not fit a
# 28x28 search's budget or memory (100000 cells ran for minutes before a 1-minute budget was
# checked; 100000 channels exhausted memory)
MOST = {"--layers": 30, "--nodes": 8, "--channels": 512, "--final-channels": 512, "--population": 1000}


def parse_nas_objectives(text) -> tuple[str, ...]:
    return parse_names(text, NAS_OBJECTIVES, "NAS objective")


@dataclass(frozen=True)
class NasOptions:
    """Every option of an architecture search, checked once (the CLI and Python callers build the same thing).

    genotype: a genotype JSON file (from an earlier run's --output-dir): no search, only the
    final training, export and measurement. torch_device: where the search and the final training
    run ("cuda" on a GPU machine); measurement is always onnxruntime on `provider`."""

    strategy: str = "evolution"
    objectives: tuple[str, ...] | str = ("accuracy",)
    data: str = "fashion-mnist"
    budget_minutes: float = 10.0
    device: str | None = None
    provider: str = "cpu"
    threads: int = 1
    teacher: str | os.PathLike | None = None
    output: str | os.PathLike | None = None
    output_dir: str | os.PathLike | None = None
    seed: int = 0
    channels: int | None = None  # None: fit the budget (8, else 6 or 4 for the candidates)
    layers: int = 5
    nodes: int = 3
    train_size: int = 4000
    val_size: int = 1000
    proxy_steps: int | None = None  # None: fit the budget (100, down to 30)
    final_steps: int | None = None  # None: fit the budget (600, down to 100)
    final_channels: int | None = None
    order: int = 1
    guard: str = "earlystop"
    population: int = 10
    sample: int = 3
    max_candidates: int | None = None  # evolution/random: stop after this many, budget or not
    max_epochs: int = 50  # DARTS: epochs of its schedule (the budget may stop it sooner)
    genotype: str | os.PathLike | None = None
    max_latency: float | None = None
    max_memory_mb: float | None = None
    torch_device: str = "cpu"
    progress: bool = True
    started: float | None = None  # time.perf_counter() when the budget began (default: this call);
    # the CLI passes its start, so imports count against the budget

    def __post_init__(self):
        object.__setattr__(self, "order", int(self.order))
        if self.strategy not in STRATEGIES:
            raise TensorfoldError(f"unknown strategy '{self.strategy}' (choose from {', '.join(STRATEGIES)})")
        objectives = parse_nas_objectives(self.objectives)
        object.__setattr__(self, "objectives", objectives)
        if self.strategy == "darts" and objectives != ("accuracy",):
            raise TensorfoldError(
                f"DARTS optimizes accuracy alone; use --strategy evolution or random for {','.join(objectives)}"
            )
        if self.max_latency is not None and not self.max_latency > 0:
            raise TensorfoldError(f"--max-latency must be > 0 ms (got {self.max_latency})")
        if self.max_memory_mb is not None and not self.max_memory_mb > 0:
            raise TensorfoldError(f"--max-memory-mb must be > 0 (got {self.max_memory_mb})")
        if not self.budget_minutes > 0:
            raise TensorfoldError(f"--budget-minutes must be > 0 (got {self.budget_minutes})")
        for option, value in (
            ("--layers", self.layers),
            ("--nodes", self.nodes),
            ("--channels", self.channels),
            ("--final-channels", self.final_channels),
            ("--population", self.population),
        ):
            if value is not None and not 1 <= value <= MOST[option]:
                raise TensorfoldError(f"{option} must be between 1 and {MOST[option]} (got {value})")
        check_count(self.threads)
        check_seed(self.seed)
