"""Every option of `optimize`, checked once (the CLI and Python callers build the same thing)."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tensorfold.calibration.data import DEFAULT_HOLDOUT
from tensorfold.calibration.deploy import check_objective
from tensorfold.errors import TensorfoldError, check_field_types
from tensorfold.graph.verify import parse_class_outputs
from tensorfold.onnxrt.inputs import parse_shapes
from tensorfold.passes import METHODS, RankSpec
from tensorfold.quantize.formats import format_for

# --calibration without a rank option: the most compressed model within this held-out output error
DEFAULT_OUTPUT_ERROR = 0.05
# a run without --calibration whose verified output error is above this says so and names the fix
OUTPUT_ERROR_WARNING = 0.05


# the options that take numbers: checked by type, for callers of the Python API
_NUMBERS = (
    "energy",
    "ratio",
    "rank",
    "seed",
    "threads",
    "max_error",
    "target_latency",
    "speedup",
    "holdout",
    "max_output_error",
    "recover",
    "lr",
    "batch_size",
    "recompute_segments",
)


@dataclass(frozen=True)
class OptimizeOptions:
    """Every option of `optimize`, checked once here (the CLI and Python callers build the same thing).

    method "none": no factorization (with int8=True: int8 alone, for comparison).

    hardware_aware: time each candidate chain on `provider` (or predict it for `device`), rewrite a
    layer only where its chain is faster, and check the whole model is faster than the input;
    where it is not, layers go back to the input's form (see planning/hardware_aware.py). Implied
    by max_error, target_latency and speedup.

    config: a rank configuration (YAML, written by `tensorfold search ranks`) naming the method and
    ranks of each layer; it replaces method and the rank options.

    calibration: real samples (an .npz with one array per input, or a folder of images scaled to
    [0, 1], `normalize` = "MEAN,STD"). Factors and rank curves are fitted to each layer's output on
    them (decompose/data_aware.py); a seeded `holdout` share is kept out of the fit and the report's
    verification runs on it (on `inputs` instead when given: the bound search selects on the held-out
    share, so only `inputs` are independent of every choice).
    max_output_error: the most compressed model whose held-out relative output error (and argmax
    disagreement on class axes) stays within this bound; with calibration and no rank option it
    defaults to DEFAULT_OUTPUT_ERROR. int8: onnxruntime int8 quantization in the format that is fast
    on `provider`, calibrated on the same samples, with the nodes that cost the most held-out error
    left in float; with a bound (given, or the default) the bound holds for the model as written and
    the candidates (input, factorized, int8 alone, factorized + int8) are compared by `objective`:
    "latency" (the default with int8: the fastest, measured on `provider`) or "size" (the smallest
    file); the input is kept when no candidate beats it. With a rank option instead of a bound, int8
    may add at most DEFAULT_OUTPUT_ERROR to the factorized model's error. class_outputs: outputs
    that hold class scores ("NAME" or "NAME:AXIS"), judged by argmax agreement besides their error
    (the graph marks them itself with a Softmax or an ArgMax). sensitivity: with calibration and a global budget, weigh each
    layer's error curve by how much the model's output moves when that layer alone is compressed
    (calibration/sensitivity.py; one model run per layer on a few samples)."""

    method: str = "auto"
    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    evbmf: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    force: bool = False
    shapes: tuple[str, ...] | dict[str, list[int]] = ()
    inputs: str | os.PathLike[str] | None = None
    verify: bool = True
    progress: bool = True
    seed: int = 0
    hardware_aware: bool = False
    provider: str = "cpu"
    device: str | None = None
    threads: int = 0
    max_error: float | None = None
    target_latency: float | None = None
    speedup: float | None = None
    config: str | os.PathLike[str] | None = None
    calibration: str | os.PathLike[str] | None = None
    normalize: tuple[list[float], list[float]] | str | None = None
    holdout: float = DEFAULT_HOLDOUT
    max_output_error: float | None = None
    int8: bool = False
    sensitivity: bool = True
    objective: str | None = None
    class_outputs: tuple[str, ...] | dict[str, int | None] = ()
    # recovery inside optimize: each candidate factorization is fine-tuned for `recover` steps by
    # label-free distillation from the input model on the calibration fit share (and recover_data),
    # and judged on the held-out share once recovered
    recover: int | None = None
    recover_data: str | os.PathLike[str] | None = None
    lr: float | None = None  # None: whole runs at several rates on the first candidate pick it (lr_finder.rate_by_runs)
    batch_size: int | None = None  # None: 16, lowered where a step's activations would pass recovery/memory's budget
    recompute_segments: int = 0  # --recover: activation checkpointing over this many graph segments
    train: str = "chains"  # --recover trains the factor chains' weights, or "all" (recovery/trainable.py)
    torch_device: str = "cpu"
    checkpoints: str | os.PathLike[str] | None = None  # None: OUTPUT.ckpt (no OUTPUT: a temporary folder)
    resume: bool = False  # continue the interrupted search in `checkpoints`
    # later candidates may start from the most compressed recovered one (optimize/warm_start.py),
    # where that start is closer to the input model than the cold one
    warm_start: bool = True

    def __post_init__(self) -> None:
        check_field_types(self, _NUMBERS)
        put = functools.partial(object.__setattr__, self)
        # one string is one pattern or shape, not a sequence of one-letter ones
        for name in ("include", "exclude", "shapes", "class_outputs"):
            if isinstance(getattr(self, name), str):
                put(name, (getattr(self, name),))
        put("include", tuple(self.include))
        put("exclude", tuple(self.exclude))
        put("shapes", self.shapes if isinstance(self.shapes, dict) else parse_shapes(tuple(self.shapes)))
        put(
            "hardware_aware",
            self.hardware_aware or any(v is not None for v in (self.max_error, self.target_latency, self.speedup)),
        )
        put(
            "class_outputs",
            self.class_outputs
            if isinstance(self.class_outputs, dict)
            else parse_class_outputs(tuple(self.class_outputs)),
        )
        if self.method not in (*METHODS, "none"):
            raise TensorfoldError(f"unknown method '{self.method}' (choose from {', '.join((*METHODS, 'none'))})")
        spec = self.spec  # RankSpec checks the rank options themselves
        rank_flags = [
            flag
            for flag, on in (
                ("--rank", spec.rank is not None),
                ("--energy", spec.energy is not None),
                ("--ratio", spec.ratio is not None),
                ("--evbmf", spec.evbmf),
            )
            if on
        ]
        hardware = ["--hardware-aware"] if self.hardware_aware else []
        if self.config is not None:
            given = rank_flags + (["--method"] if self.method != "auto" else []) + hardware
            if given:
                raise TensorfoldError(f"--config sets the method and ranks of every layer; drop {', '.join(given)}")
        if self.calibration is None:
            for flag, on in (("--max-output-error", self.max_output_error is not None), ("--int8", self.int8)):
                if on:
                    raise TensorfoldError(f"{flag} needs --calibration (real samples to fit and verify on)")
        if not 0 < self.holdout < 1:
            raise TensorfoldError(f"the held-out share must be in (0, 1) (got {self.holdout})")
        if self.max_output_error is not None:
            if not self.max_output_error > 0:
                raise TensorfoldError(f"--max-output-error must be > 0 (got {self.max_output_error})")
            given = (
                rank_flags
                + (["--config"] if self.config is not None else [])
                + hardware
                + (["--method none"] if self.method == "none" and not self.int8 else [])
            )
            if given:
                raise TensorfoldError(f"--max-output-error searches the global budget itself; drop {', '.join(given)}")
        if self.method == "none" and (rank_flags or self.hardware_aware or self.config is not None):
            raise TensorfoldError("--method none factorizes nothing; drop the rank and hardware-aware options")
        check_objective(self.objective)
        if self.objective is not None and not self.int8 and self.output_bound is None:
            raise TensorfoldError(
                f"--objective {self.objective} picks among models within an error bound: add --int8 "
                "or --max-output-error (both need --calibration)"
            )
        self._check_recovery()
        if self.int8 and self.deploy_objective == "latency":
            if self.device is not None:
                raise TensorfoldError(
                    "--int8 is timed on a provider: the device models (--device) predict float "
                    "kernels only; drop --device, or use --objective size"
                )
            format_for(self.provider)  # a provider without int8 kernels is refused here, before any work

    def _check_recovery(self) -> None:
        if self.recover is None:
            for flag, on in (
                ("--recover-data", self.recover_data is not None),
                ("--lr", self.lr is not None),
                ("--batch-size", self.batch_size is not None),
                ("--checkpoints", self.checkpoints is not None),
                ("--resume", self.resume),
                ("--no-warm-start", not self.warm_start),
                ("--train", self.train != "chains"),
            ):
                if on:
                    raise TensorfoldError(f"{flag} sets up --recover STEPS: add it, or drop {flag}")
            return
        if self.recover < 1:
            raise TensorfoldError(f"--recover is a number of training steps >= 1 (got {self.recover})")
        if self.calibration is None:
            raise TensorfoldError(
                "--recover fine-tunes on real samples and judges on a held-out share of them: add --calibration"
            )
        if self.method == "none":
            raise TensorfoldError("--recover fine-tunes a factorized model: --method none factorizes nothing")
        if self.hardware_aware or self.config is not None:
            raise TensorfoldError("--recover works with --ratio/--rank/--energy or --max-output-error")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise TensorfoldError(f"--lr must be a finite number > 0 (got {self.lr})")
        if self.batch_size is not None and self.batch_size < 1:
            raise TensorfoldError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.recover_data is not None and not os.path.exists(self.recover_data):
            raise TensorfoldError(f"--recover-data {self.recover_data}: no such file or folder")
        from tensorfold.recovery.trainable import check_train

        check_train(self.train)
        from tensorfold.recovery.config import check_torch_device

        check_torch_device(self.torch_device)

    @property
    def shape_map(self) -> dict[str, list[int]]:
        """--shape as {input: dims} (__post_init__ parsed it)."""
        assert isinstance(self.shapes, dict)
        return self.shapes

    @property
    def class_map(self) -> dict[str, int | None] | None:
        """--class-output as {output: axis or None}, or None when none was named."""
        assert isinstance(self.class_outputs, dict)
        return self.class_outputs or None

    @property
    def spec(self) -> RankSpec:
        return RankSpec(rank=self.rank, energy=self.energy, ratio=self.ratio, evbmf=self.evbmf)

    @property
    def default_bound(self) -> bool:
        """With real data and no rank option the safe default is a bound on what the user sees, not an
        energy (also for int8 alone: a quantized model is held to what the user sees, too)."""
        return (
            self.calibration is not None
            and self.max_output_error is None
            and (self.method != "none" or self.int8)
            and self.config is None
            and not self.hardware_aware
            and self.spec == RankSpec()
        )

    @property
    def deploy_objective(self) -> str | None:
        """What picks among the candidates: given, or `latency` whenever int8 is asked for."""
        return self.objective or ("latency" if self.int8 else None)

    @property
    def output_bound(self) -> float | None:
        return DEFAULT_OUTPUT_ERROR if self.default_bound else self.max_output_error

    def describe_ranks(self) -> str:
        if self.config is not None:
            text = f"config {Path(self.config).name}"
        elif self.output_bound is not None:
            text = f"max output error {self.output_bound:g}"
        else:
            text = self.spec.describe()
        return text + (", fitted to calibration data" if self.calibration is not None and self.method != "none" else "")
