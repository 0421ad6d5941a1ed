"""Rank search: Optuna samples a plan per trial, the plan is assembled from cached factorizations
and measured; the result is the Pareto front, each point re-verified and written as a config.

    from tensorfold.search.ranks import search_ranks
    report = search_ranks("model.onnx", objectives=("params", "error"), n_trials=50)

Samplers: TPE (Bayesian, default for one objective), GP (Gaussian process), NSGA-II (default for
several objectives), random (the baseline). Constraints (--max-error, --target-latency) go to the
sampler as Optuna constraint values and decide feasibility on the front. A trial that raises or
measures a non-finite value is recorded as failed with its reason; the search goes on.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from tensorfold import signals
from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import load_model, save_model
from tensorfold.graph.model import count_params
from tensorfold.graph.normalize import normalize
from tensorfold.graph.verify import verify_models
from tensorfold.log import warn
from tensorfold.onnxrt.batching import feeds_for
from tensorfold.onnxrt.inputs import parse_shapes
from tensorfold.outputs import OutputFolder, guard_inputs, write_json_atomic
from tensorfold.progress import bar as progress_bar
from tensorfold.search.config import write_config
from tensorfold.search.constraints import record, sampler_kwargs
from tensorfold.search.objectives import DIRECTIONS, Evaluator, parse_objectives
from tensorfold.search.pareto import feasible, front, front_hypervolume, plot_front
from tensorfold.search.space import RankSpace, decode_plan, encode_plan
from tensorfold.search.storage import open_storage, open_study, redact, storage_file, write_failure

SAMPLERS = ("auto", "tpe", "gp", "nsga2", "random")


class TrialFailed(Exception):
    """A trial that could not be measured; Optuna records it as failed and the search goes on."""


RECOVER_STEPS = 100  # the accuracy objective's distilled fine-tuning per trial, unless --recover-steps


def make_sampler(
    name: str, n_objectives: int, seed: int | None, n_trials: int, constraints: bool, population: int | None = None
):
    if name not in SAMPLERS:
        raise TensorfoldError(f"unknown sampler '{name}' (choose from {', '.join(SAMPLERS)})")
    if name == "auto":
        name = "tpe" if n_objectives == 1 else "nsga2"
    cf = sampler_kwargs(constraints)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, n_trials // 4)), **cf)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(10, max(3, n_trials // 4)), **cf)
    if name == "nsga2":
        # a generation of ~1/5 of the trials: the default 50 would leave a 50-trial search all random
        size = population or max(6, min(50, n_trials // 5))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=size, **cf)
    return optuna.samplers.RandomSampler(seed=seed)


@dataclass(frozen=True)
class RankSearchOptions:
    """Every option of a rank search, checked once (the CLI and Python callers build the same thing).
    objectives: params, flops, latency, error, accuracy; constraints max_error (output error) and
    target_latency (ms) and max_memory_mb (predicted peak memory of one call, runtime/memory.py); storage: sqlite:///FILE, journal:FILE or a database URL shared by workers."""

    objectives: tuple[str, ...] | str = ("params", "error")
    n_trials: int = 50
    timeout: float | None = None
    sampler: str = "auto"
    population: int | None = None
    methods: tuple[str, ...] | str = ("svd", "tucker")
    space: str = "auto"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    storage: str | None = None
    study: str | None = None
    seed: int = 0
    max_error: float | None = None
    target_latency: float | None = None
    max_memory_mb: float | None = None
    provider: str = "cpu"
    device: str | None = None
    threads: int = 0
    latency_runs: int = 20
    data: str | None = None
    recover_steps: int | None = None  # the accuracy objective's; None: RECOVER_STEPS
    shapes: tuple[str, ...] = ()
    inputs: str | os.PathLike | None = None
    output_dir: str | os.PathLike | None = "pareto"
    save_models: bool = True
    progress: bool = True

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        put("objectives", parse_objectives(self.objectives))
        for name in ("include", "exclude", "shapes"):
            put(name, tuple(getattr(self, name)))
        if self.n_trials < 1:
            raise TensorfoldError(f"--n-trials must be >= 1 (got {self.n_trials})")
        for flag, v in (
            ("--max-error", self.max_error),
            ("--target-latency", self.target_latency),
            ("--max-memory-mb", self.max_memory_mb),
        ):
            if v is not None and not v > 0:
                raise TensorfoldError(f"{flag} must be > 0 (got {v})")
        if self.sampler not in SAMPLERS:
            raise TensorfoldError(f"unknown sampler '{self.sampler}' (choose from {', '.join(SAMPLERS)})")
        if self.population is not None:
            sampler = self.sampler if self.sampler != "auto" else ("tpe" if len(self.objectives) == 1 else "nsga2")
            if sampler != "nsga2":
                raise TensorfoldError(
                    f"--population sizes NSGA-II's generations; the {sampler} sampler has none "
                    f"({'--sampler nsga2, or ' if sampler == 'tpe' else ''}leave --population out)"
                )
            if self.population < 2:
                raise TensorfoldError(f"--population must be >= 2: NSGA-II breeds pairs (got {self.population})")
        if "accuracy" not in self.objectives:
            # only the accuracy objective reads them: given for params/error they would be ignored
            for flag, v in (("--data", self.data), ("--recover-steps", self.recover_steps)):
                if v is not None:
                    raise TensorfoldError(
                        f"{flag} serves the accuracy objective, which --objectives {','.join(self.objectives)} "
                        "leaves out (error is measured on --inputs, or random inputs)"
                    )


