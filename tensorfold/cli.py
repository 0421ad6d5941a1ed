"""Command line: `tensorfold inspect|optimize|verify|profile|recover|search|bench|pipeline|demo`.
User errors: one line, exit 2."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tensorfold import __version__
from tensorfold.demo import DEMO_OUTPUT
from tensorfold.errors import TensorfoldError, VerificationFailed
from tensorfold.limits import PROFILED_RUNS, SEED_MAX
from tensorfold.outputs import json_text
from tensorfold.recovery.memory import budget_text
from tensorfold.recovery.trainable import TRAIN_CHOICES

if TYPE_CHECKING:  # the reports import onnx and rich, which `--help` must not wait for
    from tensorfold.report import Report


class _Finite(click.FloatRange):
    """A float in range that is also finite: FloatRange lets NaN through (every comparison is false)."""

    name = "number"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


class _Methods(click.Choice):
    """The registered factorization methods (tensorfold.passes.METHODS) and `none`, looked up when
    first needed: importing the passes imports onnx (about 2 s), which `--help` must not wait for."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        from tensorfold.passes import METHODS

        return (*METHODS, "none")

    @choices.setter
    def choices(self, value):
        pass


class _PerCore(click.IntRange):
    """Threads or worker processes: 0 (all cores) up to a small multiple of the cores (limits.py);
    a million threads would hang while memory grows."""

    def __init__(self):
        super().__init__(min=0)

    def convert(self, value, param, ctx):
        from tensorfold.limits import check_count

        rv = super().convert(value, param, ctx)
        try:
            return check_count(rv, None)
        except TensorfoldError as exc:
            self.fail(str(exc), param, ctx)


