"""`optimize --recover STEPS`: each candidate factorization fine-tuned before it is judged.

Label-free distillation from the input model (its outputs, and each factor chain's output toward
the original layer's) on the calibration fit share, plus --recover-data when given; the held-out
share is never trained on, nor used to pick the best step (a fifth of the training inputs is).
The learning rate comes from one LR range test on the first candidate (recovery/lr_finder.py)
unless --lr is given, and every later candidate reuses it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tensorfold.calibration.data import Samples, load_samples
from tensorfold.datasets import InputArrays, samples_subset
from tensorfold.errors import TensorfoldError
from tensorfold.recovery.checkpoints import model_fingerprint
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.distill import GraphTeacher, OnnxTeacher, Outputs, rewritten_outputs
from tensorfold.recovery.distributed import world
from tensorfold.recovery.finetune import train
from tensorfold.recovery.lr_finder import choose_lr
from tensorfold.recovery.onnx_torch import NodeFailed, OnnxModule
from tensorfold.recovery.validation import tensors


@dataclass
class Recovered:
    """One candidate after recovery (the candidate itself when training made it no better)."""

    model: onnx.ModelProto
    steps: int
    seconds: float
    stop: str

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": round(self.seconds, 2), "stop": self.stop}


class Recoverer:
    """Fine-tunes candidates of one optimize run: same teacher, same training inputs, one rate."""

    def __init__(
        self,
        teacher: onnx.ModelProto,
        fit: Samples,
        steps: int,
        *,
        extra: str | None = None,
        normalize: Any = None,
        shapes: dict[str, list[int]] | None = None,
        lr: float | None = None,
        batch_size: int = 16,
        seed: int = 0,
        threads: int = 0,
        device: str = "cpu",
        progress: bool = True,
    ):
        self.teacher = teacher
        arrays = dict(fit.arrays)
        if extra is not None:
            more = load_samples(extra, teacher, option="--recover-data", shapes=shapes, normalize=normalize)
            arrays = {k: np.concatenate([v, more.arrays[k]]) for k, v in arrays.items()}
        names = list(arrays)
        self.x: Any = arrays[names[0]] if len(names) == 1 else InputArrays(names, [arrays[n] for n in names])
        self.cfg = RecoverConfig(
            max_steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads, device=device, workers=0
        )
        self.lr_from = "--lr" if lr is not None else ""
        self.progress = progress
        self.source = fit.source + (f" + {extra}" if extra else "")
        check_trainable(teacher, self.x)

    @property
    def describe(self) -> dict[str, Any]:
        return {
            "steps": self.cfg.max_steps,
            "batch_size": self.cfg.batch_size,
            "lr": self.cfg.lr,
            "lr_from": self.lr_from,
            "data": f"{len(self.x)} inputs ({self.source})",
            "device": self.cfg.device,
        }

    def __call__(self, student: onnx.ModelProto) -> Recovered:
        start = time.perf_counter()
        module = OnnxModule(student).to(self.cfg.device)
        features = rewritten_outputs(student)
        teacher = (
            OnnxTeacher(self.teacher, features, self.cfg.threads)
            if self.cfg.device == "cpu"
            else GraphTeacher(self.teacher, features, self.cfg.device)
        )
        spec = Outputs.of(student)
        rng = np.random.default_rng(self.cfg.seed)
        order = rng.permutation(len(self.x))
        val_n = max(1, len(self.x) // 5) if len(self.x) > 1 else 0
        val_idx, train_idx = (order[:val_n], order[val_n:]) if val_n else (order, order)
        tx, vx = samples_subset(self.x, train_idx), samples_subset(self.x, val_idx)
        if self.cfg.lr is None:  # once, on the first candidate: later ones reuse the rate
            self.cfg, self.lr_from = choose_lr(module, teacher, tx, None, self.cfg, spec, world())
        with tempfile.TemporaryDirectory(prefix="tensorfold-recover-") as tmp:
            result = train(
                module,
                teacher,
                tx,
                None,
                vx,
                None,
                self.cfg,
                Path(tmp) / "ckpt",
                progress=self.progress,
                fingerprint=model_fingerprint(student),
                spec=spec,
                metric="output_error",  # what the bound judges, not argmax agreement
            )
        steps = result.history.steps[-1] if result.history.steps else 0
        if result.stop.startswith("loss became") or (result.best or {}).get("step") == 0:
            return Recovered(student, steps, time.perf_counter() - start, result.stop)
        return Recovered(module.write_back(), steps, time.perf_counter() - start, result.stop)


def check_trainable(model: onnx.ModelProto, x: Any) -> None:
    """The trainer runs the model on two samples, or one error line names the node it cannot run;
    before any factorization (the candidates run the same ops, and more of the same convs)."""
    try:
        OnnxModule(model)(*tensors(samples_subset(x, np.arange(min(2, len(x))))[:], "cpu"))
    except NodeFailed as exc:
        raise TensorfoldError(f"--recover: the model cannot be trained here: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - building the module failed
        raise TensorfoldError(
            f"--recover: the model cannot be trained here: {str(exc).splitlines()[0][:200]}"
        ) from None
