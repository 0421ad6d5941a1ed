"""Fitting an architecture search to --budget-minutes: the whole command (data, search, final
training, test and measurement) ends inside the budget on the machine it runs on.

A pre-check times SGD steps of the costliest network of the space (every edge a 5x5 conv) and
stops once it has spent a tenth of the budget. From that step time the plan reserves the final
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
from tensorfold.search.nas.space import NetConfig, Network, heaviest_genotype
from tensorfold.search.nas.train import train_network

PRECHECK_SHARE = 0.1      # the pre-check never spends more than this share of the budget
FINAL_SHARE = 0.3         # the final training's share of the budget, at most
FINAL_OVERHEAD_S = 8.0    # export, test on 10,000 images and latency runs after the final training (measured: 3-6 s)
WIDTHS = (8, 6, 4)        # search widths tried, widest first, when --channels is left unset
PROXY_STEPS = (100, 30)   # proxy steps: the default and the fewest that still rank candidates
FINAL_STEPS = (600, 100)  # final training steps: the default and the fewest worth a report
GENERATIONS = 2           # candidates the search should hold: this many populations


@dataclass
class BudgetPlan:
    budget_s: float
    channels: int
    proxy_steps: int
    final_steps: int
    final_channels: int
    step_s: float                  # one SGD step of the costliest candidate at `channels`, measured
    final_step_s: float            # the same at `final_channels`
    precheck_s: float
    final_reserve_s: float         # kept back for the final training, its test and measurement
    notes: list[str] = field(default_factory=list)

    def search_deadline(self, start: float) -> float:
        """When the search must stop so the final training fits."""
        return start + self.budget_s - self.final_reserve_s

    def as_dict(self) -> dict:
        return {"budget_s": round(self.budget_s, 1), "channels": self.channels, "proxy_steps": self.proxy_steps,
                "final_steps": self.final_steps, "final_channels": self.final_channels,
                "step_s": round(self.step_s, 4), "final_step_s": round(self.final_step_s, 4),
                "precheck_s": round(self.precheck_s, 2), "final_reserve_s": round(self.final_reserve_s, 1),
                "notes": list(self.notes)}


class _Clock:
    """Times SGD steps of the costliest network, never past the pre-check's share of the budget."""

    def __init__(self, x, y, layers: int, nodes: int, limit_s: float, device: str):
        self.x, self.y, self.layers, self.nodes, self.device = x, y, layers, nodes, device
        self.limit_s, self.spent = limit_s, 0.0
        self.seen: dict[int, float] = {}

    def step_s(self, channels: int) -> float | None:
        """Seconds per step at `channels` (after one warm-up step), or None when the pre-check's
        share ran out before a step finished."""
        if channels in self.seen:
            return self.seen[channels]
        net = Network(heaviest_genotype(self.nodes), NetConfig(channels=channels, layers=self.layers))
        times = []
        for k in range(4):                 # a warm-up step, then up to three timed ones
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
        self.seen[channels] = float(np.median(times))
        return self.seen[channels]


def plan_budget(opts, split, budget_s: float, elapsed_s: float) -> BudgetPlan:
    """`opts` is a NasOptions; fields left None are sized to the budget. `elapsed_s`: what the
    command has spent already (loading data), out of the same budget."""
    tx, ty = split[0], split[1]
    searching = opts.genotype is None
    limit = PRECHECK_SHARE * budget_s
    clock = _Clock(tx, ty, opts.layers, opts.nodes, limit, opts.torch_device)
    notes: list[str] = []

    def too_small(what: str):
        return TensorfoldError(f"the budget ({budget_s / 60:.1f} min) is too small {what}; raise --budget-minutes")

    widths = (opts.channels,) if opts.channels is not None else WIDTHS
    channels, step_s = widths[0], clock.step_s(widths[0])
    if step_s is None:
        raise too_small(f"here: one training step of the largest network took over a tenth of it "
                        f"({limit:.1f} s)")
    final_channels = opts.final_channels or channels
    final_step_s = clock.step_s(final_channels) if final_channels != channels else step_s
    if final_step_s is None:
        raise too_small(f"for --final-channels {final_channels}: one training step took over {limit:.1f} s")

    # the final training: its steps fit FINAL_SHARE of the budget (the user's --final-steps are kept)
    left = budget_s - elapsed_s - clock.spent
    if opts.final_steps is not None:
        final_steps = opts.final_steps
    else:
        share = FINAL_SHARE * budget_s if searching else left - FINAL_OVERHEAD_S
        final_steps = min(FINAL_STEPS[0], int(share / final_step_s))
        if final_steps < FINAL_STEPS[1]:
            raise too_small(f"for the final training: {FINAL_STEPS[1]} steps take about "
                            f"{FINAL_STEPS[1] * final_step_s / 60:.1f} min here")
        if final_steps < FINAL_STEPS[0]:
            notes.append(f"final training: {final_steps} steps (of {FINAL_STEPS[0]}) to fit "
                         f"{FINAL_SHARE:.0%} of the budget at {final_step_s:.3f} s per step")
    final_reserve = final_steps * final_step_s + FINAL_OVERHEAD_S
    search_s = left - final_reserve

    proxy_steps = opts.proxy_steps or PROXY_STEPS[0]
    if searching and opts.strategy != "darts":
        wanted = GENERATIONS * opts.population

        def count(step: float, steps: int) -> int:
            return int(search_s / (step * steps)) if search_s > 0 else 0

        # narrower candidates first (the proxy ranks architectures, not widths), then fewer proxy steps
        for width in widths[1:]:
            if count(step_s, proxy_steps) >= wanted:
                break
            narrower = clock.step_s(width)
            if narrower is None:
                break
            notes.append(f"candidates at {width} channels (not {channels}): about {count(step_s, proxy_steps)} "
                         f"of {wanted} wanted candidates fit at {channels}")
            channels, step_s = width, narrower
            search_s = budget_s - elapsed_s - clock.spent - final_reserve
        if opts.proxy_steps is None and count(step_s, proxy_steps) < wanted:
            fewer = max(PROXY_STEPS[1], int(search_s / (wanted * step_s)) if search_s > 0 else 0)
            if fewer < proxy_steps:
                notes.append(f"{fewer} proxy steps per candidate (not {proxy_steps}) so about {wanted} candidates fit")
                proxy_steps = fewer
        if count(step_s, proxy_steps) < 1:
            raise too_small(f"to train one candidate (about {proxy_steps * step_s / 60:.1f} min for "
                            f"{proxy_steps} proxy steps here, with {final_reserve / 60:.1f} min kept for the final "
                            f"training); raise --budget-minutes or lower --proxy-steps")
    notes.insert(0, f"pre-check: {clock.spent:.1f} s timing the largest network ({step_s:.3f} s per step at "
                    f"{channels} channels); {final_reserve:.0f} s kept for the final training and measurement")
    return BudgetPlan(budget_s, channels, proxy_steps, final_steps, final_channels, step_s, final_step_s,
                      clock.spent, final_reserve, notes)
