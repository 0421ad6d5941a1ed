"""Fine-tuning with distillation: the loop, its schedule, checkpoints, history and plot."""

from __future__ import annotations

import math
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tensorfold.datasets import ImageFiles
from tensorfold.errors import TensorfoldError, Terminated
from tensorfold.outputs import atomic_path
from tensorfold.recovery.distill import Outputs, feature_loss, output_loss
from tensorfold.recovery.distributed import World, epoch_order, world, wrap


@dataclass
class RecoverConfig:
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 2e-3
    batch_size: int = 128
    optimizer: str = "adamw"            # adamw | sgd
    weight_decay: float = 1e-4
    warmup: float = 0.05                # share of the steps
    schedule: str = "cosine"            # cosine | plateau
    clip: float = 1.0
    distill: str = "both"               # hinton | feature | both | none
    temperature: float = 4.0
    alpha: float = 0.5                  # weight of the KD term against the label loss
    feature_weight: float = 1.0
    patience: int | None = None         # evaluations without improvement before stopping
    eval_every: int | None = None       # steps; default once per epoch and at the end
    seed: int = 0
    threads: int = 0
    device: str = "cpu"                 # "cuda" trains there (the teacher then runs there too)
    precision: str = "fp32"             # fp32 | bf16 | fp16: mixed precision (torch.autocast) for the forward passes
    workers: int = 2                    # DataLoader processes decoding image files ahead of the step

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise TensorfoldError(f"--precision {self.precision}: choose from {', '.join(PRECISIONS)}")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(cfg: RecoverConfig):
    """The forward passes (student and teacher) and the losses under torch.autocast at the chosen
    precision; fp32: off. Weights, optimizer state and validation stay fp32."""
    dtype = PRECISIONS[cfg.precision]
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(cfg: RecoverConfig):
    """Loss scaling for fp16, whose gradients underflow without it; bf16 has fp32's exponent range."""
    return torch.amp.GradScaler(torch.device(cfg.device).type, enabled=cfg.precision == "fp16")


def check_torch_device(name: str) -> str:
    """The torch device a user named, if this machine has it; else one line naming what it has."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise TensorfoldError(f"--torch-device {name!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        have.append("mps")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise TensorfoldError(f"--torch-device {name}: not on this machine (it has {', '.join(have)}; this torch "
                              f"{'has no CUDA build' if torch.version.cuda is None else 'sees no such GPU'})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TensorfoldError(f"--torch-device mps: not on this machine (it has {', '.join(have)})")
    if device.type not in ("cpu", "cuda", "mps"):
        raise TensorfoldError(f"--torch-device {name}: recover trains on cpu, cuda or mps")
    return str(device)


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)      # the learning rate of each step, beside its loss

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(module, x: np.ndarray, y: np.ndarray | None, teacher=None, spec: Outputs | None = None,
             batch: int = 512) -> dict:
    """Validation. With labels: top-1 accuracy of the first output. Against a teacher: each output's
    relative L2 error pooled over the samples ("output_error", the largest over outputs: what
    `tensorfold verify` would report) and, over outputs with a class axis, the share of equal
    argmaxes ("teacher_agreement")."""
    from tensorfold.graph.verify import OutputAccumulator

    spec = spec if spec is not None else Outputs((), {0: -1})
    module.eval()
    device = next(module.parameters()).device
    correct, n, pooled = 0, 0, []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = tensors(x[i:i + batch], device)
            outs = module(*xb)
            if y is not None:
                pred = outs[0].argmax(spec.axes.get(0, -1))
                correct += int((pred.cpu().numpy() == y[i:i + batch]).sum())
            if teacher is not None:
                t_outs, _ = teacher(*xb)
                # the accumulators `tensorfold verify` pools its errors with
                pooled = pooled or [OutputAccumulator(f"output {k}", spec.axes.get(k)) for k in range(len(outs))]
                for acc, s_k, t_k in zip(pooled, outs, t_outs):
                    acc.add(t_k.float().cpu().numpy() if t_k.is_floating_point() else t_k.cpu().numpy(),
                            s_k.float().cpu().numpy() if s_k.is_floating_point() else s_k.cpu().numpy())
            n += len(xb[0])
    out = {}
    if y is not None:
        out["accuracy"] = correct / n
    checks = [acc.result() for acc in pooled]
    # plain floats: the result goes into checkpoints, which load weights_only (no numpy scalars)
    errors = [float(c.relative_error) for c in checks if c.relative_error is not None]
    if errors:
        out["output_error"] = max(errors)
    counts = sum(acc.argmax_count for acc in pooled)
    if counts:
        out["teacher_agreement"] = sum(acc.argmax_equal for acc in pooled) / counts
    return out


def metric_for(labels: bool, spec: Outputs) -> str:
    """What validation selects on: accuracy with labels; without, argmax agreement with the teacher
    for a classifier, the teacher-relative output error for any other model (lower is better)."""
    return "accuracy" if labels else "teacher_agreement" if spec.classifier else "output_error"


def signed(result: dict, metric: str) -> float:
    """The metric as a score where higher is better."""
    return -result[metric] if metric == "output_error" else result[metric]


def load_checkpoint(path: Path, device):
    """A checkpoint's tensors, numbers and strings only (weights_only=True): a planted file cannot
    run code when it is unpickled; anything else is refused with one line."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location=device)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise TensorfoldError(f"{path}: not a tensorfold checkpoint of plain tensors "
                              f"({str(exc).splitlines()[0][:200]})") from None


