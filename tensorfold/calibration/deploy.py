"""The fastest (or smallest) model within the user's error bound, over every stage.

Candidates are built and verified on the same held-out samples: the input itself, the factorized
model at the bound, int8 alone, and the factorized model at a share of the bound with int8 on top
(each int8 model with the nodes that cost the most error left in float until the whole stays within
the bound). Those within the bound are timed together, interleaved, on the provider, and the
objective picks one: `latency` the fastest, `size` the smallest file. The input is a candidate too,
so a model slower (or larger) than the input is never written: the input is kept and the report
says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.graph.model import count_params
from tensorfold.graph.verify import Verification
from tensorfold.onnxrt import large
from tensorfold.onnxrt.batching import chunks
from tensorfold.quantize.within_bound import Int8Result

OBJECTIVES = ("latency", "size")
# shares of the bound the factorization may use before int8 takes the rest; measured on PP-OCRv4 det
# at 0.05: factorizing at half the bound leaves int8 room to quantize most nodes
INT8_SPLITS = (0.5,)
SPLIT_STEPS = 6           # models the bound search at a share of the bound builds


@dataclass
class Candidate:
    name: str                                   # "input", "factorized", "int8", "factorized + int8", ...
    model: onnx.ModelProto
    verification: Verification | None          # None for the input: it is the reference
    bound: float | None
    int8: Int8Result | None = None
    factorized_ratio: float | None = None       # over the factorizable layers
    speedup: float | None = None                # the input's median latency over this one's
    latency_ms: float | None = None
    params: int = field(init=False)
    size_bytes: int = field(init=False)

    def __post_init__(self):
        self.params = count_params(self.model)
        self.size_bytes = large.serialized_size(self.model)

    @property
    def max_error(self) -> float:
        return 0.0 if self.verification is None else float(self.verification.max_error)

    @property
    def within(self) -> bool:
        if self.verification is None:
            return True
        if self.verification.broken:
            return False
        return self.bound is None or self.verification.within(self.bound)

    def as_dict(self) -> dict:
        v = self.verification
        return {"name": self.name, "params": self.params, "size_bytes": self.size_bytes,
                "max_error": self.max_error, "within": self.within, "speedup": self.speedup,
                "latency_ms": self.latency_ms, "factorized_ratio": self.factorized_ratio,
                "outputs": [{"name": o.name, "relative_error": o.relative_error, "agreement": o.agreement,
                             "argmax_agreement": o.argmax_agreement} for o in v.outputs] if v else None,
                "int8": self.int8.as_dict() if self.int8 else None}


@dataclass
class DeployChoice:
    chosen: Candidate
    candidates: list[Candidate]
    objective: str | None
    latency: str | None                         # what the speedups are: "cpu, 1 thread, measured interleaved"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"chosen": self.chosen.name, "objective": self.objective, "latency": self.latency,
                "candidates": [c.as_dict() for c in self.candidates], "notes": self.notes}


def choose(candidates: list[Candidate], objective: str | None, feeds: dict[str, np.ndarray] | None,
           provider: str = "cpu", threads: int = 0, rounds: int = 15) -> DeployChoice:
    """Time the candidates within the bound (interleaved, one call each round) and pick by `objective`.
    candidates[0] is the input. Without an objective the last candidate within the bound is taken
    (the caller's order: the one the options asked for)."""
    from tensorfold.runtime.latency import measure_interleaved

    base = candidates[0]
    ok = [c for c in candidates if c.within]
    label = None
    if objective is not None and feeds is not None:
        # every candidate is timed, within the bound or not: the report compares them all
        call = next(iter(chunks(base.model, feeds, max_batch=1)))
        stats = measure_interleaved([(c.model, call) for c in candidates], provider, threads, rounds=rounds)
        for c, s in zip(candidates, stats):
            c.latency_ms = s.median
            c.speedup = stats[0].median / s.median
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in call.items())
        label = f"{provider}, {threads or 'all'} thread(s), {shapes}, median of {rounds} interleaved runs"
    notes = []
    if objective == "latency":
        chosen = max(ok, key=lambda c: c.speedup)
        if chosen is base and len(ok) > 1:
            notes.append(f"no candidate within the bound ran faster than the input on {provider}: the input is kept")
    elif objective == "size":
        chosen = min(ok, key=lambda c: c.size_bytes)
        if chosen is base and len(ok) > 1:
            notes.append("no candidate within the bound is a smaller file than the input: the input is kept")
    else:
        chosen = ok[-1]
    if len(ok) == 1 and len(candidates) > 1:
        notes.append("no candidate stayed within the bound on the held-out samples: the input is kept")
    return DeployChoice(chosen, candidates, objective, label, notes)


def check_objective(objective: str | None) -> None:
    if objective is not None and objective not in OBJECTIVES:
        raise TensorfoldError(f"unknown objective '{objective}' (choose from {', '.join(OBJECTIVES)})")