class _OutputFile(click.Path):
    """A file to write: `-o newdir/` names a folder (a trailing slash), never a file called `newdir`."""

    def __init__(self):
        super().__init__(path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.endswith(("/", os.sep)):
            self.fail(f"{value} names a folder (it ends in /); give a file name", param, ctx)
        return super().convert(value, param, ctx)


_POSITIVE = click.IntRange(min=1)
_SEED = click.IntRange(0, SEED_MAX)
_PER_CORE = _PerCore()
_COUNT = click.IntRange(min=0)
_POSITIVE_FLOAT = _Finite(min=0, min_open=True)
_RATIO = _Finite(min=1, min_open=True)  # a compression ratio: 1 would be no compression at all
_SHAPE_HELP = "fix a dynamic input shape, NAME:D1,D2,... (repeatable)"


class _Group(click.Group):
    """One line for every failure (cli_errors.report): user mistakes and environment failures exit 2,
    internal errors 1 (with the hint to rerun with --debug), Ctrl-C 130, SIGTERM 143."""

    def invoke(self, ctx):
        from tensorfold.cli_errors import reporting

        with reporting(ctx, debug=ctx.params.get("debug", False)):
            return super().invoke(ctx)

    def parse_args(self, ctx, args):
        """A usage error in the top-level options is one line too (subcommands' go through invoke)."""
        from tensorfold.cli_errors import reporting

        with reporting(ctx):
            return super().parse_args(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tensorfold")
@click.option(
    "--debug",
    is_flag=True,
    envvar="TENSORFOLD_DEBUG",
    help="show the traceback of an internal error (also TENSORFOLD_DEBUG=1)",
)
def main(debug):
    """Rewrite the Conv/Gemm/MatMul nodes of an ONNX model into verified low-rank factor chains."""
    from tensorfold.progress import start_clock

    start_clock()  # off a terminal, the first progress line comes a minute into the command


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="real samples (.npz, a folder of .npy/.npz files, or of images): also show each layer's sensitivity",
)
@click.option("--normalize", help="image folders: MEAN,STD after [0,1] scaling")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def inspect_cmd(model, as_json, **options):
    """Show what is in MODEL and which layers each method can factorize."""
    from tensorfold.api import inspect

    _show(inspect(model, **options, progress=_progress(as_json)), as_json)


_BATCH_BY_MEMORY = (
    f"lower where the activations one training step keeps would pass {budget_text()}, measured on two samples"
)
_RECOMPUTE_HELP = (
    "save memory in training: keep activations only where the graph is cut into N segments and "
    "recompute the rest in the backward pass (about one more forward per step; N=8 took PP-OCR rec's "
    "training step from +1.7 to +1.0 GB at batch 16, tools/bench_recompute_memory.py)"
)
_TRAIN_HELP = (
    "which weights train: the factor chains tensorfold wrote (a model with none trains every weight) "
    "or all; the chains alone ended as low or lower on held-out error, faster and in less memory on "
    "five real models (docs/results/recovery-trained-weights.md)"
)


@main.command("optimize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=_OutputFile(), required=True, help="where to write the rewritten model")
@click.option(
    "--method",
    type=_Methods(),
    default="auto",
    show_default=True,
    help="factorization; auto picks per layer the least error for the saving; "
    "none: no factorization (with --int8: int8 alone)",
)
@click.option("--rank", type=_POSITIVE, help="the same rank for every layer (clipped to each mode)")
@click.option(
    "--energy", type=_Finite(0, 1, min_open=True), help="keep this share of each layer's spectral energy (0-1]"
)
@click.option("--ratio", type=_RATIO, help="the factorizable layers together hold RATIO times fewer parameters")
@click.option("--evbmf", is_flag=True, help="ranks by empirical variational Bayes (EVBMF, as Kim et al. 2016)")
@click.option("--include", multiple=True, help="only nodes whose name matches this glob (repeatable)")
@click.option("--exclude", multiple=True, help="leave nodes whose name matches this glob (repeatable)")
@click.option(
    "--force",
    is_flag=True,
    help="rewrite a layer even where the chain is not smaller, or costs more multiply-adds than it",
)
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option(
    "--inputs", type=click.Path(), help=".npz of real inputs for verification (or a folder of .npy/.npz files)"
)
@click.option(
    "--no-verify",
    "verify",
    is_flag=True,
    flag_value=False,
    default=True,
    help="skip the onnxruntime comparison and the timing against the input",
)
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option(
    "--hardware-aware",
    is_flag=True,
    help="time every candidate chain on the target; rewrite a layer only where it is faster",
)
@click.option(
    "--provider",
    default="cpu",
    show_default=True,
    help="execution provider to time on (hardware-aware, --objective latency) and to pick the int8 format for",
)
@click.option("--device", help="predict with a device model instead (rx580, gtx1060, ..., host, host-roofline)")
@click.option("--threads", type=_PER_CORE, default=0, show_default=True, help="intra-op threads for timing (0: all)")
@click.option(
    "--max-error", type=_POSITIVE_FLOAT, help="hardware-aware: fastest chain per layer with weight error <= this"
)
@click.option(
    "--target-latency", type=_POSITIVE_FLOAT, help="hardware-aware: least error meeting this whole-model latency (ms)"
)
@click.option("--speedup", type=_POSITIVE_FLOAT, help="hardware-aware: least error meeting this speedup over the input")
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    help="replay a rank configuration (YAML from `tensorfold search ranks`): method and ranks per layer",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="real samples (.npz, one array per input; a folder of .npy/.npz files, one sample or a batch each; or a folder of images): factors fit the layers' "
    "outputs on them; a share is held out and the report is verified on it",
)
@click.option("--normalize", help="image folders: MEAN,STD (or three means, three stds) after [0,1] scaling")
@click.option(
    "--holdout",
    type=_Finite(0, 1, min_open=True, max_open=True),
    default=0.25,
    show_default=True,
    help="share of the calibration samples held out for verification",
)
@click.option(
    "--max-output-error",
    type=_POSITIVE_FLOAT,
    help="the best model whose held-out relative output error (and argmax disagreement) stays within "
    "this bound, as written (with --int8: over factorization and int8 together); the report gives the "
    "error's 90% bootstrap interval over the held-out samples and notes when the bound lies inside it",
)
@click.option(
    "--int8",
    is_flag=True,
    help="also int8 (onnxruntime, the format fast on --provider), calibrated on "
    "--calibration, nodes that cost the most error left in float",
)
@click.option(
    "--objective",
    type=click.Choice(["latency", "size"]),
    help="with --int8 or --max-output-error: the fastest model on --provider (default with --int8) "
    "or the smallest file within the bound; never one slower/larger than the input",
)
@click.option(
    "--class-output",
    "class_outputs",
    multiple=True,
    help="an output holding class scores, NAME or NAME:AXIS (repeatable): judged by argmax agreement too",
)
@click.option(
    "--no-sensitivity",
    "sensitivity",
    is_flag=True,
    flag_value=False,
    default=True,
    help="with --calibration and a budget: skip the per-layer sensitivity probe (faster; "
    "less or more output error by model: docs/results/calibration.md)",
)
@click.option(
    "--recover",
    type=_POSITIVE,
    help="fine-tune each candidate for this many steps (label-free distillation from MODEL on the "
    "calibration fit share) before it is judged on the held-out share",
)
@click.option(
    "--recover-data",
    type=click.Path(),
    help="more unlabelled inputs for --recover (.npz, a folder of .npy/.npz files or of images, read like --calibration); draw them like the calibration samples: inputs of another kind can make recovery worse",
)
@click.option(
    "--lr",
    type=_POSITIVE_FLOAT,
    help="--recover's learning rate (default: the first candidate trains at 1e-4, 1e-3 and past the better one while it keeps winning, each for the whole run; the best run is kept and its rate reused; a rate past the first runs must win by 5%)",
)
@click.option(
    "--batch-size",
    type=_POSITIVE,
    help=f"--recover's batch size (default: 16, {_BATCH_BY_MEMORY})",
)
@click.option(
    "--recompute-segments",
    type=click.IntRange(0, None),
    default=0,
    show_default=True,
    help="--recover: " + _RECOMPUTE_HELP,
)
@click.option(
    "--train",
    type=click.Choice(TRAIN_CHOICES),
    default="chains",
    show_default=True,
    help="--recover: " + _TRAIN_HELP,
)
@click.option(
    "--torch-device", default="cpu", show_default=True, help="where --recover trains (cpu, cuda, cuda:N, mps)"
)
@click.option(
    "--checkpoints",
    type=click.Path(),
    help="--recover's folder of recovered candidates (default: OUTPUT.ckpt; removed when the run succeeds)",
)
@click.option("--resume", is_flag=True, help="continue the interrupted --recover search in its checkpoint folder")
@click.option(
    "--no-warm-start",
    "warm_start",
    is_flag=True,
    flag_value=False,
    default=True,
    help="--recover: factorize every candidate from the input model (default: later ones may start "
    "from the best recovered candidate, where that start is closer)",
)
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON object")
def optimize_cmd(model, output, as_json, **options):
    """Make MODEL smaller and faster and write a verified model to OUTPUT.

    With --calibration (real samples) and no rank option: the most compressed model within
    --max-output-error (default 0.05) on held-out samples; add --int8 for the fastest model within
    that bound over factorization and int8 together. Without --calibration and a rank option each
    layer keeps 95% of its spectral energy (a conservative start).
    """
    from tensorfold.api import OptimizeOptions, optimize

    report = optimize(model, output, OptimizeOptions(**options, progress=_progress(as_json)))
    if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun, rank 0 reports for every process
        _show(report, as_json)


@main.command("verify")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option("--inputs", type=click.Path(), help=".npz of real inputs (or a folder of .npy/.npz files)")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option(
    "--max-error",
    type=_POSITIVE_FLOAT,
    help="exit 1 when an output's relative error (or argmax disagreement on class scores) is above it: a CI gate",
)
@click.option(
    "--class-output",
    "class_outputs",
    multiple=True,
    help="an output holding class scores, NAME or NAME:AXIS (repeatable): judged by argmax agreement too",
)
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(reference, candidate, as_json, max_error, **options):
    """Run REFERENCE and CANDIDATE on the same inputs and compare every output."""
    from tensorfold.api import compare

    result = compare(reference, candidate, **options)
    _show(result, as_json)
    if result.broken:
        raise VerificationFailed(f"{candidate} outputs NaN/Inf where {reference} does not: {', '.join(result.broken)}")
    if max_error is not None and not result.within(max_error):
        raise VerificationFailed(
            f"{candidate}: output error {result.max_error:.4g} on {result.inputs} is above --max-error {max_error:g}"
        )


@main.command("profile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--provider",
    default="cpu",
    show_default=True,
    help="execution provider: cpu, cuda, tensorrt, dml, webgpu, migraphx, openvino, coreml or a full name",
)
@click.option(
    "--device", help="predict with a device model instead of measuring (rx580, gtx1060, ..., host, host-roofline)"
)
@click.option("--batch", "batches", type=_POSITIVE, multiple=True, help="batch size (repeatable; default 1)")
@click.option(
    "--compare",
    "compare_with",
    type=click.Path(path_type=Path),
    help="a second model, timed interleaved with MODEL; ratios are MODEL's speedup over it",
)
@click.option(
    "--runs",
    type=_POSITIVE,
    default=30,
    show_default=True,
    help=f"timed calls per batch; the profiler's per-op and per-node tables take at most {PROFILED_RUNS} more",
)
@click.option("--warmup", type=_COUNT, default=5, show_default=True)
@click.option("--threads", type=_PER_CORE, default=0, show_default=True, help="intra-op threads (0: all cores)")
@click.option(
    "--optimization",
    type=click.Choice(["none", "basic", "extended", "all"]),
    default="all",
    show_default=True,
    help="onnxruntime graph optimization level",
)
@click.option("--top", type=_COUNT, default=10, show_default=True, help="rows of the per-op and per-node tables")
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option(
    "--inputs",
    type=click.Path(),
    help=".npz of real inputs: timed at its first sample's shapes (needed for integer inputs)",
)
@click.option("--json", "as_json", is_flag=True)
def profile_cmd(model, batches, as_json, **options):
    """Latency, FLOPs, params, size and memory of MODEL; per-op and per-node tables."""
    from tensorfold.api import profile

    _show(profile(model, batches=tuple(batches) or (1,), **options), as_json)


@main.command("recover")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=_OutputFile(), required=True)
@click.option(
    "--teacher",
    type=click.Path(path_type=Path),
    multiple=True,
    help="the original model to distill from (repeat for a multi-teacher ensemble); `self`: without the "
    "original, the student's own moving average teaches (mean teacher; needs labelled --data)",
)
@click.option("--teacher-weights", help="weights of the teachers in the ensemble, e.g. 0.7,0.3")
@click.option(
    "--peer",
    "peers",
    type=click.Path(path_type=Path),
    multiple=True,
    help="another factorized model trained alongside by deep mutual learning (written to OUT.peerN.onnx)",
)
@click.option(
    "--generations",
    type=_POSITIVE,
    default=1,
    show_default=True,
    help="born-again distillation: each generation learns from the previous one",
)
@click.option(
    "--data",
    required=True,
    help="your inputs: a folder (images: class subfolders = labels, flat = unlabelled, read per batch; "
    "Fashion-MNIST IDX; CIFAR-10 batches; .npy/.npz files, one sample or a batch each, read as one .npz), "
    "an .npz (x, optional y; one array per input for a model with several), or fashion-mnist",
)
@click.option(
    "--classes",
    help="an image folder's class subfolders in the order of the model's outputs, e.g. cat,dog,bird "
    "(default: a classes.txt in the folder, else name order)",
)
@click.option("--epochs", type=_COUNT, default=1, show_default=True)
@click.option("--max-steps", type=_POSITIVE, help="stop after this many steps")
@click.option(
    "--lr",
    type=_POSITIVE_FLOAT,
    help="learning rate (default: a range test on your data picks it; 1e-4 for runs under 40 steps)",
)
@click.option(
    "--batch-size",
    type=_POSITIVE,
    help=f"default: 128, {_BATCH_BY_MEMORY}",
)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "plateau"]), default="cosine", show_default=True)
@click.option("--distill", type=click.Choice(["hinton", "feature", "both", "none"]), default="both", show_default=True)
@click.option("--temperature", type=_POSITIVE_FLOAT, default=4.0, show_default=True)
@click.option("--alpha", type=_Finite(0, 1), default=0.5, show_default=True, help="weight of the KD loss vs the labels")
@click.option("--patience", type=_POSITIVE, help="early stop after this many evaluations without improvement")
@click.option(
    "--eval-every",
    type=_POSITIVE,
    help="validate every N steps (default: once per epoch); --patience and --schedule plateau count these",
)
@click.option("--torch-device", default="cpu", show_default=True, help="where torch trains: cpu, cuda, cuda:N, mps")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="mixed precision (torch.autocast) for the forward passes; weights and validation stay fp32",
)
@click.option("--threads", type=_PER_CORE, default=0, show_default=True, help="torch and onnxruntime threads (0: all)")
@click.option(
    "--recompute-segments",
    type=click.IntRange(0, None),
    default=0,
    show_default=True,
    help=_RECOMPUTE_HELP,
)
@click.option("--train", type=click.Choice(TRAIN_CHOICES), default="chains", show_default=True, help=_TRAIN_HELP)
@click.option(
    "--workers",
    type=_PER_CORE,
    default=2,
    show_default=True,
    help="image folders: threads decoding the next batches (0: decode between steps)",
)
@click.option("--normalize", help="MEAN,STD (or three means, three stds) after [0,1] scaling, e.g. 0.5,0.5")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="continue from the checkpoint in OUTPUT.ckpt/")
@click.option("--json", "as_json", is_flag=True)
def recover_cmd(
    model,
    output,
    teacher,
    teacher_weights,
    peers,
    generations,
    data,
    classes,
    epochs,
    max_steps,
    lr,
    batch_size,
    optimizer,
    schedule,
    distill,
    temperature,
    alpha,
    patience,
    eval_every,
    torch_device,
    precision,
    threads,
    recompute_segments,
    train,
    workers,
    normalize,
    seed,
    resume,
    as_json,
):
    """Fine-tune MODEL (distilled from --teacher) and write the same graph with trained weights."""
    from tensorfold.api import recover
    from tensorfold.calibration.data import parse_normalize
    from tensorfold.recovery.config import RecoverConfig, check_torch_device, parse_teacher_weights

    cfg = RecoverConfig(
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        # given: trained at as given; else RecoverConfig's, lowered to fit memory (recovery/memory.py)
        **({"batch_size": batch_size, "batch_fits_memory": False} if batch_size else {}),
        optimizer=optimizer,
        schedule=schedule,
        distill=distill,
        temperature=temperature,
        alpha=alpha,
        patience=patience,
        eval_every=eval_every,
        seed=seed,
        threads=threads,
        device=check_torch_device(torch_device),
        precision=precision,
        workers=workers,
        recompute_segments=recompute_segments,
        train=train,
    )
    report = recover(
        model,
        output,
        teacher_path=list(teacher),
        data=data,
        cfg=cfg,
        normalize=parse_normalize(normalize),  # the rule optimize and inspect follow: stds > 0
        resume=resume,
        progress=_progress(as_json),
        teacher_weights=parse_teacher_weights(teacher_weights),
        generations=generations,
        peers=list(peers),
        classes=[c.strip() for c in classes.split(",")] if classes else None,
    )
    if report.rank == 0:  # under torchrun, rank 0 reports for every process
        _show(report, as_json)


