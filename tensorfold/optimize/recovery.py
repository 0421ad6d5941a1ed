"""`optimize --recover STEPS`: each candidate factorization fine-tuned before it is judged.

Label-free distillation from the input model (its outputs, and each factor chain's output toward
the original layer's) on the calibration fit share, plus --recover-data when given; the held-out
share is never trained on, nor used to pick the best step (a fifth of the training inputs is).
Without --lr the first candidate trains at two rates or more, each for the whole run, and keeps
the best (recovery/lr_finder.rate_by_runs); every later candidate trains at that rate.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tensorfold.calibration.data import Samples, load_samples
from tensorfold.datasets import InputArrays, samples_subset
from tensorfold.errors import TensorfoldError
from tensorfold.log import warn
from tensorfold.optimize.checkpoints import SearchCheckpoints, candidate_key
from tensorfold.outputs import OutputFolder
from tensorfold.recovery.checkpoints import model_fingerprint
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.distill import GraphTeacher, OnnxTeacher, Outputs, rewritten_outputs
from tensorfold.recovery.distributed import from_rank0, world
from tensorfold.recovery.finetune import TrainResult, train
from tensorfold.recovery.lr_finder import rank0_probe, rate_by_runs
from tensorfold.recovery.memory import BatchChoice, choose_batch, recompute_to_fit, trial_run
from tensorfold.recovery.onnx_torch import NotTrainable, OnnxModule
from tensorfold.recovery.trainable import TrainedWeights, describe_runs, train_only
from tensorfold.recovery.validation import tensors


@dataclass
class Recovered:
    """One candidate after recovery (the candidate itself when training made it no better)."""

    model: onnx.ModelProto
    steps: int
    seconds: float
    stop: str
    resumed: bool = False  # recovered by the interrupted search this one resumes (its checkpoints)
    kept_start: bool = False  # training made it no better on validation: the candidate's own weights
    recomputed: int = 0  # factor chains recomputed in the backward pass to keep to the batch's memory

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {"steps": self.steps, "seconds": round(self.seconds, 2), "stop": self.stop}
        if self.resumed:
            info["resumed"] = True
        if self.kept_start:
            info["kept_start"] = True
        if self.recomputed:
            info["recomputed_chains"] = self.recomputed
        return info


DEFAULT_BATCH = 16  # --recover's batch, where one step's activations fit (recovery/memory.py)


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
        batch_size: int | None = None,
        recompute_segments: int = 0,
        train: str = "chains",
        seed: int = 0,
        threads: int = 0,
        device: str = "cpu",
        progress: bool = True,
        checkpoints: Path | None = None,
        resume: bool = False,
    ):
        self.teacher = teacher
        arrays = dict(fit.arrays)
        if extra is not None:
            more = load_samples(extra, teacher, option="--recover-data", shapes=shapes, normalize=normalize)
            arrays = {k: np.concatenate([v, more.arrays[k]]) for k, v in arrays.items()}
        names = list(arrays)
        self.x: Any = arrays[names[0]] if len(names) == 1 else InputArrays(names, [arrays[n] for n in names])
        # measured on the input model: its candidates run the same layers, with smaller chains
        self.batch: BatchChoice = choose_batch(batch_size, DEFAULT_BATCH, check_trainable(teacher, self.x))
        self.cfg = RecoverConfig(
            max_steps=steps,
            batch_size=self.batch.size,
            lr=lr,
            seed=seed,
            threads=threads,
            device=device,
            workers=0,
            recompute_segments=recompute_segments,
            train=train,
        )
        self.trained: list[TrainedWeights] = []  # each candidate trained here, for the report
        self.lr_from = "--lr" if lr is not None else ""
        self.progress = progress
        self.source = fit.source + (f" + {extra}" if extra else "")
        self.w = world()
        if self.batch.lowered and self.w.main:  # before minutes of training, not only in the report
            warn(f"--recover: {self.batch.describe()}")
        self.checkpoints: SearchCheckpoints | None = None
        self.resumed = 0  # candidates taken from an interrupted run's checkpoints
        self.recomputing = 0  # candidates that recomputed factor chains (recompute_to_fit)
        if checkpoints is not None:
            settings = {
                "model": candidate_key(teacher),
                "data": f"{len(self.x)} inputs ({self.source})",
                "steps": steps,
                "batch_size": self.batch.size,
                "seed": seed,
                "lr": lr,
                "train": train,
            }
            self.checkpoints = SearchCheckpoints(checkpoints, resume, settings)
            state = self.checkpoints.start()
            if lr is None and isinstance(state.get("lr"), float):  # the interrupted run's choice
                self.cfg.lr, self.lr_from = state["lr"], f"{state.get('lr_from', 'chosen')} (resumed)"
            self.checkpoints.record(lr=self.cfg.lr, lr_from=self.lr_from)

    @property
    def describe(self) -> dict[str, Any]:
        return {
            "steps": self.cfg.max_steps,
            "batch_size": self.cfg.batch_size,
            "batch": self.batch.describe(),
            "lr": self.cfg.lr,
            "lr_from": self.lr_from,
            "data": f"{len(self.x)} inputs ({self.source})",
            "device": self.cfg.device,
            **({"recompute_segments": self.cfg.recompute_segments} if self.cfg.recompute_segments else {}),
            **({"trained": describe_runs(self.trained)} if self.trained else {}),
            **({"resumed_candidates": self.resumed} if self.resumed else {}),
            **({"recomputed_candidates": self.recomputing} if self.recomputing else {}),
        }

    def __call__(self, student: onnx.ModelProto, label: str = "recover") -> Recovered:
        key = candidate_key(student) if self.checkpoints is not None else ""
        if self.checkpoints is not None and (done := self.checkpoints.done(key)) is not None:
            info = done.info
            self.resumed += done.resumed  # not a candidate this run met before (another search's ratio)
            steps, seconds, stop = int(info["steps"]), float(info["seconds"]), str(info["stop"])
            return Recovered(done.model, steps, seconds, stop, resumed=done.resumed)
        with tempfile.TemporaryDirectory(prefix="tensorfold-recover-") as tmp:
            folder, resume = (
                self.checkpoints.training(key) if self.checkpoints is not None else (Path(tmp) / "ckpt", False)
            )
            if self.w.distributed:  # the workers train it with this process (serve)
                from_rank0(
                    (
                        "train",
                        student.SerializeToString(),
                        str(folder.path if isinstance(folder, OutputFolder) else folder),
                        resume,
                        self.cfg.lr,
                    )
                )
            recovered = self._train(student, folder, resume, label, key)
        if self.checkpoints is not None:
            self.checkpoints.save(key, recovered.model, recovered.as_dict())
        return recovered

    def serve(self) -> None:
        """A torchrun worker (rank > 0): trains each candidate rank 0 sends, in step with it, until
        rank 0's search ends (`release`). It builds, checks and writes nothing itself."""
        while True:
            message = from_rank0(None)
            if message[0] != "train":
                return
            _, data, folder, resume, lr = message
            if lr is not None:  # chosen on rank 0 (or read from its checkpoints)
                self.cfg.lr = lr
            self._train(onnx.load_from_string(data), Path(folder), resume, "recover")

    def release(self) -> None:
        """Rank 0, when its search ends (done or failed): the workers stop serving."""
        if self.w.distributed and self.w.main:
            from_rank0(("stop",))

    def _rate_folder(self, folder: OutputFolder | Path, key: str, rate: float) -> tuple[OutputFolder | Path, bool]:
        """The checkpoint folder of the first candidate's run at `rate` (beside the candidate's own:
        an interrupted search replays the finished runs from theirs and continues the one it
        stopped in), and whether it holds a checkpoint to resume."""
        if isinstance(folder, OutputFolder):  # rank 0 with the search's checkpoints
            assert self.checkpoints is not None
            return self.checkpoints.training(f"{key}-lr{rate:g}")
        # a worker (rank 0's path: its last.pt is there only when rank 0 resumes it) or a temporary folder
        path = folder.with_name(f"{folder.name}-lr{rate:g}")
        return path, (path / "last.pt").is_file()

    def _train(
        self, student: onnx.ModelProto, folder: OutputFolder | Path, resume: bool, label: str, key: str = ""
    ) -> Recovered:
        start = time.perf_counter()
        module = OnnxModule(student).to(self.cfg.device)
        self.trained.append(train_only(module, self.cfg.train))
        # the batch fits the input model's activations; chains that save more are recomputed instead
        two = tensors(samples_subset(self.x, np.arange(min(2, len(self.x))))[:], self.cfg.device)
        recomputed = len(recompute_to_fit(module, two, self.batch.per_sample))
        self.recomputing += bool(recomputed)
        features = rewritten_outputs(student)
        teacher = (
            OnnxTeacher(self.teacher, features, self.cfg.threads)
            if self.cfg.device == "cpu"
            else GraphTeacher(self.teacher, features, self.cfg.device)
        )
        spec = Outputs.of(student, labelled=False)  # label-free: the graph alone says what is a class score
        rng = np.random.default_rng(self.cfg.seed)
        order = rng.permutation(len(self.x))
        val_n = max(1, len(self.x) // 5) if len(self.x) > 1 else 0
        val_idx, train_idx = (order[:val_n], order[val_n:]) if val_n else (order, order)
        tx, vx = samples_subset(self.x, train_idx), samples_subset(self.x, val_idx)

        def run(rate: float, where: OutputFolder | Path, again: bool) -> TrainResult:
            return train(
                module,
                teacher,
                tx,
                None,
                vx,
                None,
                replace(self.cfg, lr=rate),
                where,
                resume=again,
                progress=self.progress and self.w.main,
                fingerprint=model_fingerprint(student),
                spec=spec,
                metric="output_error",  # what the bound judges, not argmax agreement
                desc=label if self.lr_from else f"{label} at lr {rate:g}",
                w=self.w,
            )

        if self.cfg.lr is None:  # once, on the first candidate: its best run is its recovery, and
            # every later candidate trains at that run's rate
            captured = tuple(teacher.features) if self.cfg.distill in ("feature", "both") else ()
            probe = rank0_probe(module, teacher, tx, None, self.cfg, spec, self.w, captured)
            choice, result = rate_by_runs(
                module, lambda rate: run(rate, *self._rate_folder(folder, key, rate)), probe=probe
            )
            self.cfg.lr, self.lr_from = choice.lr, choice.how
            if self.w.distributed:  # the same scores on every rank; rank 0's record is the one kept
                self.cfg.lr, self.lr_from = from_rank0((self.cfg.lr, self.lr_from))
            if self.checkpoints is not None:
                self.checkpoints.record(lr=self.cfg.lr, lr_from=self.lr_from)
        else:
            result = run(self.cfg.lr, folder, resume)
        steps = result.history.steps[-1] if result.history.steps else 0
        seconds = time.perf_counter() - start
        if result.stop.startswith("loss became") or (result.best or {}).get("step") == 0:
            return Recovered(student, steps, seconds, result.stop, kept_start=True, recomputed=recomputed)
        return Recovered(module.write_back(), steps, seconds, result.stop, recomputed=recomputed)


def check_trainable(model: onnx.ModelProto, x: Any) -> int:
    """The trainer runs the model on two samples, or one error line names the node it cannot run;
    before any factorization (the candidates run the same ops, and more of the same convs). Returns
    the bytes autograd saved for backward per sample (what the batch is chosen by)."""
    try:
        return trial_run(model, tensors(samples_subset(x, np.arange(min(2, len(x))))[:], "cpu"))[2]
    except NotTrainable as exc:
        raise TensorfoldError(f"--recover: the model cannot be trained here: {exc}") from None
