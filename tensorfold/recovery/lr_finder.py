"""A learning rate for the model at hand, found on its own data: the LR range test (Smith 2017,
"Cyclical learning rates"; fastai's lr_find) run on the recovery loss itself.

A fixed default cannot serve every model: 2e-3 recovers the zoo's small CNNs, and sent PP-OCRv4 det's
loss from 0.5 to 8000. The test trains a copy of the start for up to RANGE_STEPS steps with the
learning rate rising geometrically from LOW to HIGH, smooths the loss, stops once it has clearly
diverged, and takes a tenth of the rate at the smoothed minimum (the steepest safe region lies about
an order of magnitude below the point where the loss turns up). The weights go back to where they
started; only the rate is kept. `--lr` skips it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tensorfold.datasets import samples_subset
from tensorfold.recovery.config import RecoverConfig, autocast
from tensorfold.recovery.distill import Outputs, Teacher
from tensorfold.recovery.distributed import World, from_rank0
from tensorfold.recovery.finetune import make_optimizer, student_loss, train
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
    use_kd = cfg.distill in ("hinton", "both") and teacher is not None
    rates = np.geomspace(LOW, HIGH, RANGE_STEPS)
    opt = make_optimizer(module, cfg, lr=LOW)
    rng = np.random.default_rng(cfg.seed)
    curve: list[tuple[float, float]] = []
    average, best, best_at = 0.0, math.inf, None
    module.train()
    try:
        for i, lr in enumerate(rates):
            idx = np.sort(rng.choice(len(x), min(cfg.batch_size, len(x)), replace=False))
            xb = tensors(samples_subset(x, idx)[:], cfg.device)
            labels = torch.from_numpy(y[idx]).to(cfg.device) if y is not None else None
            with autocast(cfg):
                t_outs, t_feats = teacher(*xb) if teacher is not None else (None, {})
                outputs, feats = module(*xb, capture=features) if features else (module(*xb), {})
                loss = student_loss(outputs, feats, t_outs, t_feats, labels, cfg, spec, use_kd, bool(features))
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
            for group in opt.param_groups:
                group["lr"] = float(lr)
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
    """cfg with the range test's learning rate, and how it was found. A run shorter than the test
    takes SHORT_RUN_LR instead. Under torchrun every rank takes rank 0's."""
    shard = -(-len(x) // w.size)
    total = cfg.max_steps or max(1, shard // cfg.batch_size) * cfg.epochs
    if total < RANGE_STEPS:
        return replace(cfg, lr=SHORT_RUN_LR), f"{total} steps: too few for a range test, {SHORT_RUN_LR:g}"
    features = tuple(teacher.features) if teacher is not None and cfg.distill in ("feature", "both") else ()
    choice = find_lr(module, teacher, x, y, cfg, spec, features)
    lr = choice.lr
    if w.distributed:
        lr = float(from_rank0(lr))
    return replace(cfg, lr=lr), choice.how


# optimize --recover's rates: short trial runs judged on validation (trial_lr)
TRIAL_RATES = (1e-5, 1e-4, 3e-4, 1e-3)
TRIAL_STEPS = 25
# a winner at an end of the grid is followed past it, a factor EDGE_FACTOR a run, while it keeps
# winning, for at most EDGE_RUNS more runs: MiniLM-L3 and PP-OCR rec chose the grid's 1e-5, whose
# neighbours below had never been tried (docs/results/compress.md)
EDGE_RUNS, EDGE_FACTOR = 2, 10**0.5


def trial_lr(
    module: torch.nn.Module,
    teacher: Teacher,
    x: Any,
    val_x: Any,
    cfg: RecoverConfig,
    spec: Outputs,
    metric: str = "output_error",
) -> LrChoice:
    """The rate whose short run recovers best: each of TRIAL_RATES trains a copy of the start for
    TRIAL_STEPS steps (the run's own loss, warm-up and cosine schedule, compressed) and the one that
    ends with the best validation `metric` wins; the weights go back to the start after each.

    Why not the range test here: optimize's candidates start close to the teacher (each factor
    fitted to the calibration data), where the range test's loss is lowest at its first steps and
    it answers its floor. On PP-OCR cls at 1.5x its 1e-5 reached 0.079 in 200 steps, 3e-4 0.073,
    1e-3 nothing (docs/results/compress.md): a short run's validation error ranks rates as the long
    run does, which the loss curve of one rising-rate run cannot see."""
    start = {k: v.detach().clone() for k, v in module.state_dict().items()}
    scores: list[tuple[float, float]] = []

    def run(rate: float) -> None:
        short = replace(cfg, lr=rate, max_steps=TRIAL_STEPS, eval_every=TRIAL_STEPS, patience=None)
        with tempfile.TemporaryDirectory(prefix="tensorfold-lr-") as tmp:
            result = train(
                module, teacher, x, None, val_x, None, short, Path(tmp), progress=False, spec=spec, metric=metric
            )
        final = result.history.evals[-1] if result.history.evals else None
        if final is not None and metric in final and not result.stop.startswith("loss became"):
            scores.append((rate, signed(final, metric)))
        module.load_state_dict(start)

    tried = list(TRIAL_RATES)
    try:
        for rate in TRIAL_RATES:
            run(rate)
        for _ in range(EDGE_RUNS):  # past the end of the grid the winner sits at, while it keeps winning
            best = max(scores, key=lambda s: s[1])[0] if scores else None
            if best == min(tried):
                rate = float(f"{best / EDGE_FACTOR:.2g}")
            elif best == max(tried):
                rate = float(f"{best * EDGE_FACTOR:.2g}")
            else:
                break  # none finished, or the best is inside what was tried
            tried.append(rate)
            run(rate)
    finally:
        module.load_state_dict(start)
    if not scores:
        return LrChoice(FLOOR, f"trial runs: none finished, {FLOOR:g}")
    rate, _ = max(scores, key=lambda s: s[1])
    table = ", ".join(f"{r:g}: {abs(v):.4g}" for r, v in scores)
    return LrChoice(rate, f"trial runs of {TRIAL_STEPS} steps, validation {metric} ({table}): {rate:g}")