@main.group("bench", invoke_without_command=True)
@click.option(
    "--suite",
    type=click.Choice(["smoke", "fashion-mnist-cpu", "fashion-mnist"]),
    default="smoke",
    show_default=True,
    help="smoke: minutes; fashion-mnist-cpu: width 0.25; fashion-mnist: full width (GPU)",
)
@click.option("--models", help="comma-separated zoo models (resnet18,resnet34,resnet50,vgg16,mobilenetv2,mobilenetv1)")
@click.option("--methods", help="comma-separated methods (tucker,cp,tt,svd,auto)")
@click.option("--ratios", help="comma-separated compression ratios over the factorizable layers")
@click.option("--width", type=_POSITIVE_FLOAT, help="width multiplier of the zoo models")
@click.option("--epochs", type=_POSITIVE, help="baseline training epochs")
@click.option("--steps", type=_COUNT, help="recovery steps per row (0: the compressed model unrecovered)")
@click.option("--data", default="fashion-mnist", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("results"),
    show_default=True,
    help="folder for rows.jsonl and the models; an existing one resumes",
)
@click.pass_context
def bench_cmd(ctx, suite, models, methods, ratios, width, epochs, steps, data, output):
    """Benchmark suite: compress, recover and measure zoo models beside int8 quantization."""
    if ctx.invoked_subcommand is not None:
        return
    from tensorfold.bench.runner import run_suite, suite_from_options
    from tensorfold.paths import cache_dir

    rows = run_suite(
        suite_from_options(suite, models, methods, ratios, width, epochs, steps, data),
        output,
        cache_dir() / "baselines",
        progress=True,  # a bar on a terminal, a line a minute in a log (tensorfold/progress.py)
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(f"{len(rows)} rows in {output / 'rows.jsonl'}; `tensorfold bench report {output}` for tables and plots")


@bench_cmd.command("report")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("docs/results"), show_default=True)
def bench_report_cmd(results, output):
    """Tables (Markdown), JSON rows and plots from the rows in RESULTS."""
    from tensorfold.bench.report import write_report

    info = write_report(results, output)
    click.echo(f"{info['rows']} rows -> {info['markdown']}, {info['json']}, {len(info['plots'])} plot(s)")


