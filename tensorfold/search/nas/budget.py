"""Fitting an architecture search to --budget-minutes: the whole command (data, search, final
training, test and measurement) ends inside the budget on the machine it runs on.

A pre-check times SGD steps of two networks of the space and stops once it has spent a tenth of
the budget: a typical candidate (every op of the space on about as many edges as a random genotype
gives it) and the slowest one (every edge a separable 5x5 conv: on a CPU its depthwise convs make a
step 2.5x slower than the 5x5 conv that leads in FLOPs, measured with 1 thread at 8 channels by tools/bench_nas_step.py). The
typical step sizes the search, the slowest the final training's reserve. The plan reserves the final
training's share and sizes what the user left unset: the final training's steps, the candidates'
width and proxy steps (evolution and random), so that the search scores at least a couple of
generations. Values the user gave are kept; the plan says what it chose and why, and the report
carries it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tensorfold.errors import TensorfoldError
from tensorfold.search.nas.space import DISCRETE_OPS, Genotype, NetConfig, Network, uniform_genotype
from tensorfold.search.nas.train import train_network

PRECHECK_SHARE = 0.1  # the pre-check never spends more than this share of the budget
FINAL_SHARE = 0.3  # the final training's share of the budget, as a rule
MAX_FINAL_SHARE = 0.6  # ... and at most, for its fewest steps on a slow host
FINAL_OVERHEAD_S = 8.0  # export, test on 10,000 images and latency runs after the final training (measured: 3-6 s)
WIDTHS = (8, 6, 4)  # search widths tried, widest first, when --channels is left unset
PROXY_STEPS = (100, 30)  # proxy steps: the default and the fewest that still rank candidates
FINAL_STEPS = (600, 100)  # final training steps: the default and the fewest worth a report
GENERATIONS = 2  # candidates the search should hold: this many populations


def typical_genotype(nodes: int) -> Genotype:
    """The space's ops in turn over the cells' edges: what a random genotype costs, about."""
    ops = iter(DISCRETE_OPS * (4 * nodes))
    cell = lambda: tuple(((next(ops), k), (next(ops), k + 1)) for k in range(nodes))  # noqa: E731
    return Genotype(cell(), cell())


def slowest_genotype(nodes: int) -> Genotype:
    return uniform_genotype("sep_conv_5x5", nodes)


@dataclass
class BudgetPlan:
    budget_s: float
    channels: int
    proxy_steps: int
    final_steps: int
    final_channels: int
    step_s: float  # one SGD step of a typical candidate at `channels`, measured
    final_step_s: float  # one step of the slowest network at `final_channels`
    precheck_s: float
    final_reserve_s: float  # kept back for the final training, its test and measurement
    notes: list[str] = field(default_factory=list)

    def search_deadline(self, start: float) -> float:
        """When the search must stop so the final training fits."""
        return start + self.budget_s - self.final_reserve_s

    def as_dict(self) -> dict:
        return {
            "budget_s": round(self.budget_s, 1),
            "channels": self.channels,
            "proxy_steps": self.proxy_steps,
            "final_steps": self.final_steps,
            "final_channels": self.final_channels,
            "step_s": round(self.step_s, 4),
            "final_step_s": round(self.final_step_s, 4),
            "precheck_s": round(self.precheck_s, 2),
            "final_reserve_s": round(self.final_reserve_s, 1),
            "notes": list(self.notes),
        }


class _Clock:
    """Times SGD steps of a network, never past the pre-check's share of the budget."""

    def __init__(self, x, y, layers: int, nodes: int, limit_s: float, device: str):
        self.x, self.y, self.layers, self.nodes, self.device = x, y, layers, nodes, device
        self.limit_s, self.spent = limit_s, 0.0
        self.seen: dict[tuple, float] = {}

    def step_s(self, channels: int, slowest: bool = False) -> float | None:
        """Seconds per step at `channels` (after one warm-up step) of a typical or the slowest
        network, or None when the pre-check's share ran out before a step finished."""
        key = (channels, slowest)
        if key in self.seen:
            return self.seen[key]
        genotype = slowest_genotype(self.nodes) if slowest else typical_genotype(self.nodes)
        net = Network(genotype, NetConfig(channels=channels, layers=self.layers))
        times = []
        for k in range(4):  # a warm-up step, then up to three timed ones
            if self.spent >= self.limit_s:
                break
            t = time.perf_counter()
            train_network(net, self.x, self.y, steps=1, seed=k, device=self.device)
            dt = time.perf_counter() - t
            self.spent += dt
            if k:
                times.append(dt)
            elif dt > self.limit_s:
                break
        if not times:
            return None
        self.seen[key] = float(np.median(times))
        return self.seen[key]


