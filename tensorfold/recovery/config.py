"""What a recovery run is configured with, and the torch device and precision it runs at."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensorfold.errors import TensorfoldError, check_field_types
from tensorfold.limits import check_count, check_seed
from tensorfold.recovery.trainable import check_train

# RecoverConfig's numeric fields: checked by type for callers of the Python API
_NUMBERS = (
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "weight_decay",
    "warmup",
    "clip",
    "temperature",
    "alpha",
    "feature_weight",
    "patience",
    "eval_every",
    "seed",
    "threads",
    "workers",
    "recompute_segments",
)


@dataclass
class RecoverConfig:
    epochs: int = 1
    max_steps: int | None = None
    lr: float | None = None  # None: the LR range test picks it (lr_finder), SHORT_RUN_LR for a short run
    batch_size: int = 128
    # recover(): batch_size is the most, lowered where the activations one step keeps would pass
    # recovery/memory's budget; False (the CLI's --batch-size) trains at batch_size as given
    batch_fits_memory: bool = True
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 1e-4
    warmup: float = 0.05  # share of the steps
    schedule: str = "cosine"  # cosine | plateau
    clip: float = 1.0
    distill: str = "both"  # hinton | feature | both | none
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the KD term against the label loss
    feature_weight: float = 1.0
    patience: int | None = None  # evaluations without improvement before stopping
    eval_every: int | None = None  # steps; default once per epoch and at the end
    seed: int = 0
    threads: int = 0
    device: str = "cpu"  # "cuda" trains there (the teacher then runs there too)
    precision: str = "fp32"  # fp32 | bf16 | fp16: mixed precision (torch.autocast) for the forward passes
    workers: int = 2  # threads decoding image files ahead of the step (finetune._batches)
    # > 1: activation checkpointing over this many segments of the graph (OnnxModule): about one
    # more forward per step for a fraction of the training step's memory
    recompute_segments: int = 0
    # which weights train: "chains", those of the factor chains tensorfold wrote (every weight where
    # the model holds none), or "all" (recovery/trainable.py says why the chains)
    train: str = "chains"

    def __post_init__(self) -> None:
        check_field_types(self, _NUMBERS)
        if (
            self.epochs < 0
            or (self.max_steps is not None and self.max_steps < 1)
            or self.batch_size < 1
            or (self.lr is not None and not self.lr > 0)
        ):
            raise TensorfoldError("--epochs >= 0, --max-steps >= 1, --batch-size >= 1 and --lr > 0 are required")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise TensorfoldError("--alpha must be in [0, 1] and --temperature > 0")
        if self.precision not in PRECISIONS:
            raise TensorfoldError(f"--precision {self.precision}: choose from {', '.join(PRECISIONS)}")
        if self.device != "cpu":  # the CLI checks it too; a Python caller's "cuda" on a CPU-only torch
            self.device = check_torch_device(self.device)
        check_count(self.threads, "--threads")
        check_count(self.workers, "--workers")
        if self.recompute_segments < 0:
            raise TensorfoldError(f"--recompute-segments must be >= 0 (got {self.recompute_segments})")
        check_seed(self.seed)
        check_train(self.train)


def parse_teacher_weights(text: str | None) -> list[float] | None:
    """--teacher-weights "0.7,0.3" (None: equal weights)."""
    if not text:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise TensorfoldError(f"--teacher-weights '{text}': expected numbers like 0.7,0.3") from None


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(cfg: RecoverConfig) -> torch.autocast:
    """The forward passes (student and teacher) and the losses under torch.autocast at the chosen
    precision; fp32: off. Weights, optimizer state and validation stay fp32."""
    dtype = PRECISIONS[cfg.precision]
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(cfg: RecoverConfig) -> torch.amp.GradScaler:
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
        raise TensorfoldError(
            f"--torch-device {name}: not on this machine (it has {', '.join(have)}; this torch "
            f"{'has no CUDA build' if torch.version.cuda is None else 'sees no such GPU'})"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TensorfoldError(f"--torch-device mps: not on this machine (it has {', '.join(have)})")
    if device.type not in ("cpu", "cuda", "mps"):
        raise TensorfoldError(f"--torch-device {name}: recover trains on cpu, cuda or mps")
    return str(device)