@main.group("search")
def search_group():
    """Search ranks (search ranks) or architectures (search nas)."""


@search_group.command("ranks")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--objectives",
    default="params,error",
    show_default=True,
    help="comma-separated: params, flops, latency, memory, error, accuracy",
)
@click.option("--n-trials", type=_POSITIVE, default=50, show_default=True, help="trials this worker runs")
@click.option("--timeout", type=_POSITIVE_FLOAT, help="stop starting new trials after this many seconds")
@click.option(
    "--sampler",
    type=click.Choice(["auto", "tpe", "gp", "nsga2", "random"]),
    default="auto",
    show_default=True,
    help="auto: TPE for one objective, NSGA-II for several",
)
@click.option("--population", type=_POSITIVE, help="NSGA-II generation size (default: n-trials/5, 6..50)")
@click.option("--methods", default="svd,tucker", show_default=True, help="methods a layer may take: svd,tucker,cp,tt")
@click.option(
    "--space",
    type=click.Choice(["auto", "per-layer", "global"]),
    default="auto",
    show_default=True,
    help="per-layer method and size, or a global ratio with offsets for the largest layers",
)
@click.option("--include", multiple=True, help="only nodes whose name matches this glob (repeatable)")
@click.option("--exclude", multiple=True, help="leave nodes whose name matches this glob (repeatable)")
@click.option("--storage", help="sqlite:///FILE, journal:FILE, or a database URL (postgresql://...); default in memory")
@click.option("--study", help="study name; a worker naming an existing study adds its trials to it")
@click.option("--max-error", type=_POSITIVE_FLOAT, help="constraint: output error at most this")
@click.option("--target-latency", type=_POSITIVE_FLOAT, help="constraint: latency at most this many ms")
@click.option(
    "--max-memory-mb",
    type=_POSITIVE_FLOAT,
    help="constraint: predicted peak memory of one call (weights, activations, im2col) at most this",
)
@click.option("--provider", default="cpu", show_default=True, help="execution provider for the latency objective")
@click.option("--device", help="predict latency with a device model instead (rx580, gtx1060, ..., host, host-roofline)")
@click.option("--threads", type=_PER_CORE, default=0, show_default=True)
@click.option("--data", help="labelled data for the accuracy objective (fashion-mnist, a folder, an .npz)")
@click.option(
    "--recover-steps",
    type=_COUNT,
    help="accuracy objective: distilled fine-tuning steps per trial before validation (0: none)  [default: 100]",
)
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option("--inputs", type=click.Path(), help=".npz of real inputs for the error objective")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(path_type=Path),
    default=Path("pareto"),
    show_default=True,
    help="front.json, front.png, and per Pareto point a config (point-K.yaml) and its model",
)
@click.option(
    "--no-models",
    "save_models",
    is_flag=True,
    flag_value=False,
    default=True,
    help="write configs only, not each Pareto point's model",
)
@click.option("--json", "as_json", is_flag=True)
def search_ranks_cmd(model, as_json, **options):
    """Search per-layer methods and ranks of MODEL for the Pareto front of OBJECTIVES."""
    from tensorfold.api import search_ranks

    report = search_ranks(model, **options, progress=_progress(as_json))
    _show(report, as_json)
    if report.interrupted:
        raise KeyboardInterrupt("the front covers the trials finished before it")


