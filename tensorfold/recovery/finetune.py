"""Fine-tuning with distillation: the training loop and its schedule (configuration, validation,
checkpoints and history are in config.py, validation.py, checkpoints.py and history.py)."""

from __future__ import annotations

import itertools
import math
import signal
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from tensorfold import signals
from tensorfold.datasets import ImageFiles
from tensorfold.errors import Terminated
from tensorfold.outputs import OutputFolder
from tensorfold.progress import bar as progress_bar
from tensorfold.recovery.checkpoints import (
    checkpoint_folder,
    checkpoint_step,
    load_checkpoint,
    load_params,
    resume_checkpoint,
    save_atomic,
    save_checkpoint,
)
from tensorfold.recovery.config import RecoverConfig, autocast, grad_scaler
from tensorfold.recovery.distill import Outputs, Teacher, feature_loss, output_loss
from tensorfold.recovery.distributed import World, epoch_order, world, wrap
from tensorfold.recovery.history import History
from tensorfold.recovery.onnx_torch import OnnxModule
from tensorfold.recovery.validation import evaluate, metric_for, ranked, signed, tensors

if TYPE_CHECKING:
    from types import FrameType


@dataclass
class _Learner:
    """One model being trained: the student, or a peer of deep mutual learning."""

    module: torch.nn.Module
    net: torch.nn.Module  # the module, or DDP around it
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    best_file: Path
    capture: tuple[str, ...] = ()
    best: dict[str, Any] | None = None
    best_saved: bool = False  # best_file holds this run's (or the resumed run's) best weights


def student_loss(
    outputs: list[torch.Tensor],
    feats: dict[str, torch.Tensor],
    t_outs: list[torch.Tensor] | None,
    t_feats: dict[str, torch.Tensor],
    labels: torch.Tensor | None,
    cfg: RecoverConfig,
    spec: Outputs,
    use_kd: bool,
    use_features: bool,
) -> torch.Tensor:
    """One model's loss on a batch: KD on class scores and the relative error on every other output
    (weighted by alpha against the labels' cross-entropy), plus the factor chains' feature loss."""
    loss = torch.zeros((), device=outputs[0].device)
    if use_kd and t_outs is not None:  # KD on class scores, relative error on every other output
        loss = loss + cfg.alpha * output_loss(outputs, t_outs, spec, cfg.temperature)
    if labels is not None:
        ce = F.cross_entropy(outputs[0].float(), labels)
        loss = loss + ((1 - cfg.alpha) if use_kd else 1.0) * ce
    elif not use_kd and t_outs is not None:
        loss = loss + output_loss(outputs, t_outs, spec, cfg.temperature, kd=False)
    if use_features:
        loss = loss + cfg.feature_weight * feature_loss(feats, t_feats)
    return loss