def search_ranks(model_path: str | os.PathLike, options: RankSearchOptions | None = None, **kwargs) -> dict:
    """The options are RankSearchOptions' fields, given as keywords or as one RankSearchOptions."""
    if options is not None and kwargs:
        raise TypeError("give either a RankSearchOptions or keyword options, not both")
    opts = options if options is not None else RankSearchOptions(**kwargs)
    study_file = storage_file(opts.storage)
    new_study_file = study_file is not None and not study_file.exists()
    with guard_inputs(*(p for p in (model_path, opts.inputs, opts.data) if p is not None)):
        try:
            return _search_ranks(model_path, opts)
        except Exception:
            # a storage file this run created and then failed on (a full disk) is not left behind
            if new_study_file:
                for leftover in (
                    study_file,
                    *(study_file.with_name(study_file.name + s) for s in ("-journal", "-wal", "-shm", ".lock")),
                ):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
            raise


def _search_ranks(model_path, opts: RankSearchOptions) -> dict:
    start = time.perf_counter()
    # the output folder is judged before any work: an input or a user's own file under a name the
    # search writes is refused; the front is staged and moved into place together at the end
    out = OutputFolder(opts.output_dir, "--output-dir", OUTPUT_NAMES, staged=True).check() if opts.output_dir else None
    original = load_model(model_path)
    shape_map = parse_shapes(tuple(opts.shapes))
    feeds, feeds_label, input_shapes = feeds_for(original, shape_map, opts.inputs, opts.seed)
    model, _ = normalize(original)
    rank_space = RankSpace(model, opts.methods, opts.space, tuple(opts.include), tuple(opts.exclude), opts.progress)
    evaluator = Evaluator(
        rank_space.model,
        input_shapes,
        feeds,
        provider=opts.provider,
        device=opts.device,
        threads=opts.threads,
        latency_runs=opts.latency_runs,
        data=opts.data,
        recover_steps=RECOVER_STEPS if opts.recover_steps is None else opts.recover_steps,
        seed=opts.seed,
    )
    # what the trials are measured on: error is needed for --max-error even when not an objective
    measured = list(opts.objectives) + [
        o
        for o, v in (("error", opts.max_error), ("latency", opts.target_latency), ("memory", opts.max_memory_mb))
        if v is not None and o not in opts.objectives
    ]
    constraints = {
        "max_error": opts.max_error,
        "target_latency_ms": opts.target_latency,
        "max_memory_mb": opts.max_memory_mb,
    }
    meta = {
        "objectives": list(opts.objectives),
        "model": {"file": Path(model_path).name, "fingerprint": rank_space.fingerprint},
        "space": rank_space.describe(),
        "constraints": constraints,
        "evaluation": {**evaluator.describe(), "inputs": feeds_label},
    }
    shared = bool(opts.storage) and not str(opts.storage).startswith("sqlite:///:memory:")
    # workers sharing a study must not draw the same proposals: mix the process into the seed
    sampler_seed = opts.seed if not shared else opts.seed * 100003 + os.getpid()
    opt_sampler = make_sampler(
        opts.sampler,
        len(opts.objectives),
        sampler_seed,
        opts.n_trials,
        opts.max_error is not None or opts.target_latency is not None or opts.max_memory_mb is not None,
        opts.population,
    )
    name = opts.study or f"{Path(model_path).stem}-{'-'.join(opts.objectives)}"
    storage = open_storage(opts.storage)
    the_study = open_study(storage, name, [DIRECTIONS[o] for o in opts.objectives], meta, opt_sampler)
    # what fronts of this study are normalized by: measured once per study, not once per worker
    baseline = the_study.user_attrs.get("tensorfold.baseline")
    if baseline is None:
        baseline = evaluator.baseline(measured)
        if "params" in baseline:  # the input as the user gave it, not after folding BatchNorms
            baseline["params"] = float(count_params(original))
        the_study.set_user_attr("tensorfold.baseline", baseline)
    if not the_study.trials and rank_space.mode == "per-layer":
        # the input itself is the first trial: the front always holds a point no worse than the input
        the_study.enqueue_trial(rank_space.keep_all_params())

    own = set()  # this process's trials: workers sharing the study add theirs meanwhile

    def objective(trial):
        with signals.held(False):  # Ctrl-C and SIGTERM come through while a trial works
            return measure(trial)

    def measure(trial):
        own.add(trial.number)
        try:
            plan = rank_space.suggest(trial)
            trial.set_user_attr("plan", encode_plan(plan))
            result = rank_space.assemble(plan, seed=opts.seed)
            values = evaluator(result.model, measured)
            for key, v in values.items():
                trial.set_user_attr(key, v)
            bad = [f"{k} = {v}" for k, v in values.items() if not math.isfinite(v)]
            if bad:
                raise TrialFailed(f"non-finite measurement: {', '.join(bad)}")
            cons = []
            if opts.max_error is not None:
                cons.append(values["error"] - opts.max_error)
            if opts.target_latency is not None:
                cons.append(values["latency"] - opts.target_latency)
            if opts.max_memory_mb is not None:
                cons.append(values["memory"] - opts.max_memory_mb)
            record(trial, cons)
            trial.set_user_attr("layers_rewritten", len(result.rewritten))
            return tuple(values[o] for o in opts.objectives)
        except Exception as exc:  # noqa: BLE001 - any failure of a trial is recorded, the search goes on
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from exc

    interrupted = False
    # tensorfold's bar, not Optuna's: off a terminal it writes a line a minute like every other
    # command (Optuna's drew its raw bar into CI logs)
    trials_bar = progress_bar(
        total=opts.n_trials, desc="search ranks", unit="trial", show=opts.progress and opts.n_trials > 1
    )
    try:
        # between trials they wait: a signal inside Optuna's bookkeeping (its tell) ends in its
        # `finally` as UnboundLocalError ('updated_state'), an internal error instead of exit 130/143
        with signals.held(), trials_bar:
            the_study.optimize(
                objective,
                n_trials=opts.n_trials,
                timeout=opts.timeout,
                catch=(TrialFailed,),
                callbacks=[lambda study, trial: trials_bar.update(1)],
                gc_after_trial=False,
            )
    except KeyboardInterrupt:
        interrupted = True
    except Exception:
        failure = write_failure(storage)
        if failure is not None:
            raise failure from None
        raise
    trials = the_study.get_trials(deepcopy=False)
    mine = [t for t in trials if t.number in own]
    with guard_inputs(storage_file(opts.storage)), out.writing() if out else contextlib.nullcontext():
        report = _report(
            the_study,
            name,
            opts.storage,
            trials,
            mine,
            opts.objectives,
            baseline,
            rank_space,
            evaluator,
            original,
            feeds,
            feeds_label,
            out,
            opts.save_models,
            model_path,
            time.perf_counter() - start,
        )
    report["interrupted"] = interrupted
    counts = report["trials"]
    if not report["front"] and counts["complete"] and counts["infeasible"] == counts["complete"]:
        flags = {
            "max_error": "--max-error",
            "target_latency_ms": "--target-latency",
            "max_memory_mb": "--max-memory-mb",
        }
        bounds = ", ".join(f"{flags[k]} {v:g}" for k, v in constraints.items() if v is not None)
        warn(
            f"none of the {counts['complete']} complete trials met the constraints ({bounds}), so the front "
            "is empty: loosen them, or search longer (--n-trials)"
        )
    return report