@search_group.command("nas")
@click.option("--strategy", type=click.Choice(["darts", "evolution", "random"]), default="evolution", show_default=True)
@click.option(
    "--objectives",
    default="accuracy",
    show_default=True,
    help="comma-separated: accuracy, params, flops, latency, memory (several: NSGA-II for evolution)",
)
@click.option(
    "--data", default="fashion-mnist", show_default=True, help="labelled 28x28 images: fashion-mnist, a folder, an .npz"
)
@click.option(
    "--budget-minutes",
    type=_POSITIVE_FLOAT,
    default=10.0,
    show_default=True,
    help="wall-clock budget of the whole run: search, final training and measurement",
)
@click.option("--device", help="predict latency for this device (rx580, gtx1060, ...); the host is always measured")
@click.option("--provider", default="cpu", show_default=True, help="provider the host latency is measured on")
@click.option("--threads", type=_PER_CORE, default=0, show_default=True, help="torch and onnxruntime threads (0: all)")
@click.option("--teacher", type=click.Path(path_type=Path), help="ONNX model to distill the final training from")
@click.option("--genotype", type=click.Path(path_type=Path), help="skip the search: train this genotype (JSON)")
@click.option("-o", "--output", type=_OutputFile(), help="write the trained network as ONNX")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    help="model.onnx, genotype.json, candidates.json, front.png, report.json",
)
@click.option(
    "--channels",
    type=_POSITIVE,
    help="channels of the first cells (default: 8, or 6 or 4 for the candidates "
    "when 8 leaves too few to fit the budget)",
)
@click.option("--layers", type=_POSITIVE, default=5, show_default=True, help="cells (reductions at 1/3 and 2/3)")
@click.option("--nodes", type=_POSITIVE, default=3, show_default=True, help="intermediate nodes per cell")
@click.option("--train-size", type=_POSITIVE, default=4000, show_default=True, help="training images the search uses")
@click.option(
    "--val-size", type=_POSITIVE, default=1000, show_default=True, help="held-out training images that score candidates"
)
@click.option(
    "--proxy-steps",
    type=_POSITIVE,
    help="SGD steps that score one candidate (default: 100, down to 30 to fit the budget)",
)
@click.option(
    "--final-steps",
    type=_POSITIVE,
    help="SGD steps of the final training (default: 600, fewer to end inside the budget)",
)
@click.option("--final-channels", type=_POSITIVE, help="channels of the final network (default: --channels, or 8)")
@click.option(
    "--order", type=click.Choice(["1", "2"]), default="1", show_default=True, help="DARTS: first or second order"
)
@click.option(
    "--guard",
    type=click.Choice(["earlystop", "aux-skip", "none"]),
    default="earlystop",
    show_default=True,
    help="DARTS collapse guard: DARTS+ early stop on skip dominance, or DARTS- auxiliary skip",
)
@click.option("--population", type=_POSITIVE, default=10, show_default=True, help="evolution: population size")
@click.option("--max-candidates", type=_POSITIVE, help="evolution/random: stop after this many candidates")
@click.option(
    "--max-epochs",
    type=_POSITIVE,
    default=50,
    show_default=True,
    help="DARTS: epochs of its schedule (the budget may stop it sooner)",
)
@click.option(
    "--max-latency",
    type=_POSITIVE_FLOAT,
    help="constraint: latency (ms; --device's prediction, else measured on the host) at most this",
)
@click.option(
    "--max-memory-mb",
    type=_POSITIVE_FLOAT,
    help="constraint: predicted peak memory of one call (weights, activations, im2col) at most this",
)
@click.option("--torch-device", default="cpu", show_default=True, help="where torch trains (cpu, cuda, cuda:1, ...)")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def search_nas_cmd(as_json, **options):
    """Search a cell architecture on DATA, train it, export it to ONNX and measure it."""
    import time

    started = time.perf_counter()  # the budget counts the imports below too
    from tensorfold.api import search_nas

    _show(search_nas(**options, progress=_progress(as_json), started=started), as_json)