def make_optimizer(module: torch.nn.Module, cfg: RecoverConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over the module's trainable weights, at `lr` (default: cfg.lr);
    AdamW's groups carry each tensor's rate scale (set_lr applies it)."""
    params = [p for p in module.parameters() if p.requires_grad]
    rate = lr if lr is not None else cfg.lr
    assert rate is not None, "the learning rate is chosen (lr_finder) before training"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=rate, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    groups = scaled_groups(params)
    for group in groups:
        group["lr"] = rate * group["scale"]
    return torch.optim.AdamW(groups, lr=rate, weight_decay=cfg.weight_decay)


def scaled_groups(params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """Parameter groups for Adam: a weight tensor (2 dims or more) whose RMS is below the median
    weight tensor's trains at the rate times RMS / median; every other tensor at the rate. The first
    group is the unscaled one.

    Why: Adam moves every element by about the rate whatever its size, so a tensor far smaller than
    the others changes by a far larger share of itself. PP-OCRv4 det holds a conv whose folded
    weights are all below 2.5e-4 (the median tensor's RMS is ~100x that): recovering it at 2x, the
    loss went from 0.037 to 0.39 within 5 steps at 1e-5 and to 1.7e7 at 1e-3, and no rate beat the
    starting model (docs/results/compress.md). Scaled, a rate changes each tensor by the same share
    of itself as it changes a median one; tensors at or above the median keep the rate (the rates
    measured on other models keep their meaning). The scale is fixed at the start of a run."""
    rms = {id(p): float(p.detach().float().pow(2).mean().sqrt()) for p in params if p.dim() >= 2}
    typical = float(np.median(list(rms.values()))) if rms else 0.0
    plain: list[torch.nn.Parameter] = []
    groups: list[dict[str, Any]] = []
    for p in params:
        scale = rms.get(id(p), typical) / typical if typical > 0 else 1.0
        if 0 < scale < 1:
            groups.append({"params": [p], "scale": scale})
        else:
            plain.append(p)
    return [{"params": plain, "scale": 1.0}, *groups]


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group at `lr` times its scale (make_optimizer's; 1 where it has none)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("scale", 1.0)


@dataclass
class TrainResult:
    """What a training run ends with (the module itself is trained in place)."""

    history: History
    stop: str  # why it stopped, in words (a NaN stop starts "loss became")
    best: dict[str, Any] | None  # the best evaluation: its step and metrics (None: never evaluated)
    peers_best: list[dict[str, Any] | None] = field(default_factory=list)  # each peer's, by --peers order


def train(
    module: torch.nn.Module,
    teacher: Teacher | None,
    x: np.ndarray,
    y: np.ndarray | None,
    val_x: np.ndarray,
    val_y: np.ndarray | None,
    cfg: RecoverConfig,
    checkpoints: OutputFolder | Path,
    resume: bool = False,
    progress: bool = True,
    fingerprint: str = "",
    spec: Outputs | None = None,
    w: World | None = None,
    peers: Sequence[torch.nn.Module] | None = None,
    metric: str | None = None,
    desc: str = "recover",
    settings: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train `module` in place. The best weights by
    the validation metric are restored at the end. Ctrl-C saves a checkpoint, then raises
    KeyboardInterrupt (the CLI exits 130; nothing else is written). `fingerprint` (model_fingerprint)
    is stored in the checkpoint; --resume refuses a checkpoint of another model. Under torchrun
    (`w`), each rank trains on its DistributedSampler shard through DistributedDataParallel and
    validates on the whole held-out set (the weights are the same on every rank, so every rank
    takes the same decisions); rank 0 alone writes checkpoints.

    peers: other factorized models trained alongside by deep mutual learning (Zhang et al. 2018):
    each learns as the student does (teacher, labels, features, optimizer, schedule) and also
    toward the others' mean prediction; each keeps its own best checkpoint (best.peerK.pt), the
    checkpoint holds them all (--resume continues them), the student's metric drives --patience."""
    if cfg.lr is None:
        raise ValueError("cfg.lr is chosen before training (recovery.run picks it by the range test)")
    w = w or world()
    folder = checkpoints if isinstance(checkpoints, OutputFolder) else checkpoint_folder(checkpoints)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    shard = -(-len(x) // w.size)  # each rank's share of an epoch (DistributedSampler pads)
    steps_per_epoch = max(1, shard // cfg.batch_size)
    # --max-steps is a number of steps: epochs repeat until it is reached (a small data set is one
    # step per epoch); without it, --epochs passes over the data
    total = cfg.max_steps if cfg.max_steps else steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))

    def lr_at(step: int) -> float | None:
        if step < warm:
            return cfg.lr * (step + 1) / warm  # type: ignore[operator]  # cfg.lr is not None: checked on entry to train
        if cfg.schedule == "plateau":
            return None
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))  # type: ignore[operator]  # cfg.lr is not None: checked on entry to train

    spec = spec if spec is not None else Outputs((), {0: -1})
    metric = metric or metric_for(val_y is not None, spec)  # optimize --recover selects on output error
    use_feat = cfg.distill in ("feature", "both") and teacher is not None and teacher.features
    use_kd = cfg.distill in ("hinton", "both") and teacher is not None
    learners = []
    for k, m in enumerate([module, *(peers or [])]):
        if isinstance(m, OnnxModule):  # --recompute-segments: activation checkpointing over its graph
            m.checkpoint_segments = cfg.recompute_segments
        opt = make_optimizer(m, cfg)
        # m.proto: an OnnxModule's graph (mypy types a Module's other attributes as Tensor | Module)
        produced = {o for n in m.proto.graph.node for o in n.output} if hasattr(m, "proto") else set()  # type: ignore[union-attr]
        learners.append(
            _Learner(
                m,
                wrap(m, w),
                opt,
                grad_scaler(cfg),
                torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.3, patience=1)
                if cfg.schedule == "plateau"
                else None,
                folder.path / ("best.pt" if k == 0 else f"best.peer{k}.pt"),
                tuple(f for f in teacher.features if f in produced or k == 0)  # type: ignore[union-attr]  # use_feat: a teacher
                if use_feat
                else (),
            )
        )
    main = learners[0]
    eval_every = cfg.eval_every or min(steps_per_epoch, total)
    if w.main:
        folder.open()
    ckpt = folder.path / "last.pt"
    history, step = History(), 0
    # an earlier run's files are replaced as this run writes its own, not deleted up front: a run that
    # fails leaves them as they were (and only this run's best weights are loaded at the end)
    if resume:
        step, history = resume_checkpoint(ckpt, folder.path, learners, cfg, fingerprint, settings)
        for ln in learners:
            ln.best_saved = ln.best_file.exists()
    for ln in learners:
        if ln.best is None and len(val_x):
            # step 0 is a candidate too: a run that only makes a model worse keeps the model it started from
            ln.best = dict(evaluate(ln.module, val_x, val_y, teacher, spec, cfg.batch_size), step=0)
            if w.main:
                _save_best(folder, ln)
    start_metric = main.best[metric] if main.best is not None and main.best.get("step") == 0 else None
    stop_reason, stale = "done", 0
    # Ctrl-C or SIGTERM (a CI job cancelled) finish the step, save a checkpoint, then stop the run
    interrupted: dict[str, int | None] = {"signal": None}

    def note(signum: int, _frame: FrameType | None) -> None:
        signals.seen()
        interrupted.update(signal=signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = progress_bar(total=total, initial=step, desc=desc, unit="step", show=progress and w.main)
    feed: Iterator[tuple[np.ndarray, Any]] | None = None
    try:
        while step < total:
            pos = (step % steps_per_epoch) * cfg.batch_size
            if pos == 0 or feed is None:  # an epoch starts (or a resumed run rejoins its epoch)
                order = epoch_order(len(x), cfg.seed, step - step % steps_per_epoch, w)
                feed = _batches(x, order, pos, steps_per_epoch, cfg.batch_size, cfg.workers)
            idx, xb = next(feed)
            xb = tensors(xb, cfg.device)
            labels = torch.from_numpy(y[idx]).to(cfg.device) if y is not None else None
            with autocast(cfg):
                t_outs, t_feats = teacher(*xb) if teacher is not None else (None, {})
                runs = []
                for ln in learners:
                    ln.module.train()
                    runs.append(ln.net(*xb, capture=ln.capture) if ln.capture else (ln.net(*xb), {}))
            losses = []
            for k, (ln, (outputs, feats)) in enumerate(zip(learners, runs)):
                with autocast(cfg):
                    loss = student_loss(outputs, feats, t_outs, t_feats, labels, cfg, spec, use_kd, bool(ln.capture))
                    if len(learners) > 1:  # toward the other models' mean prediction (detached)
                        others = [
                            torch.stack([r[0][j].detach().float() for i, r in enumerate(runs) if i != k]).mean(0)
                            if outputs[j].is_floating_point()
                            else outputs[j]
                            for j in range(len(outputs))
                        ]
                        loss = loss + output_loss(outputs, others, spec, 1.0)
                losses.append(loss)
            loss = losses[0]
            if not all(_finite_everywhere(v, w) for v in losses):
                kept = (
                    f"the last good checkpoint ({ckpt}, step {checkpoint_step(ckpt, cfg.device)}) is kept"
                    if ckpt.exists()
                    else "no training checkpoint was written before it"
                )
                bad = next(v for v in losses if not torch.isfinite(v))
                who = "" if len(learners) == 1 or bad is losses[0] else " (of a peer)"
                stop_reason = f"loss became {bad.item()}{who} at step {step}: stopped; {kept}"
                break
            lr = lr_at(step)
            for ln, value in zip(learners, losses):
                ln.opt.zero_grad()
                ln.scaler.scale(value).backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                if cfg.clip:
                    ln.scaler.unscale_(ln.opt)
                    torch.nn.utils.clip_grad_norm_([p for p in ln.module.parameters() if p.requires_grad], cfg.clip)
                if lr is not None:
                    set_lr(ln.opt, lr)
                ln.scaler.step(ln.opt)
                ln.scaler.update()
            if hasattr(teacher, "update"):  # a moving-average teacher follows the student
                teacher.update(module)  # type: ignore[union-attr]  # hasattr: not None
            step += 1
            history.steps.append(step)
            history.loss.append(float(loss.detach()))
            history.lr.append(float(main.opt.param_groups[0]["lr"]))
            bar.update(1)
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}", lr=f"{history.lr[-1]:.2e}")
            if step % eval_every == 0 or step == total:
                improved = False
                for k, ln in enumerate(learners):
                    result = dict(evaluate(ln.module, val_x, val_y, teacher, spec, cfg.batch_size), step=step)
                    if k == 0:
                        history.evals.append(result)
                    if ln.plateau is not None and step >= warm:
                        ln.plateau.step(signed(result, metric))
                    if ln.best is None or ranked(result, metric) > ranked(ln.best, metric):
                        ln.best = result
                        improved |= k == 0
                        if w.main:
                            _save_best(folder, ln)
                stale = 0 if improved else stale + 1
                if w.main:
                    save_checkpoint(folder.file(ckpt.name), learners, step, history, fingerprint, settings)
                if cfg.patience is not None and stale >= cfg.patience:
                    stop_reason = f"early stop: no better {metric} in {stale} evaluations"
                    break
            if interrupted["signal"] is not None:
                break
        if interrupted["signal"] is not None:  # also when it came during the evaluation that ended the run
            if w.main:
                save_checkpoint(folder.file(ckpt.name), learners, step, history, fingerprint, settings)
            stop = KeyboardInterrupt if interrupted["signal"] == signal.SIGINT else Terminated
            raise stop(f"at step {step}; checkpoint saved to {ckpt}, continue with --resume")
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if w.main:  # only rank 0 writes the output: each model goes back to its best weights
        for ln in learners:
            if ln.best_saved:
                load_params(ln.module, load_checkpoint(ln.best_file, cfg.device), ln.best_file)
    if main.best is not None and main.best.get("step") == 0 and step > 0 and start_metric is not None:
        stop_reason += (
            f"; no evaluation beat the starting model's validation {metric} ({start_metric:.4f}): "
            "the starting weights are kept"
        )
    return TrainResult(history, stop_reason, main.best, [ln.best for ln in learners[1:]])


