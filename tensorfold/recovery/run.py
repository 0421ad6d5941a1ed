"""recover(): ONNX student + teacher + data -> the same graph with trained weights, and a report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from tensorfold.calibration.data import class_order
from tensorfold.datasets import (
    ImageFiles,
    InputArrays,
    adaptation,
    folder_kind,
    load_data,
    load_input_arrays,
    prepare_inputs,
    sample_shape,
    samples_subset,
)
from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import load_model, save_model
from tensorfold.log import warn
from tensorfold.onnxrt.inputs import input_ranks
from tensorfold.outputs import MANIFEST, OutputFolder, check_output, guarded, write_json_atomic
from tensorfold.recovery.checkpoints import checkpoint_folder, model_fingerprint, stored_settings
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.distill import (
    EmaTeacher,
    EnsembleTeacher,
    GraphTeacher,
    OnnxTeacher,
    Outputs,
    Teacher,
    TorchTeacher,
    rewritten_outputs,
)
from tensorfold.recovery.distributed import World, world
from tensorfold.recovery.distributed import start as start_processes
from tensorfold.recovery.distributed import stop as stop_processes
from tensorfold.recovery.finetune import train
from tensorfold.recovery.history import plot_history
from tensorfold.recovery.labels import label_order_warning
from tensorfold.recovery.lr_finder import choose_lr
from tensorfold.recovery.memory import choose_batch
from tensorfold.recovery.trainable import train_only
from tensorfold.recovery.validation import evaluate, metric_for, signed, tensors

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch


# a model input of these types takes images or features, never integer arrays (token ids)
_FLOAT_INPUTS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


def _integers_as_the_model_takes(x: Any, model: onnx.ModelProto, first_input: str) -> Any:
    """Integer samples (read as int64) in the integer type each input declares: magika takes int32
    byte features, and onnxruntime refuses the teacher an int64 array for them."""
    takes = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}

    def cast(name: str, a: np.ndarray) -> np.ndarray:
        kind = takes.get(name, onnx.TensorProto.UNDEFINED)
        if a.dtype.kind not in "iu" or kind in _FLOAT_INPUTS or kind == onnx.TensorProto.UNDEFINED:
            return a
        return a.astype(onnx.helper.tensor_dtype_to_np_dtype(kind), copy=False)

    if isinstance(x, InputArrays):
        return InputArrays(x.names, [cast(n, a) for n, a in zip(x.names, x.arrays)])
    if isinstance(x, np.ndarray):
        return cast(first_input, x)
    return x


def _io_signature(model: onnx.ModelProto) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    inits = {t.name for t in model.graph.initializer}
    ins = [(v.name, v.type.tensor_type.elem_type) for v in model.graph.input if v.name not in inits]
    outs = [(v.name, v.type.tensor_type.elem_type) for v in model.graph.output]
    return ins, outs


def _signature_text(model: onnx.ModelProto) -> str:
    """Inputs -> outputs with their types, as a user reads them: x (float) -> logits (float)."""
    ins, outs = _io_signature(model)

    def named(pairs: list[tuple[str, int]]) -> str:
        return ", ".join(f"{name} ({onnx.helper.tensor_dtype_to_np_dtype(t).name if t else '?'})" for name, t in pairs)

    return f"{named(ins)} -> {named(outs)}"


def _shape_clash(a: onnx.ModelProto, b: onnx.ModelProto) -> str | None:
    """Inputs whose fixed dims differ (a dynamic dim fits any): both must run on the same samples."""

    def dims(m: onnx.ModelProto) -> dict[str, list[int | None]]:
        inits = {t.name for t in m.graph.initializer}
        return {
            v.name: [
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in v.type.tensor_type.shape.dim
            ]
            for v in m.graph.input
            if v.name not in inits
        }

    da, db = dims(a), dims(b)
    for name in da.keys() & db.keys():
        x, y = da[name], db[name]
        if x and y and (len(x) != len(y) or any(p is not None and q is not None and p != q for p, q in zip(x, y))):
            show: Callable[[list[int | None]], str]
            show = lambda ds: "[" + ", ".join("?" if d is None else str(d) for d in ds) + "]"  # noqa: E731
            return f"'{name}' is {show(x)} vs {show(y)}"
    return None


def _peer_output(output_path: str | Path, i: int) -> Path:
    return Path(str(output_path).removesuffix(".onnx") + f".peer{i}.onnx")


@guarded("student_path", "teacher_path", "data", "peers")  # type: ignore[untyped-decorator]  # outputs.py is not typed yet
def recover(
    student_path: str | Path,
    output_path: str | Path,
    *,
    teacher_path: str | Path | Sequence[str | Path] | None = None,
    data: str | None = None,
    cfg: RecoverConfig | None = None,
    val_size: int = 5000,
    normalize: tuple[list[float], list[float]] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    limit: int | None = None,
    teacher_weights: list[float] | None = None,
    teacher_module: torch.nn.Module | None = None,
    generations: int = 1,
    peers: Sequence[str | Path] | None = None,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune the student (distilled from the teacher when given) and save it to output_path.

    teacher_path: one ONNX path or several (a weighted ensemble, `teacher_weights`); teacher_module:
    a torch module as (an extra) teacher. generations > 1: born-again distillation — each further
    generation starts again from the factorized student and learns from the previous generation."""
    if not data:  # the user's own inputs: a default data set would train their model on clothes
        raise TensorfoldError("--data is required: a folder of your inputs, an .npz, or fashion-mnist")
    cfg = cfg or RecoverConfig()
    start = time.perf_counter()
    w = world()
    if w.distributed and (peers or generations > 1):
        raise TensorfoldError("--peer and --generations train in one process; launch them without torchrun")
    # everything about the outputs is checked before any training, not after the whole run
    check_output(output_path)
    peer_outputs = [check_output(_peer_output(output_path, i)) for i in range(1, len(peers or []) + 1)]
    ckdir = checkpoint_folder(Path(checkpoint_dir) if checkpoint_dir else Path(str(output_path) + ".ckpt")).check()
    try:
        cfg = replace(cfg, device=start_processes(w, cfg.device))
        if w.distributed and w.main:
            warn(
                f"recover: {w.size} processes (DistributedDataParallel over "
                f"{'nccl' if cfg.device.startswith('cuda') else 'gloo'}); rank 0 writes"
            )
        return _recover(
            student_path,
            output_path,
            ckdir,
            peer_outputs,
            start,
            teacher_path=teacher_path,
            data=data,
            cfg=cfg,
            val_size=val_size,
            normalize=normalize,
            resume=resume,
            progress=progress,
            limit=limit,
            teacher_weights=teacher_weights,
            teacher_module=teacher_module,
            generations=generations,
            peers=peers,
            classes=classes,
            w=w,
        )
    except Exception:
        if w.main:
            ckdir.failed()  # a failed run leaves the folder as it was (an interrupted one keeps its checkpoint)
        raise
    except BaseException:
        if w.main and ckdir.made and ckdir.path.is_dir() and {p.name for p in ckdir.path.iterdir()} <= {MANIFEST}:
            ckdir.failed()  # interrupted before its first checkpoint: nothing to resume from
        raise
    finally:
        stop_processes(w)