@main.command("pipeline")
@click.option("--data", default="fashion-mnist", show_default=True)
@click.option("--strategy", type=click.Choice(["darts", "evolution", "random"]), default="evolution", show_default=True)
@click.option(
    "--budget-minutes",
    type=_POSITIVE_FLOAT,
    default=10.0,
    show_default=True,
    help="budget of the NAS stage: search and the found network's training",
)
@click.option(
    "--teacher", type=click.Path(path_type=Path), required=True, help="ONNX model the found network is distilled from"
)
@click.option("--device", help="also predict latency for this device (rx580, ...)")
@click.option(
    "--proxy-steps",
    type=_POSITIVE,
    help="SGD steps that score one candidate (default: 100, down to 30 to fit the budget)",
)
@click.option("--train-size", type=_POSITIVE, default=4000, show_default=True, help="training images the search uses")
@click.option(
    "--final-steps",
    type=_POSITIVE,
    help="SGD steps of the found network's training (default: 600, fewer to end inside the budget)",
)
@click.option("--max-candidates", type=_POSITIVE, help="evolution/random: stop after this many candidates")
@click.option("--final-channels", type=_POSITIVE, default=16, show_default=True)
@click.option("--method", default="auto", show_default=True, help="factorization for the decomposition stage")
@click.option(
    "--ratio",
    type=_RATIO,
    default=2.0,
    show_default=True,
    help="the factorizable layers together hold RATIO times fewer parameters",
)
@click.option("--recover-steps", type=_COUNT, default=300, show_default=True)
@click.option(
    "--hardware-aware/--no-hardware-aware",
    default=True,
    show_default=True,
    help="keep a factor chain only where it is faster on the CPU provider",
)
@click.option(
    "--target",
    default="rx580",
    show_default=True,
    help="the device the answer is for: a device profile (predicted; rx580 is the plan's) or cpu (the CPU "
    "provider, measured). The int8 stage is the answer only where it is not slower there",
)
@click.option("--threads", type=_PER_CORE, default=0, show_default=True)
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option("--output-dir", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def pipeline_cmd(as_json, **options):
    """NAS -> distillation -> decomposition -> recovery, each stage measured and kept in OUTPUT_DIR."""
    from tensorfold.pipeline import run_pipeline

    _show(run_pipeline(**options, progress=_progress(as_json)), as_json)


@main.command("demo")
@click.option(
    "-o",
    "--output",
    type=_OutputFile(),
    default=DEMO_OUTPUT,
    show_default=True,
    help="the tucker model of step 2; step 1's model is written beside it as fmnist_cnn.deploy.onnx",
)
@click.option("--ratio", type=_RATIO, default=4.0, show_default=True)
@click.option(
    "--recover-steps",
    type=_COUNT,
    default=200,
    show_default=True,
    help="fine-tune the result with distillation when Fashion-MNIST is installed (0: skip)",
)
def demo_cmd(output, ratio, recover_steps):
    """The built-in Fashion-MNIST CNN: the fastest model within a bound (calibration, int8), then
    Tucker-2 at --ratio recovered by distillation."""
    from tensorfold.demo import run_demo

    run_demo(_console(), output, ratio, recover_steps)


def _show(report: Report, as_json: bool) -> None:
    """A command's report: one JSON object on stdout, or its tables."""
    if as_json:
        _echo_json(report.as_dict())
    else:
        report.render(_console())


def _progress(as_json: bool) -> bool:
    """Progress on a terminal as a bar and in a log as a line a minute (tensorfold/progress.py);
    none beside a JSON report."""
    return not as_json


def _echo_json(obj) -> None:
    """One JSON object on stdout: NaN and infinities become null (bare NaN is not JSON)."""
    click.echo(json_text(obj))


def _console():
    from tensorfold.report import make_console

    return make_console()


if __name__ == "__main__":
    main()