def _save_best(folder: OutputFolder, ln: _Learner) -> None:
    save_atomic(ln.module.state_dict(), folder.file(ln.best_file.name))
    ln.best_saved = True


def _batches(
    x: Any, order: np.ndarray, pos: int, steps_per_epoch: int, batch_size: int, workers: int
) -> Iterator[tuple[np.ndarray, Any]]:
    """(indices, inputs) of the rest of an epoch from `pos`. Arrays in memory are indexed; image
    files are decoded ahead by `workers` threads (0: when asked for).

    Threads, not DataLoader processes: a forked worker starts as a copy of this process, model,
    teacher session and all, and its pages are copied as Python touches them; recovering PP-OCR rec
    from text-line PNGs, one reached 3.7 GB and was killed. Pillow decodes and resizes without the
    GIL, and on text lines and 640x640 pages two threads kept pace with two processes."""
    chunks = [order[p : p + batch_size] for p in range(pos, steps_per_epoch * batch_size, batch_size)]
    if not isinstance(x, ImageFiles) or workers == 0:
        return ((c, x[c]) for c in chunks)
    return _prefetched(x, chunks, workers)


def _prefetched(x: ImageFiles, chunks: list[np.ndarray], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each chunk decoded by a pool of threads, at most 2 * workers batches ahead of the consumer."""
    with ThreadPoolExecutor(workers, thread_name_prefix="tensorfold-decode") as pool:
        ahead: deque[tuple[np.ndarray, Future[np.ndarray]]] = deque()
        upcoming = iter(chunks)
        for chunk in itertools.islice(upcoming, 2 * workers):
            ahead.append((chunk, pool.submit(x.__getitem__, chunk)))
        while ahead:
            chunk, decoded = ahead.popleft()
            following = next(upcoming, None)
            if following is not None:
                ahead.append((following, pool.submit(x.__getitem__, following)))
            yield chunk, decoded.result()


def _finite_everywhere(loss: torch.Tensor, w: World) -> bool:
    """The loss is finite on every rank: one rank stopping alone would leave the others waiting
    in their next gradient all-reduce."""
    finite = bool(torch.isfinite(loss))
    if not w.distributed:
        return finite
    import torch.distributed as dist

    flag = torch.tensor([0.0 if finite else 1.0], device=loss.device)
    dist.all_reduce(flag)
    return float(flag) == 0.0