def plan_budget(opts, split, budget_s: float, elapsed_s: float) -> BudgetPlan:
    """`opts` is a NasOptions; fields left None are sized to the budget. `elapsed_s`: what the
    command has spent already (loading data), out of the same budget."""
    tx, ty = split[0], split[1]
    searching = opts.genotype is None
    limit = PRECHECK_SHARE * budget_s
    clock = _Clock(tx, ty, opts.layers, opts.nodes, limit, opts.torch_device)
    notes: list[str] = []

    def too_small(what: str, fix: str = "raise --budget-minutes"):
        return TensorfoldError(f"the budget ({budget_s / 60:.1f} min) is too small {what}; {fix}")

    widths = (opts.channels,) if opts.channels is not None else WIDTHS
    channels = widths[0]
    final_channels = opts.final_channels or channels
    final_step_s = clock.step_s(final_channels, slowest=True)
    if final_step_s is None:
        raise too_small(
            f"here: one training step of the slowest network at {final_channels} channels took over "
            f"a tenth of it ({limit:.1f} s)"
        )

    # the final training: its steps fit FINAL_SHARE of the budget (the user's --final-steps are kept)
    left = budget_s - elapsed_s - clock.spent
    if opts.final_steps is not None:
        final_steps = opts.final_steps
    else:
        share = FINAL_SHARE * budget_s if searching else left - FINAL_OVERHEAD_S
        final_steps = min(FINAL_STEPS[0], int(share / final_step_s))
        if final_steps < FINAL_STEPS[1]:
            # the fewest steps worth a report may take more than the share, not more than MAX_FINAL_SHARE
            if FINAL_STEPS[1] * final_step_s > (MAX_FINAL_SHARE if searching else 1.0) * (left - FINAL_OVERHEAD_S):
                raise too_small(
                    f"for the final training: {FINAL_STEPS[1]} steps take about "
                    f"{FINAL_STEPS[1] * final_step_s / 60:.1f} min here"
                )
            final_steps = FINAL_STEPS[1]
        if final_steps < FINAL_STEPS[0]:
            notes.append(
                f"final training: {final_steps} steps of the slowest network fit {FINAL_SHARE:.0%} of the "
                f"budget ({final_step_s:.3f} s per step); the chosen one trains up to {FINAL_STEPS[0]} "
                f"until the budget's end"
            )
    final_reserve = final_steps * final_step_s + FINAL_OVERHEAD_S
    # DARTS times its own supernet steps; a given genotype has no candidates
    step_s = clock.step_s(channels) if searching and opts.strategy != "darts" else final_step_s
    if step_s is None:
        raise too_small(f"here: the pre-check's tenth ({limit:.1f} s) ran out timing the candidates")
    search_s = budget_s - elapsed_s - clock.spent - final_reserve

    proxy_steps = opts.proxy_steps or PROXY_STEPS[0]
    if searching and opts.strategy != "darts":
        wanted = min(GENERATIONS * opts.population, opts.max_candidates or GENERATIONS * opts.population)

        def count(step: float, steps: int) -> int:
            return int(search_s / (step * steps)) if search_s > 0 else 0

        # narrower candidates first (the proxy ranks architectures, not widths), then fewer proxy steps
        for width in widths[1:]:
            if count(step_s, proxy_steps) >= wanted:
                break
            narrower = clock.step_s(width)
            if narrower is None:
                break
            notes.append(
                f"candidates at {width} channels (not {channels}): about {count(step_s, proxy_steps)} "
                f"of {wanted} wanted candidates fit at {channels}"
            )
            channels, step_s = width, narrower
            search_s = budget_s - elapsed_s - clock.spent - final_reserve
        if opts.proxy_steps is None and count(step_s, proxy_steps) < wanted:
            fewer = max(PROXY_STEPS[1], int(search_s / (wanted * step_s)) if search_s > 0 else 0)
            if fewer < proxy_steps:
                notes.append(f"{fewer} proxy steps per candidate (not {proxy_steps}) so about {wanted} candidates fit")
                proxy_steps = fewer
        if count(step_s, proxy_steps) < 1:
            raise too_small(
                f"to train one candidate (about {proxy_steps * step_s / 60:.1f} min for "
                f"{proxy_steps} proxy steps here, with {final_reserve / 60:.1f} min kept for the final "
                f"training)",
                "raise --budget-minutes or lower --proxy-steps",
            )
    typical = (
        f"{step_s:.3f} s per step of a typical candidate at {channels} channels, "
        if searching and opts.strategy != "darts"
        else ""
    )
    notes.insert(
        0,
        f"pre-check: {clock.spent:.1f} s timing training steps ({typical}{final_step_s:.3f} s of the "
        f"slowest network at {final_channels}); {final_reserve:.0f} s kept for the final training and "
        f"measurement",
    )
    return BudgetPlan(
        budget_s,
        channels,
        proxy_steps,
        final_steps,
        final_channels,
        step_s,
        final_step_s,
        clock.spent,
        final_reserve,
        notes,
    )
