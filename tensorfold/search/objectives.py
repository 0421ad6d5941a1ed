"""What a rank-search trial is judged on: params, flops, latency, memory, error, accuracy.

`error` is the largest relative L2 error over the model's outputs against the original, on the
given inputs (or random ones). `accuracy` is top-1 on a validation split held out of the training
data after a short distilled recovery (`recover_steps`; 0 measures the factorized model as is), so
the ranks are chosen by cross-validation, never on the test split. `latency` is the median of
timed runs on a provider, or the device model's prediction with `device`. `memory` is the
predicted peak of one call in MB (weights, live activations, im2col: runtime/memory.py).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.graph.model import count_params
from tensorfold.graph.stats import model_stats
from tensorfold.graph.verify import Reference
from tensorfold.onnxrt.batching import one_call
from tensorfold.onnxrt.sessions import make_session

DIRECTIONS = {
    "params": "minimize",
    "flops": "minimize",
    "latency": "minimize",
    "memory": "minimize",
    "error": "minimize",
    "accuracy": "maximize",
}


def parse_names(
    text: str | tuple | list, allowed, what: str, context: str = "", unique: bool = True
) -> tuple[str, ...]:
    """'a,b' (or a sequence) -> names, each one of `allowed`: one-line errors for unknown, none, or
    (unique) repeated names; without `unique` a repeat is dropped."""
    names = [o.strip() for o in (text.split(",") if isinstance(text, str) else text) if o.strip()]
    bad = [o for o in names if o not in allowed]
    if bad or not names:
        raise TensorfoldError(
            f"unknown {what}(s) {', '.join(bad) or '(none given)'}{context} (choose from {', '.join(allowed)})"
        )
    if unique and len(set(names)) != len(names):
        raise TensorfoldError(f"an {what} is named twice in '{','.join(names)}'")
    return tuple(dict.fromkeys(names))


def parse_objectives(text: str | tuple | list) -> tuple[str, ...]:
    return parse_names(text, DIRECTIONS, "objective")


class Evaluator:
    """Measures a candidate model on the objectives asked, against the original it came from."""

    def __init__(
        self,
        original: onnx.ModelProto,
        input_shapes: dict,
        feeds: dict[str, np.ndarray],
        *,
        provider: str = "cpu",
        device: str | None = None,
        threads: int = 0,
        latency_runs: int = 20,
        data: str | None = None,
        recover_steps: int = 100,
        val_size: int = 2000,
        train_size: int = 20000,
        seed: int = 0,
    ):
        self.original, self.input_shapes, self.feeds = original, input_shapes, feeds
        # latency is per call of input_shapes (what the report labels), not the whole file at once
        # (a ViT's 16 images read 2164 ms as one "latency")
        self.call_feeds = one_call(original, feeds)
        self.provider, self.threads, self.latency_runs = provider, threads, latency_runs
        self.recover_steps, self.seed = recover_steps, seed
        self.names = [o.name for o in original.graph.output]
        # the original's outputs a call of the model's batch at a time (a fixed-batch model takes
        # one sample a call), as verify judges them
        self.reference = Reference(original, feeds, "the search's inputs", provider)
        from tensorfold.runtime.latency_model import latency_model

        self.latency_model = latency_model(provider, threads, device, latency_runs)
        self.data, self._split = data, None
        self._split_sizes = (val_size, train_size)

    def describe(self) -> dict:
        return {"latency": self.latency_model.label, "data": self.data, "recover_steps": self.recover_steps}

    def __call__(self, model: onnx.ModelProto, names) -> dict[str, float]:
        out = {}
        for name in names:
            out[name] = float(getattr(self, name)(model))
        return out

    def params(self, model) -> int:
        return count_params(model)

    def flops(self, model) -> int:
        return model_stats(model, self.input_shapes).flops

    def error(self, model) -> float:
        checks = self.reference.verify_session(make_session(model, self.provider, self.threads)).outputs
        errs = [c.relative_error if c.relative_error is not None else 1 - c.agreement for c in checks]
        return max(errs)

    def memory(self, model) -> float:
        from tensorfold.runtime.memory import predict_memory

        return predict_memory(model, self.input_shapes).total_bytes / 2**20

    def latency(self, model) -> float:
        return self.latency_model.ms(model, self.input_shapes, self.call_feeds)

    def accuracy(self, model) -> float:
        tx, ty, vx, vy = self.split()
        if self.recover_steps <= 0:
            from tensorfold.runtime.evaluation import evaluate_onnx

            return evaluate_onnx(model, vx, vy, threads=self.threads)
        import torch

        from tensorfold.recovery.config import RecoverConfig
        from tensorfold.recovery.distill import OnnxTeacher, Outputs, rewritten_outputs
        from tensorfold.recovery.finetune import train
        from tensorfold.recovery.onnx_torch import OnnxModule
        from tensorfold.recovery.validation import evaluate

        torch.manual_seed(self.seed)
        module = OnnxModule(model)
        teacher = OnnxTeacher(self.original, rewritten_outputs(model), self.threads)
        # the zoo-tuned rate, fixed: trials are ranked against each other, and a range test per
        # trial would cost more than the trial's own steps
        cfg = RecoverConfig(epochs=1, max_steps=self.recover_steps, seed=self.seed, threads=self.threads, lr=2e-3)
        with tempfile.TemporaryDirectory(prefix="tensorfold-trial-") as tmp:
            train(module, teacher, tx, ty, vx, vy, cfg, Path(tmp), progress=False, spec=Outputs.of(model))
        acc = evaluate(module, vx, vy, spec=Outputs.of(model))["accuracy"]
        if not math.isfinite(acc):
            raise TensorfoldError("validation accuracy is not finite")
        return acc

    def split(self):
        """Train / validation arrays from the training split of --data (loaded once)."""
        if self._split is None:
            if not self.data:
                raise TensorfoldError("the accuracy objective needs --data (fashion-mnist, a folder or an .npz)")
            from tensorfold.datasets import load_data, prepare_inputs

            shape = next(iter(self.input_shapes.values()))
            size = tuple(shape[2:4]) if len(shape) == 4 else None
            channels = shape[1] if len(shape) == 4 and shape[1] in (1, 3) else 3
            # an .npz array may be named after the model's input, as recover and optimize read it
            x, y, _ = load_data(self.data, "train", size, channels, input_name=next(iter(self.input_shapes)))
            if y is None:
                raise TensorfoldError(f"--data {self.data} has no labels; the accuracy objective needs them")
            x = prepare_inputs(x, shape, None)
            order = np.random.default_rng(self.seed).permutation(len(x))
            val_n, train_n = self._split_sizes
            val_n = min(val_n, len(x) // 5)
            val, train_idx = order[:val_n], order[val_n : val_n + train_n]
            self._split = (x[train_idx], y[train_idx], x[val], y[val])
        return self._split

    def baseline(self, names) -> dict[str, float]:
        """The original model on the same objectives (error 0 by definition)."""
        out = {}
        for name in names:
            if name == "accuracy":
                _, _, vx, vy = self.split()
                from tensorfold.runtime.evaluation import evaluate_onnx

                out[name] = evaluate_onnx(self.original, vx, vy, threads=self.threads)
            elif name == "error":
                out[name] = 0.0
            else:
                out[name] = float(getattr(self, name)(self.original))
        return out