def _report(
    study,
    name,
    storage,
    trials,
    mine,
    objectives,
    baseline,
    rank_space,
    evaluator,
    original,
    feeds,
    feeds_label,
    out,
    save_models,
    model_path,
    seconds,
) -> dict:
    failed = [t for t in trials if t.state.name == "FAIL"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in mine
        if t.datetime_complete and t.datetime_start and t.state.name == "COMPLETE"
    ]
    points = []
    layers = {o.name: o.layer for o in rank_space.layers}
    for k, t in enumerate(front(trials, objectives), start=1):
        plan = decode_plan(t.user_attrs["plan"], f"trial {t.number}")
        point = {
            "point": k,
            "trial": t.number,
            "values": dict(zip(objectives, t.values)),
            "layers_rewritten": t.user_attrs.get("layers_rewritten"),
            "plan": t.user_attrs["plan"],
        }
        # re-verify: rebuild from the plan, onnx.checker, run beside the original
        try:
            result = rank_space.assemble(plan)  # the trial's decompositions, from the space's cache
            check = verify_models(original, result.model, feeds, feeds_label)
            point["verified"] = True
            point["max_relative_error"] = check.max_relative_error
            point["max_error"] = check.max_error
            if "params" in objectives:
                point["params_ratio"] = baseline["params"] / max(t.values[objectives.index("params")], 1)
        except TensorfoldError as exc:
            point["verified"] = False
            point["verify_error"] = str(exc)
            result = None
        if out is not None:
            values = {o: _round(v) for o, v in point["values"].items()}
            write_config(
                out.file(f"point-{k}.yaml"),
                plan,
                layers,
                model=str(model_path),
                values=values,
                source={"study": name, "trial": t.number, "storage": redact(storage) if storage else "memory"},
            )
            point["config"] = str(out.path / f"point-{k}.yaml")
            if save_models and result is not None:
                save_model(result.model, out.file(f"point-{k}.onnx"))
                point["model"] = str(out.path / f"point-{k}.onnx")
        points.append(point)
    report = {
        "model": str(model_path),
        "study": name,
        "storage": redact(storage) if storage else "memory",
        "objectives": list(objectives),
        "directions": [DIRECTIONS[o] for o in objectives],
        "space": rank_space.describe(),
        "evaluation": evaluator.describe(),
        "baseline": baseline,
        "trials": {
            "total": len(trials),
            "this_run": len(mine),
            "complete": len(complete),
            "failed": len(failed),
            "infeasible": sum(1 for t in complete if not feasible(t)),
        },
        "failures": [
            # a trial with no reason was stopped mid-way (Ctrl-C, a kill): Optuna marks it failed
            {"trial": t.number, "reason": t.user_attrs.get("fail_reason") or "interrupted before it finished"}
            for t in failed
        ][:20],
        "seconds_per_trial": {
            "median": float(np.median(durations)) if durations else None,
            "mean": float(np.mean(durations)) if durations else None,
        },
        "hypervolume": front_hypervolume(trials, objectives, baseline) if complete else 0.0,
        "front": points,
        "inputs": feeds_label,
        "seconds": round(seconds, 1),
    }
    if out is not None:
        plot = plot_front(
            trials,
            objectives,
            out.file("front.png"),
            baseline,
            f"{Path(model_path).name}: study {name}, {len(complete)} trials",
        )
        report["plot"] = str(out.path / "front.png") if plot else None
        write_json_atomic(out.file("front.json"), report)
        out.commit(stale=("point-*",))  # an earlier run's other points would read as this run's front
    return report


# what the search writes in its --output-dir (outputs.OutputFolder: nothing else there is touched)
OUTPUT_NAMES = ("front.json", "front.png", "point-*.yaml", "point-*.onnx", "point-*.onnx.data")


def _round(v: float) -> float:
    return float(f"{v:.6g}")