def model_fingerprint(model) -> str:
    """What a checkpoint must match to be loaded into this model: its trainable tensors' names and
    shapes (a checkpoint from another model is refused by name, not by a size-mismatch traceback)."""
    import hashlib

    desc = sorted((t.name, tuple(t.dims)) for t in model.graph.initializer)
    return hashlib.sha256(repr(desc).encode()).hexdigest()[:16]


def _save(obj, path: Path) -> None:
    """torch.save through a temp file and a rename: a full disk or a kill never leaves a torn file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _save_checkpoint(path: Path, learners: list, step: int, history: History, fingerprint: str) -> None:
    """The student's weights, optimizer and best at the top level; each peer's beside them."""
    main = learners[0]
    _save({"params": main.module.state_dict(), "optimizer": main.opt.state_dict(), "step": step,
           "history": history.as_dict(), "best": main.best, "model": fingerprint,
           "peers": [{"params": ln.module.state_dict(), "optimizer": ln.opt.state_dict(), "best": ln.best}
                     for ln in learners[1:]]}, path)


def _resume(ckpt: Path, checkpoint_dir: Path, learners: list, cfg: RecoverConfig, fingerprint: str):
    """(step, history) of the checkpoint, every model's weights, optimizer and best loaded from it."""
    if not ckpt.exists():
        raise TensorfoldError(f"--resume: no checkpoint at {ckpt}")
    state = load_checkpoint(ckpt, cfg.device)
    if not isinstance(state, dict) or not {"params", "optimizer", "step", "history", "best"} <= set(state):
        raise TensorfoldError(f"{ckpt}: not a tensorfold recovery checkpoint")
    if fingerprint and state.get("model", fingerprint) != fingerprint:
        raise TensorfoldError(f"{ckpt} was written for another model; remove {checkpoint_dir} or recover "
                              "into another output")
    peers = state.get("peers") or []
    if len(peers) != len(learners) - 1:
        raise TensorfoldError(f"{ckpt} holds {len(peers)} peer(s), this run has {len(learners) - 1}: resume with "
                              "the same --peer models")
    parts = [{"params": state["params"], "optimizer": state["optimizer"], "best": state["best"]}, *peers]
    for ln, part in zip(learners, parts):
        _load_params(ln.module, part["params"], ckpt)
        try:
            ln.opt.load_state_dict(part["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TensorfoldError(f"{ckpt}: optimizer state does not fit ({str(exc).splitlines()[0][:160]})") from None
        ln.best = part["best"]
    try:
        history = History(**state["history"])
    except (KeyError, TypeError) as exc:
        raise TensorfoldError(f"{ckpt}: history does not fit ({str(exc).splitlines()[0][:160]})") from None
    return int(state["step"]), history


def _load_params(module, params, path: Path) -> None:
    try:
        module.load_state_dict(params)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise TensorfoldError(f"{path} holds weights of another model ({str(exc).splitlines()[0][:160]}); "
                              "remove it or recover into another output") from None


@dataclass
class _Learner:
    """One model being trained: the student, or a peer of deep mutual learning."""

    module: torch.nn.Module
    net: torch.nn.Module                 # the module, or DDP around it
    opt: torch.optim.Optimizer
    scaler: object
    plateau: object
    best_file: Path
    capture: tuple = ()
    best: dict | None = None


def _optimizer(module, cfg: RecoverConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(module, teacher, x: np.ndarray, y: np.ndarray | None, val_x: np.ndarray, val_y: np.ndarray | None,
          cfg: RecoverConfig, checkpoint_dir: Path, resume: bool = False, progress: bool = True,
          fingerprint: str = "", spec: Outputs | None = None, w: World | None = None, peers: list | None = None):
    """Train `module` in place. Returns (history, stop reason, best evaluation). The best weights by
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
    w = w or world()
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    shard = -(-len(x) // w.size)                 # each rank's share of an epoch (DistributedSampler pads)
    steps_per_epoch = max(1, shard // cfg.batch_size)
    # --max-steps is a number of steps: epochs repeat until it is reached (a small data set is one
    # step per epoch); without it, --epochs passes over the data
    total = cfg.max_steps if cfg.max_steps else steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))

    def lr_at(step):
        if step < warm:
            return cfg.lr * (step + 1) / warm
        if cfg.schedule == "plateau":
            return None
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    spec = spec if spec is not None else Outputs((), {0: -1})
    metric = metric_for(val_y is not None, spec)
    use_feat = cfg.distill in ("feature", "both") and teacher is not None and teacher.features
    use_kd = cfg.distill in ("hinton", "both") and teacher is not None
    learners = []
    for k, m in enumerate([module, *(peers or [])]):
        opt = _optimizer(m, cfg)
        produced = {o for n in m.proto.graph.node for o in n.output} if hasattr(m, "proto") else set()
        learners.append(_Learner(
            m, wrap(m, w), opt, grad_scaler(cfg),
            torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.3, patience=1)
            if cfg.schedule == "plateau" else None,
            checkpoint_dir / ("best.pt" if k == 0 else f"best.peer{k}.pt"),
            tuple(f for f in teacher.features if f in produced or k == 0) if use_feat else ()))
    main = learners[0]
    eval_every = cfg.eval_every or min(steps_per_epoch, total)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_dir / "last.pt"
    history, step = History(), 0
    if resume:
        step, history = _resume(ckpt, checkpoint_dir, learners, cfg, fingerprint)
    elif w.main:
        for stale in (ckpt, *(ln.best_file for ln in learners)):   # an earlier run's, maybe of another model
            stale.unlink(missing_ok=True)
    for ln in learners:
        if ln.best is None and len(val_x):
            # step 0 is a candidate too: a run that only makes a model worse keeps the model it started from
            ln.best = dict(evaluate(ln.module, val_x, val_y, teacher, spec, cfg.batch_size), step=0)
            if w.main:
                _save(ln.module.state_dict(), ln.best_file)
    start_metric = main.best[metric] if main.best is not None and main.best.get("step") == 0 else None
    stop_reason, stale = "done", 0
    # Ctrl-C or SIGTERM (a CI job cancelled) finish the step, save a checkpoint, then stop the run
    interrupted = {"signal": None}
    previous = {sig: signal.signal(sig, lambda signum, _: interrupted.update(signal=signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=total, initial=step, desc="recover", unit="step", disable=not (progress and w.main))
    feed = None
    try:
        while step < total:
            pos = (step % steps_per_epoch) * cfg.batch_size
            if pos == 0 or feed is None:     # an epoch starts (or a resumed run rejoins its epoch)
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
                    loss = torch.zeros((), device=outputs[0].device)
                    if use_kd:     # KD on class scores, relative error on every other output
                        loss = loss + cfg.alpha * output_loss(outputs, t_outs, spec, cfg.temperature)
                    if labels is not None:
                        ce = F.cross_entropy(outputs[0].float(), labels)
                        loss = loss + ((1 - cfg.alpha) if use_kd else 1.0) * ce
                    elif not use_kd and teacher is not None:
                        loss = loss + output_loss(outputs, t_outs, spec, cfg.temperature, kd=False)
                    if ln.capture:
                        loss = loss + cfg.feature_weight * feature_loss(feats, t_feats)
                    if len(learners) > 1:    # toward the other models' mean prediction (detached)
                        others = [torch.stack([r[0][j].detach().float() for i, r in enumerate(runs) if i != k]).mean(0)
                                  if outputs[j].is_floating_point() else outputs[j] for j in range(len(outputs))]
                        loss = loss + output_loss(outputs, others, spec, 1.0)
                losses.append(loss)
            loss = losses[0]
            if not all(_finite_everywhere(v, w) for v in losses):
                kept = (f"the last good checkpoint ({ckpt}, step {_checkpoint_step(ckpt, cfg.device)}) is kept"
                        if ckpt.exists() else "no training checkpoint was written before it")
                bad = next(v for v in losses if not torch.isfinite(v))
                who = "" if len(learners) == 1 or bad is losses[0] else " (of a peer)"
                stop_reason = f"loss became {bad.item()}{who} at step {step}: stopped; {kept}"
                break
            lr = lr_at(step)
            for ln, value in zip(learners, losses):
                ln.opt.zero_grad()
                ln.scaler.scale(value).backward()
                if cfg.clip:
                    ln.scaler.unscale_(ln.opt)
                    torch.nn.utils.clip_grad_norm_([p for p in ln.module.parameters() if p.requires_grad], cfg.clip)
                if lr is not None:
                    for g in ln.opt.param_groups:
                        g["lr"] = lr
                ln.scaler.step(ln.opt)
                ln.scaler.update()
            if hasattr(teacher, "update"):      # a moving-average teacher follows the student
                teacher.update(module)
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
                    if ln.best is None or signed(result, metric) > signed(ln.best, metric):
                        ln.best = result
                        improved |= k == 0
                        if w.main:
                            _save(ln.module.state_dict(), ln.best_file)
                stale = 0 if improved else stale + 1
                if w.main:
                    _save_checkpoint(ckpt, learners, step, history, fingerprint)
                if cfg.patience is not None and stale >= cfg.patience:
                    stop_reason = f"early stop: no better {metric} in {stale} evaluations"
                    break
            if interrupted["signal"] is not None:
                break
        if interrupted["signal"] is not None:     # also when it came during the evaluation that ended the run
            if w.main:
                _save_checkpoint(ckpt, learners, step, history, fingerprint)
            stop = KeyboardInterrupt if interrupted["signal"] == signal.SIGINT else Terminated
            raise stop(f"at step {step}; checkpoint saved to {ckpt}, continue with --resume")
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if w.main:      # only rank 0 writes the output: each model goes back to its best weights
        for ln in learners:
            if ln.best_file.exists():
                _load_params(ln.module, load_checkpoint(ln.best_file, cfg.device), ln.best_file)
    if main.best is not None and main.best.get("step") == 0 and step > 0 and start_metric is not None:
        stop_reason += (f"; no evaluation beat the starting model's validation {metric} ({start_metric:.4f}): "
                        "the starting weights are kept")
    if peers:
        return history, stop_reason, main.best, [ln.best for ln in learners[1:]]
    return history, stop_reason, main.best


class _Chunks(torch.utils.data.Dataset):
    """Batch k of an epoch, decoded by whichever DataLoader worker takes it."""

    def __init__(self, x, chunks):
        self.x, self.chunks = x, chunks

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, k):
        return self.x[self.chunks[k]]


def _batches(x, order, pos: int, steps_per_epoch: int, batch_size: int, workers: int):
    """(indices, inputs) of the rest of an epoch from `pos`. Arrays in memory are indexed; image
    files are decoded ahead by `workers` DataLoader processes (0: in this process)."""
    chunks = [order[p:p + batch_size] for p in range(pos, steps_per_epoch * batch_size, batch_size)]
    if not isinstance(x, ImageFiles) or workers == 0:
        return ((c, x[c]) for c in chunks)
    loader = torch.utils.data.DataLoader(_Chunks(x, chunks), batch_size=None, num_workers=workers,
                                         prefetch_factor=2)
    return zip(chunks, loader)


def tensors(batch, device) -> tuple[torch.Tensor, ...]:
    """A batch (one array or tensor, or one per model input) as a tuple of tensors on `device`."""
    parts = batch if isinstance(batch, (tuple, list)) else (batch,)
    return tuple((p if torch.is_tensor(p) else torch.from_numpy(np.asarray(p))).to(device) for p in parts)


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


def _checkpoint_step(path: Path, device) -> int | None:
    state = load_checkpoint(path, device)
    return state.get("step") if isinstance(state, dict) else None


def plot_history(history: History, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(history.steps, history.loss, lw=0.8)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("training loss")
    ax[0].set_yscale("log")
    for key in ("accuracy", "teacher_agreement", "output_error"):
        pts = [(e["step"], e[key]) for e in history.evals if key in e]
        if pts:
            ax[1].plot(*zip(*pts), marker="o", label=key.replace("_", " "))
    ax[1].set_xlabel("step")
    if history.evals:
        ax[1].legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