def _recover(
    student_path: str | Path,
    output_path: str | Path,
    ckdir: OutputFolder,
    peer_outputs: list[Path],
    start: float,
    *,
    teacher_path: str | Path | Sequence[str | Path] | None,
    data: str,
    cfg: RecoverConfig,
    val_size: int,
    normalize: tuple[list[float], list[float]] | None,
    resume: bool,
    progress: bool,
    limit: int | None,
    teacher_weights: list[float] | None,
    teacher_module: torch.nn.Module | None,
    generations: int,
    peers: Sequence[str | Path] | None,
    w: World,
    classes: list[str] | None = None,
) -> dict[str, Any]:

    from tensorfold.recovery.memory import trial_run
    from tensorfold.recovery.onnx_torch import NotTrainable, OnnxModule

    student = load_model(student_path)
    if generations < 1:
        raise TensorfoldError(f"--generations must be >= 1 (got {generations})")
    paths = [teacher_path] if isinstance(teacher_path, (str, Path)) else list(teacher_path or [])
    self_taught = [str(p) for p in paths] == ["self"]
    if "self" in [str(p) for p in paths] and (not self_taught or teacher_module is not None):
        raise TensorfoldError("--teacher self is the student's own moving average: give it alone")
    if self_taught:
        paths = []
    teacher_models = [load_model(p) for p in paths]
    for p, tm in zip(paths, teacher_models):
        if _io_signature(tm) != _io_signature(student):
            raise TensorfoldError(
                f"teacher {p} and the student differ in their inputs or outputs: the teacher takes "
                f"{_signature_text(tm)}, the student {_signature_text(student)}"
            )
        clash = _shape_clash(tm, student)
        if clash:
            raise TensorfoldError(f"teacher {p} takes other input shapes than the student: {clash}")
    input_shape = [
        d.dim_value if d.HasField("dim_value") else -1 for d in student.graph.input[0].type.tensor_type.shape.dim
    ]
    size: tuple[int, int] | None
    size = tuple(input_shape[2:4]) if len(input_shape) == 4 and min(input_shape[2:4]) > 0 else None  # type: ignore[assignment]  # 4 dims: [2:4] is two
    channels = input_shape[1] if len(input_shape) == 4 and input_shape[1] in (1, 3) else 3
    names = [v.name for v in student.graph.input if v.name not in {t.name for t in student.graph.initializer}]
    x: InputArrays | np.ndarray | ImageFiles
    if len(names) > 1:  # token ids and a mask, ...: one array per input
        x, y, desc = load_input_arrays(data, names, input_ranks(student))
    else:
        if classes and folder_kind(data) != "images":
            raise TensorfoldError(
                f"--classes names the class subfolders of an image folder; --data {data} is not one "
                "(its labels are class numbers already)"
            )
        x, y, desc = load_data(
            data, "train", size, channels, lazy=True, classes=classes, input_name=names[0], input_rank=len(input_shape)
        )
    if limit:
        x, y = samples_subset(x, np.arange(min(limit, len(x)))), (y[:limit] if y is not None else None)
    if isinstance(x, ImageFiles):
        converted = adaptation(x.raw([0]), input_shape)
        x = x.prepared(input_shape, normalize)
    elif isinstance(x, np.ndarray):
        takes = student.graph.input[0].type.tensor_type.elem_type
        if x.dtype.kind in "iu" and x.dtype != np.uint8 and takes in _FLOAT_INPUTS:
            raise TensorfoldError(
                f"--data {desc}: the samples are {x.dtype}; the model takes "
                f"{onnx.helper.tensor_dtype_to_np_dtype(takes).name} (uint8 images are scaled to [0, 1]; "
                "other integers would be token ids)"
            )
        converted = adaptation(x, input_shape)
        x = prepare_inputs(x, input_shape, normalize)
    else:
        converted = None
    x = _integers_as_the_model_takes(x, student, names[0])
    if converted:
        warn(f"--data {desc}: {converted}")
    try:
        module, outputs, per_sample = trial_run(student, tensors(x[:2], "cpu"))
    except NotTrainable as exc:  # a node failed: an unsupported op or data of the wrong shape
        raise TensorfoldError(
            f"the model does not run in the trainer on the data ({desc}, samples "
            f"{sample_shape(x)}; the model takes {input_shape}): {exc}"
            if exc.on_data
            else f"the model cannot be trained: {exc}"
        ) from None
    probe = outputs[0]
    trained_weights = train_only(module, cfg.train)  # after the batch's measure: it is chosen for every weight
    batch = choose_batch(None if cfg.batch_fits_memory else cfg.batch_size, cfg.batch_size, per_sample)
    cfg = replace(cfg, batch_size=batch.size)
    spec = Outputs.of(student, labelled=y is not None)
    if y is not None and not spec.classifier:
        warn(
            f"--data {desc}: labels are ignored, the model's first output ({spec.names[0]}) holds no class "
            "scores; it is distilled from the teacher"
        )
        y = None
    if y is not None and probe.shape[-1] <= int(y.max()):
        raise TensorfoldError(f"labels go up to {int(y.max())} but the model has {probe.shape[-1]} outputs")
    if y is not None and int(y.min()) < 0:
        raise TensorfoldError(f"labels must be class numbers from 0 (the data holds {int(y.min())})")
    # validation: held out from the training split (the test split stays for the final report)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(x))
    val_n = min(val_size, len(x) // 5)
    val_idx, train_idx = order[:val_n], order[val_n:]
    validation = f"{val_n} samples held out of the training data"
    if val_n == 0:  # too few to hold any out: validate on the training samples, and say so
        val_idx = train_idx
        validation = f"the {len(x)} training samples themselves (too few to hold any out)"
    batch_text = batch.describe()
    if cfg.batch_size > len(train_idx):  # the batch the report states is the batch trained at
        cfg = replace(cfg, batch_size=len(train_idx))
        batch_text = f"batch {cfg.batch_size}, every training sample"
    elif batch.lowered:  # memory, not the set's size, is what lowered it (8 samples read "batch 72, not 128")
        warn(f"recover: {batch_text}")
    val_x, val_y = samples_subset(x, val_idx), (y[val_idx] if y is not None else None)
    tx, ty = samples_subset(x, train_idx), (y[train_idx] if y is not None else None)
    peer_models = [load_model(p) for p in peers or []]
    for p, pm in zip(peers or [], peer_models):
        if _io_signature(pm) != _io_signature(student):
            raise TensorfoldError(f"peer {p} and the student differ in their inputs or outputs")
    # every factor chain's output, the student's and the peers' (named as the original layers' outputs)
    features = list(dict.fromkeys(f for m in [student, *peer_models] for f in rewritten_outputs(m)))
    module.to(cfg.device)
    members: list[Teacher]
    if cfg.device == "cpu":
        members = [OnnxTeacher(tm, features, cfg.threads) for tm in teacher_models]
    else:
        members = [GraphTeacher(tm, features, cfg.device) for tm in teacher_models]
    if teacher_module is not None:
        members.append(TorchTeacher(teacher_module).to(cfg.device))
    teacher: Teacher | None = None
    if len(members) == 1 and not teacher_weights:
        teacher = members[0]
    elif members:
        teacher = EnsembleTeacher(members, teacher_weights)
    # --teacher self: the student's moving average (born-again generations replace `teacher`)
    ema: EmaTeacher | None = None
    if self_taught:
        if y is None:
            raise TensorfoldError(
                "--teacher self needs labelled --data: the student's moving average only steadies "
                "what labels teach (without labels or the original model there is nothing to "
                "recover toward)"
            )
        teacher = ema = EmaTeacher(module, features)
    if teacher is None and y is None:
        raise TensorfoldError("unlabelled data needs a --teacher to learn from")
    if y is not None and teacher is not None and not self_taught and w.main:
        names = class_order(Path(data), classes) if folder_kind(data) == "images" else []
        mismatch = label_order_warning(teacher, tx, ty, spec, names, cfg.device, cfg.batch_size, cfg.seed)  # type: ignore[arg-type]  # ty: y's samples, y is not None
        if mismatch:
            warn(f"--data {desc}: {mismatch}")

    def check(m: torch.nn.Module, against: Teacher | None = None) -> dict[str, float]:
        return evaluate(m, val_x, val_y, against, spec, cfg.batch_size)

    lr_from = "--lr"
    # what a --resume must repeat: a resumed run on other data or at another rate would continue
    # the schedule and the best-so-far of a different run (the rate is the one trained at); more
    # --max-steps may extend a run
    settings: dict[str, Any] = {
        "data": desc,
        "labels": y is not None,
        "batch_size": cfg.batch_size,
        "optimizer": cfg.optimizer,
        "seed": cfg.seed,
        "train": cfg.train,
    }
    earlier = stored_settings(ckdir.path / "last.pt") if resume else {}
    if cfg.lr is None and isinstance(earlier.get("lr"), float):  # the interrupted run's rate, not a new search
        cfg, lr_from = replace(cfg, lr=earlier["lr"]), "the interrupted run's (resumed)"
    if cfg.lr is None:  # no --lr: a rate for this model, found on its own data
        cfg, lr_from = choose_lr(module, teacher, tx, ty, cfg, spec, w)
    settings["lr"] = cfg.lr
    before = check(module, teacher)
    # what every candidate model is scored against, whatever teaches it later (a moving average
    # is no judge: self-taught runs are scored on their labels)
    judge = None if self_taught else teacher
    metric = metric_for(val_y is not None, spec)

    peer_reports: list[dict[str, Any]] = []
    peer_writes: list[tuple[OnnxModule, Path]] = []
    fingerprint = "+".join(model_fingerprint(m) for m in [student, *peer_models])
    # deep mutual learning (--peer): the peers train beside the student with all of its machinery
    # (features, schedule, patience, checkpoints, --resume); each keeps its best weights
    peer_modules = [OnnxModule(pm).to(cfg.device) for pm in peer_models]
    for peer_module in peer_modules:
        train_only(peer_module, cfg.train)
    outcome = train(
        module,
        teacher,
        tx,
        ty,
        val_x,
        val_y,
        cfg,
        ckdir,
        resume,
        progress,
        fingerprint=fingerprint,
        settings=settings,
        spec=spec,
        w=w,
        peers=peer_modules or None,
    )
    history, reason, best = outcome.history, outcome.stop, outcome.best
    if not w.main:  # rank 0 writes the model, the history and the report (peers never run distributed)
        return {
            "rank": w.rank,
            "world_size": w.size,
            "output": None,
            "steps": history.steps[-1] if history.steps else 0,
            "stop": reason,
        }
    for peer, pmod, path in zip(peers or [], peer_modules, peer_outputs):
        peer_writes.append((pmod, path))
        peer_reports.append({"peer": str(peer), "output": str(path), "val": check(pmod, judge)})
    if reason.startswith("loss became"):
        if "last good checkpoint" in reason:
            ckdir.keep()  # the message names it: --resume from it with a lower --lr
        raise TensorfoldError(f"{reason}; nothing written to {output_path}: try a lower --lr")
    generation_results = [check(module, judge)]  # each model is validated once
    kept, after, kept_generation = module, generation_results[0], 1
    for gen in range(2, generations + 1):
        # born-again: the trained generation teaches a fresh copy of the factorized student
        previous = module.write_back()
        module = OnnxModule(student).to(cfg.device)
        train_only(module, cfg.train)
        teacher = (
            OnnxTeacher(previous, features, cfg.threads)
            if cfg.device == "cpu"
            else GraphTeacher(previous, features, cfg.device)
        )
        generation_dir = checkpoint_folder(ckdir.file(f"gen{gen}")).check()
        outcome = train(
            module,
            teacher,
            tx,
            ty,
            val_x,
            val_y,
            cfg,
            generation_dir,
            False,
            progress,
            fingerprint=model_fingerprint(student),
            spec=spec,
        )
        history, reason, best = outcome.history, outcome.stop, outcome.best
        if reason.startswith("loss became"):
            raise TensorfoldError(f"generation {gen}: {reason}; nothing written to {output_path}: try a lower --lr")
        generation_results.append(check(module, judge))
        if signed(generation_results[-1], metric) > signed(after, metric):
            kept, after, kept_generation = module, generation_results[-1], gen
    if kept_generation != generations:  # a later generation is not better by itself
        module = kept
        reason += f"; generation {kept_generation} scored best (validation {metric} {after[metric]:.4f}) and is written"
    if ema is not None:
        averaged = check(ema.module, judge)
        if signed(averaged, metric) > signed(after, metric):
            module, after = ema.module, averaged
            reason += "; the moving average scored better on validation than the student and is written"
    trained = module.write_back()
    save_model(trained, output_path)
    for pmod, path in peer_writes:  # only now: an error above leaves nothing written
        save_model(pmod.write_back(), path)
    write_json_atomic(ckdir.file("history.json"), history.as_dict())
    plot = plot_history(history, ckdir.file("history.png"))
    test: dict[str, float] = {}
    if data in ("fashion-mnist", "fmnist") or Path(data).is_dir():
        try:
            tx_test, ty_test, _ = load_data(data, "test", size, channels)
            tx_test = prepare_inputs(tx_test, input_shape, normalize)  # type: ignore[arg-type]  # not lazy: an array
            from tensorfold.runtime.evaluation import evaluate_onnx

            # onnxruntime on the saved files: faster than the interpreter, and it checks what was written
            test = {
                "student_before": evaluate_onnx(student_path, tx_test, ty_test),  # type: ignore[arg-type]  # test splits are labelled
                "student_after": evaluate_onnx(output_path, tx_test, ty_test),  # type: ignore[arg-type]  # test splits are labelled
            }
            if paths:
                test["teacher"] = evaluate_onnx(paths[0], tx_test, ty_test)  # type: ignore[arg-type]  # test splits are labelled
        except TensorfoldError:
            test = {}
    teachers = (
        "self (the student's moving average)"
        if self_taught
        else [str(p) for p in paths]
        if len(paths) > 1
        else (str(paths[0]) if paths else None)
    )
    return {
        "peers": peer_reports,
        "student": str(student_path),
        "teacher": teachers,
        "generations": generation_results,
        "output": str(output_path),
        "data": desc,
        "train_size": len(tx),
        "val_size": len(val_x),
        "validation": validation,
        "metric": metric,
        "outputs": spec.describe(),
        "world_size": w.size,
        "config": {**asdict(cfg), "lr_from": lr_from, "batch": batch_text},
        "features_matched": len(teacher.features) if teacher else 0,
        "trained": trained_weights.describe(),
        "val_before": before,
        "val_after": after,
        "best": best,
        "test_accuracy": test,
        "steps": history.steps[-1] if history.steps else 0,
        "stop": reason,
        "checkpoints": str(ckdir.path),
        "history": str(ckdir.path / "history.json"),
        "plot": str(plot) if plot else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
