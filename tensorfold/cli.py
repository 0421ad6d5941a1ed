"""Command line: `tensorfold inspect|optimize|verify|demo`. User errors: one line, exit 2."""

from __future__ import annotations

import math
import sys
from importlib import resources
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tensorfold import __version__
from tensorfold.errors import TensorfoldError, VerificationFailed
from tensorfold.outputs import json_text

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


_POSITIVE = click.IntRange(min=1)
_COUNT = click.IntRange(min=0)
_POSITIVE_FLOAT = _Finite(min=0, min_open=True)
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
@click.option("--debug", is_flag=True, envvar="TENSORFOLD_DEBUG",
              help="show the traceback of an internal error (also TENSORFOLD_DEBUG=1)")
def main(debug):
    """Rewrite the Conv/Gemm/MatMul nodes of an ONNX model into verified low-rank factor chains."""


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option("--calibration", type=click.Path(path_type=Path),
              help="real samples (.npz or image folder): also show each layer's sensitivity")
@click.option("--normalize", help="image folders: MEAN,STD after [0,1] scaling")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def inspect_cmd(model, shapes, calibration, normalize, as_json):
    """Show what is in MODEL and which layers each method can factorize."""
    from tensorfold.api import inspect
    from tensorfold.passes import METHODS

    info = inspect(model, shapes=shapes, calibration=calibration, normalize=normalize,
                   progress=not as_json and sys.stderr.isatty())
    if as_json:
        _echo_json(info)
        return
    console = _console()
    console.print(f"[bold]{info['input']}[/]  opset {info['opset']}  {info['producer']}")
    console.print(f"inputs {info['inputs']}  outputs {info['outputs']}")
    console.print(f"{info['params']:,} parameters, {_flops(info['flops'])} FLOPs, {info['size_bytes']:,} bytes; "
                  f"{info['factorizable_params']:,} parameters in {len(info['layers'])} factorizable layers")
    console.print("ops: " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    table = Table(title="weight-heavy layers", title_justify="left")
    sens_cols = ("layer err @2x", "model err @2x") if info["calibration"] else ()
    for col in ("node", "op", "weight", "params", "FLOPs", *METHODS, *sens_cols):
        table.add_column(col, justify="right" if col in ("params", "FLOPs", *sens_cols) else "left")
    for row in info["layers"]:
        shape = "x".join(map(str, row["weight_shape"])) + (f" g{row['groups']}" if row["groups"] > 1 else "")
        if row["shared_with"]:
            shape += f" (shared by {len(row['shared_with']) + 1})"
        marks = ["yes" if row["methods"][m] == "yes" else "-" for m in METHODS]
        extra = []
        if sens_cols:
            sens = row.get("sensitivity")
            extra = [f"{sens['layer_error']:.3f}", f"{sens['model_error']:.3f}"] if sens else ["-", "-"]
        table.add_row(row["node"], row["op"], shape, f"{row['params']:,}", _flops(row["flops"]), *marks, *extra)
    console.print(table)
    if sens_cols:
        console.print(f"sensitivity on {info['calibration']}: each layer alone at half its parameters (data-fitted "
                      "Tucker-2/SVD); layer err = its relative output error, model err = the model's")
    reasons = {}
    for row in info["layers"]:
        for m, verdict in row["methods"].items():
            if verdict != "yes":
                reasons.setdefault(verdict, []).append(row["node"])
    for s in info["skipped"]:
        reasons.setdefault(s["reason"], []).append(s["node"])
    for reason, nodes in reasons.items():
        console.print(f"- {reason}: {len(nodes)} node(s), e.g. {nodes[0]}")


@main.command("optimize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="where to write the rewritten model")
@click.option("--method", type=_Methods(), default="auto",
              show_default=True, help="factorization; auto picks per layer the least error for the saving; "
                                      "none: no factorization (with --int8: int8 alone)")
@click.option("--rank", type=_POSITIVE, help="the same rank for every layer (clipped to each mode)")
@click.option("--energy", type=_Finite(0, 1, min_open=True), help="keep this share of each layer's spectral energy (0-1]")
@click.option("--ratio", type=_POSITIVE_FLOAT, help="the factorizable layers together hold RATIO times fewer parameters")
@click.option("--evbmf", is_flag=True, help="ranks by empirical variational Bayes (EVBMF, as Kim et al. 2016)")
@click.option("--include", multiple=True, help="only nodes whose name matches this glob (repeatable)")
@click.option("--exclude", multiple=True, help="leave nodes whose name matches this glob (repeatable)")
@click.option("--force", is_flag=True, help="rewrite a layer even where the chain is not smaller")
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option("--inputs", type=click.Path(), help=".npz of real inputs for verification")
@click.option("--no-verify", is_flag=True, help="skip the onnxruntime comparison")
@click.option("--seed", type=_COUNT, default=0, show_default=True)
@click.option("--hardware-aware", is_flag=True,
              help="time every candidate chain on the target; rewrite a layer only where it is faster")
@click.option("--provider", default="cpu", show_default=True, help="execution provider to time on (hardware-aware)")
@click.option("--device", help="predict with a device model instead (rx580, gtx1060, ..., host, host-roofline)")
@click.option("--threads", type=_COUNT, default=0, show_default=True, help="intra-op threads for timing (0: all)")
@click.option("--max-error", type=_POSITIVE_FLOAT, help="hardware-aware: fastest chain per layer with weight error <= this")
@click.option("--target-latency", type=_POSITIVE_FLOAT, help="hardware-aware: least error meeting this whole-model latency (ms)")
@click.option("--speedup", type=_POSITIVE_FLOAT, help="hardware-aware: least error meeting this speedup over the input")
@click.option("--config", type=click.Path(path_type=Path),
              help="replay a rank configuration (YAML from `tensorfold search ranks`): method and ranks per layer")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="real samples (.npz, one array per input, or a folder of images): factors fit the layers' "
                   "outputs on them; a share is held out and the report is verified on it")
@click.option("--normalize", help="image folders: MEAN,STD (or three means, three stds) after [0,1] scaling")
@click.option("--holdout", type=_Finite(0, 1, max_open=True), default=0.25, show_default=True,
              help="share of the calibration samples held out for verification")
@click.option("--max-output-error", type=_POSITIVE_FLOAT,
              help="the most compressed model whose held-out relative output error (and argmax disagreement) "
                   "stays within this bound")
@click.option("--int8", is_flag=True, help="quantize the result to int8 (onnxruntime QDQ, per channel), "
                                            "calibrated on --calibration")
@click.option("--no-sensitivity", is_flag=True,
              help="with --calibration and a budget: skip the per-layer sensitivity probe (faster; "
                   "less or more output error by model: docs/results/calibration.md)")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON object")
def optimize_cmd(model, output, method, rank, energy, ratio, evbmf, include, exclude, force, shapes, inputs, no_verify,
                 seed, hardware_aware, provider, device, threads, max_error, target_latency, speedup, config,
                 calibration, normalize, holdout, max_output_error, int8, no_sensitivity, as_json):
    """Factorize MODEL and write a verified model to OUTPUT.

    Without --rank, --energy or --ratio each layer keeps 95% of its spectral energy
    (a conservative start: expect a modest saving and a small error).
    """
    from tensorfold.api import optimize

    report = optimize(model, output, method=method, rank=rank, energy=energy, ratio=ratio, evbmf=evbmf, include=include,
                      exclude=exclude, force=force, shapes=shapes, inputs=inputs, verify=not no_verify,
                      progress=not as_json and sys.stderr.isatty(), seed=seed, hardware_aware=hardware_aware,
                      provider=provider, device=device, threads=threads, max_error=max_error,
                      target_latency=target_latency, speedup=speedup, config=config, calibration=calibration,
                      normalize=normalize, holdout=holdout, max_output_error=max_output_error, int8=int8,
                      sensitivity=not no_sensitivity)
    if as_json:
        _echo_json(report.as_dict())
    else:
        report.render(_console())


@main.command("verify")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option("--inputs", type=click.Path(), help=".npz of real inputs")
@click.option("--seed", type=_COUNT, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(reference, candidate, shapes, inputs, seed, as_json):
    """Run REFERENCE and CANDIDATE on the same inputs and compare every output."""
    from tensorfold.api import compare

    result = compare(reference, candidate, shapes=shapes, inputs=inputs, seed=seed)
    if as_json:
        _echo_json(result.as_dict())
    else:
        _render_verification(result)
    if result.broken:
        raise VerificationFailed(f"{candidate} outputs NaN/Inf where {reference} does not: "
                                 f"{', '.join(result.broken)}")


def _render_verification(result) -> None:
    console = _console()
    console.print(f"onnx.checker: {result.checker}; inputs: {result.inputs}")
    for o in result.outputs:
        if o.kind == "float":
            argmax = "" if o.argmax_agreement is None else f", argmax {o.argmax_agreement:.2%} agree"
            console.print(f"{o.name}: relative error {o.relative_error:.3e}, max abs {o.max_abs_error:.3e}{argmax}")
        else:
            console.print(f"{o.name}: {o.agreement:.2%} of elements equal")


@main.command("profile")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--provider", default="cpu", show_default=True,
              help="execution provider: cpu, cuda, tensorrt, dml, webgpu, migraphx, openvino, coreml or a full name")
@click.option("--device", help="predict with a device model instead of measuring (rx580, gtx1060, ..., host, host-roofline)")
@click.option("--batch", "batches", type=_POSITIVE, multiple=True, help="batch size (repeatable; default 1)")
@click.option("--compare", "compare_with", type=click.Path(path_type=Path),
              help="a second model, timed interleaved with MODEL; ratios are MODEL's speedup over it")
@click.option("--runs", type=_POSITIVE, default=30, show_default=True)
@click.option("--warmup", type=_COUNT, default=5, show_default=True)
@click.option("--threads", type=_COUNT, default=0, show_default=True, help="intra-op threads (0: all cores)")
@click.option("--optimization", type=click.Choice(["none", "basic", "extended", "all"]), default="all",
              show_default=True, help="onnxruntime graph optimization level")
@click.option("--top", type=_COUNT, default=10, show_default=True, help="rows of the per-op and per-node tables")
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option("--inputs", type=click.Path(), help=".npz of real inputs: timed at its first sample's shapes "
                                                  "(needed for integer inputs)")
@click.option("--json", "as_json", is_flag=True)
def profile_cmd(model, provider, device, batches, compare_with, runs, warmup, threads, optimization, top, shapes,
                inputs, as_json):
    """Latency, FLOPs, params, size and memory of MODEL; per-op and per-node tables."""
    from tensorfold.api import profile

    if runs < 1 or warmup < 0 or any(b < 1 for b in batches):
        raise TensorfoldError("--runs and --batch must be >= 1, --warmup >= 0")
    info = profile(model, provider=provider, device=device, batches=tuple(batches) or (1,), runs=runs, warmup=warmup,
                   threads=threads, optimization=optimization, compare_with=compare_with, top=top, shapes=shapes,
                   inputs=inputs)
    if as_json:
        _echo_json(info)
        return
    console = _console()
    where = f"predicted for {info['device']}" if info["device"] else f"measured on {info['provider']}"
    console.print(f"[bold]{info['model']}[/]: {info['params']:,} params, {_flops(info['flops'])} FLOPs (batch 1), "
                  f"{info['size_bytes']:,} bytes; latency {where}")
    console.print("timed at input shapes " + ", ".join(f"{k} {v}" for k, v in info["input_shapes"].items())
                  + f" (batch 1; from {info['shapes_from']})")
    for warning in info["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if "compare" in info:
        c = info["compare"]
        console.print(f"vs {c['model']}: {c['params']:,} params, {_flops(c['flops'])} FLOPs, {c['size_bytes']:,} bytes")
    table = Table(title="latency (ms)", title_justify="left")
    for col in ("batch", "FLOPs", "min", "median", "p90", "other median", "speedup"):
        table.add_column(col, justify="right")
    for batch, row in info["batches"].items():
        if "predicted_ms" in row:
            table.add_row(batch, _flops(row["flops"]), "", f"{row['predicted_ms']:.3f}", "",
                          f"{row['compare_predicted_ms']:.3f}" if "compare_predicted_ms" in row else "",
                          f"{row['predicted_speedup']:.2f}x" if "predicted_speedup" in row else "")
            continue
        lat = row["latency"]
        other = row.get("compare_latency")
        table.add_row(batch, _flops(row["flops"]), f"{lat['min_ms']:.3f}", f"{lat['median_ms']:.3f}",
                      f"{lat['p90_ms']:.3f}", f"{other['median_ms']:.3f}" if other else "",
                      f"{row['speedup']:.2f}x" if other else "")
    console.print(table)
    if info.get("ops"):
        ops = Table(title="time by op type (onnxruntime profiler, batch %s)" % next(iter(info["batches"])),
                    title_justify="left")
        for col in ("op", "nodes", "ms", "share"):
            ops.add_column(col, justify="left" if col == "op" else "right")
        for r in info["ops"]:
            ops.add_row(r["op"], str(r["nodes"]), f"{r['ms']:.4f}", f"{r['share']:.1%}")
        console.print(ops)
        nodes = Table(title=f"top {len(info['nodes'])} nodes", title_justify="left")
        for col in ("node", "op", "ms", "share"):
            nodes.add_column(col, justify="right" if col in ("ms", "share") else "left")
        for r in info["nodes"]:
            nodes.add_row(r["node"], r["op"], f"{r['ms']:.4f}", f"{r['share']:.1%}")
        console.print(nodes)
        console.print(f"process peak RSS: {info['peak_rss_mb']:.0f} MB")
    if info.get("graph_nodes"):
        graph = Table(title=f"top {len(info['graph_nodes'])} graph nodes by FLOPs (batch 1)", title_justify="left")
        for col in ("node", "op", "FLOPs", "params"):
            graph.add_column(col, justify="right" if col in ("FLOPs", "params") else "left")
        for r in info["graph_nodes"]:
            graph.add_row(r["node"], r["op"], _flops(r["flops"]), f"{r['params']:,}")
        console.print(graph)


@main.command("recover")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--teacher", type=click.Path(path_type=Path), multiple=True,
              help="the original model to distill from (repeat for a multi-teacher ensemble)")
@click.option("--teacher-weights", help="weights of the teachers in the ensemble, e.g. 0.7,0.3")
@click.option("--peer", "peers", type=click.Path(path_type=Path), multiple=True,
              help="another factorized model trained alongside by deep mutual learning (written to OUT.peerN.onnx)")
@click.option("--generations", type=_POSITIVE, default=1, show_default=True,
              help="born-again distillation: each generation learns from the previous one")
@click.option("--data", default="fashion-mnist", show_default=True,
              help="fashion-mnist, a folder (Fashion-MNIST IDX or CIFAR-10 batches) or an .npz (x, optional y)")
@click.option("--epochs", type=_COUNT, default=1, show_default=True)
@click.option("--max-steps", type=_POSITIVE, help="stop after this many steps")
@click.option("--lr", type=_POSITIVE_FLOAT, default=2e-3, show_default=True)
@click.option("--batch-size", type=_POSITIVE, default=128, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "plateau"]), default="cosine", show_default=True)
@click.option("--distill", type=click.Choice(["hinton", "feature", "both", "none"]), default="both", show_default=True)
@click.option("--temperature", type=_POSITIVE_FLOAT, default=4.0, show_default=True)
@click.option("--alpha", type=_Finite(0, 1), default=0.5, show_default=True, help="weight of the KD loss vs the labels")
@click.option("--patience", type=_POSITIVE, help="early stop after this many evaluations without improvement")
@click.option("--eval-every", type=_POSITIVE,
              help="validate every N steps (default: once per epoch); --patience and --schedule plateau count these")
@click.option("--torch-device", default="cpu", show_default=True, help="where torch trains: cpu, cuda, cuda:N, mps")
@click.option("--threads", type=_COUNT, default=0, show_default=True, help="torch and onnxruntime threads (0: all)")
@click.option("--normalize", help="MEAN,STD per channel after [0,1] scaling, e.g. 0.5,0.5")
@click.option("--seed", type=_COUNT, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="continue from the checkpoint in OUTPUT.ckpt/")
@click.option("--json", "as_json", is_flag=True)
def recover_cmd(model, output, teacher, teacher_weights, peers, generations, data, epochs, max_steps, lr, batch_size,
                optimizer, schedule, distill, temperature, alpha, patience, eval_every, torch_device, threads,
                normalize, seed, resume, as_json):
    """Fine-tune MODEL (distilled from --teacher) and write the same graph with trained weights."""
    from tensorfold.recovery.finetune import RecoverConfig, check_torch_device
    from tensorfold.recovery.run import recover

    if epochs < 0 or (max_steps is not None and max_steps < 1) or batch_size < 1 or lr <= 0:
        raise TensorfoldError("--epochs >= 0, --max-steps >= 1, --batch-size >= 1 and --lr > 0 are required")
    if not 0 <= alpha <= 1 or temperature <= 0:
        raise TensorfoldError("--alpha must be in [0, 1] and --temperature > 0")
    norm = None
    if normalize:
        try:
            mean, std = (float(v) for v in normalize.split(","))
        except ValueError:
            raise TensorfoldError(f"--normalize '{normalize}': expected MEAN,STD") from None
        norm = ([mean], [std])
    cfg = RecoverConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, optimizer=optimizer,
                        schedule=schedule, distill=distill, temperature=temperature, alpha=alpha, patience=patience,
                        eval_every=eval_every, seed=seed, threads=threads, device=check_torch_device(torch_device))
    weights = None
    if teacher_weights:
        try:
            weights = [float(w) for w in teacher_weights.split(",")]
        except ValueError:
            raise TensorfoldError(f"--teacher-weights '{teacher_weights}': expected numbers like 0.7,0.3") from None
    report = recover(model, output, teacher_path=list(teacher), data=data, cfg=cfg, normalize=norm, resume=resume,
                     progress=not as_json and sys.stderr.isatty(), teacher_weights=weights, generations=generations,
                     peers=list(peers))
    if as_json:
        _echo_json(report)
        return
    console = _console()
    table = Table(title=f"tensorfold recover — {report['data']}", title_justify="left")
    for col in ("", "before", "after"):
        table.add_column(col, justify="right" if col else "left")
    for key in ("accuracy", "teacher_agreement"):
        if key in report["val_before"]:
            table.add_row(f"validation {key}", f"{report['val_before'][key]:.2%}", f"{report['val_after'][key]:.2%}")
    test = report["test_accuracy"]
    if test:
        table.add_row("test accuracy", f"{test['student_before']:.2%}", f"{test['student_after']:.2%}")
        if "teacher" in test:
            table.add_row("test accuracy, teacher", f"{test['teacher']:.2%}", "")
    console.print(table)
    console.print(f"validation: {report['validation']}")
    console.print(f"{report['steps']} steps in {report['seconds']:.0f} s; {report['stop']}; "
                  f"{report['features_matched']} layer outputs matched to the teacher's")
    console.print(f"checkpoints {report['checkpoints']}, history {report['history']}"
                  + (f", plot {report['plot']}" if report["plot"] else ""))
    console.print(f"wrote {report['output']}")


@main.group("bench", invoke_without_command=True)
@click.option("--suite", type=click.Choice(["smoke", "fashion-mnist-cpu", "fashion-mnist"]), default="smoke",
              show_default=True, help="smoke: minutes; fashion-mnist-cpu: width 0.25; fashion-mnist: full width (GPU)")
@click.option("--models", help="comma-separated zoo models (resnet18,resnet34,resnet50,vgg16,mobilenetv2,mobilenetv1)")
@click.option("--methods", help="comma-separated methods (tucker,cp,tt,svd,auto)")
@click.option("--ratios", help="comma-separated compression ratios over the factorizable layers")
@click.option("--width", type=_POSITIVE_FLOAT, help="width multiplier of the zoo models")
@click.option("--epochs", type=_COUNT, help="baseline training epochs")
@click.option("--steps", type=_COUNT, help="recovery steps per row")
@click.option("--data", default="fashion-mnist", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="folder for rows.jsonl and the models; an existing one resumes")
@click.pass_context
def bench_cmd(ctx, suite, models, methods, ratios, width, epochs, steps, data, output):
    """Benchmark suite: compress, recover and measure zoo models beside int8 quantization."""
    if ctx.invoked_subcommand is not None:
        return
    from dataclasses import replace

    from tensorfold.paths import cache_dir
    from tensorfold.bench.runner import SUITES, Suite, run_suite
    from tensorfold.bench.zoo import ZOO

    cfg = dict(SUITES[suite])
    if models:
        cfg["models"] = tuple(m.strip() for m in models.split(","))
        unknown = [m for m in cfg["models"] if m not in ZOO]
        if unknown:
            raise TensorfoldError(f"unknown model(s) {unknown} (zoo: {', '.join(ZOO)})")
    if methods:
        cfg["methods"] = tuple(m.strip() for m in methods.split(","))
        from tensorfold.passes import METHODS

        unknown = [m for m in cfg["methods"] if m not in METHODS]
        if unknown:
            raise TensorfoldError(f"unknown method(s) {unknown}")
    if ratios:
        try:
            cfg["ratios"] = tuple(float(r) for r in ratios.split(","))
        except ValueError:
            raise TensorfoldError(f"--ratios '{ratios}': expected numbers like 4,8") from None
    if width:
        cfg["width"] = width
    if epochs:
        cfg["recipe"] = replace(cfg["recipe"], epochs=epochs)
    if steps:
        cfg["steps"] = steps
    import torch

    label = f"{suite} suite, baseline trained on {'cuda' if torch.cuda.is_available() else 'cpu'}"
    rows = run_suite(Suite(**cfg, data=data, label=label), output, cache_dir() / "baselines",
                     progress=sys.stderr.isatty(), log=lambda m: click.echo(m, err=True))
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
@click.option("--objectives", default="params,error", show_default=True,
              help="comma-separated: params, flops, latency, error, accuracy")
@click.option("--n-trials", type=_POSITIVE, default=50, show_default=True, help="trials this worker runs")
@click.option("--timeout", type=_POSITIVE_FLOAT, help="stop starting new trials after this many seconds")
@click.option("--sampler", type=click.Choice(["auto", "tpe", "gp", "nsga2", "random"]), default="auto",
              show_default=True, help="auto: TPE for one objective, NSGA-II for several")
@click.option("--population", type=_POSITIVE, help="NSGA-II generation size (default: n-trials/5, 6..50)")
@click.option("--methods", default="svd,tucker", show_default=True, help="methods a layer may take: svd,tucker,cp,tt")
@click.option("--space", type=click.Choice(["auto", "per-layer", "global"]), default="auto", show_default=True,
              help="per-layer method and size, or a global ratio with offsets for the largest layers")
@click.option("--include", multiple=True, help="only nodes whose name matches this glob (repeatable)")
@click.option("--exclude", multiple=True, help="leave nodes whose name matches this glob (repeatable)")
@click.option("--storage", help="sqlite:///FILE, journal:FILE, or a database URL (postgresql://...); default in memory")
@click.option("--study", help="study name; a worker naming an existing study adds its trials to it")
@click.option("--max-error", type=_POSITIVE_FLOAT, help="constraint: output error at most this")
@click.option("--target-latency", type=_POSITIVE_FLOAT, help="constraint: latency at most this many ms")
@click.option("--provider", default="cpu", show_default=True, help="execution provider for the latency objective")
@click.option("--device", help="predict latency with a device model instead (rx580, gtx1060, ..., host, host-roofline)")
@click.option("--threads", type=_COUNT, default=0, show_default=True)
@click.option("--data", help="labelled data for the accuracy objective (fashion-mnist, a folder, an .npz)")
@click.option("--recover-steps", type=_COUNT, default=100, show_default=True,
              help="accuracy objective: distilled fine-tuning steps per trial before validation (0: none)")
@click.option("--shape", "shapes", multiple=True, help=_SHAPE_HELP)
@click.option("--inputs", type=click.Path(), help=".npz of real inputs for the error objective")
@click.option("--seed", type=_COUNT, default=0, show_default=True)
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("pareto"), show_default=True,
              help="front.json, front.png, and per Pareto point a config (point-K.yaml) and its model")
@click.option("--no-models", is_flag=True, help="write configs only, not each Pareto point's model")
@click.option("--json", "as_json", is_flag=True)
def search_ranks_cmd(model, objectives, n_trials, timeout, sampler, population, methods, space, include, exclude,
                     storage, study, max_error, target_latency, provider, device, threads, data, recover_steps, shapes,
                     inputs, seed, output_dir, no_models, as_json):
    """Search per-layer methods and ranks of MODEL for the Pareto front of OBJECTIVES."""
    from tensorfold.search.ranks import search_ranks

    report = search_ranks(model, objectives=objectives, n_trials=n_trials, timeout=timeout, sampler=sampler,
                          population=population, methods=methods, space=space, include=include, exclude=exclude,
                          storage=storage, study=study, seed=seed, max_error=max_error,
                          target_latency=target_latency, provider=provider, device=device, threads=threads,
                          data=data, recover_steps=recover_steps, shapes=shapes, inputs=inputs,
                          output_dir=output_dir, save_models=not no_models,
                          progress=not as_json and sys.stderr.isatty())
    if as_json:
        _echo_json(report)
    else:
        _render_search(report)
    if report.get("interrupted"):
        raise KeyboardInterrupt("the front covers the trials finished before it")


@search_group.command("nas")
@click.option("--strategy", type=click.Choice(["darts", "evolution", "random"]), default="evolution", show_default=True)
@click.option("--objectives", default="accuracy", show_default=True,
              help="comma-separated: accuracy, params, flops, latency (several: NSGA-II for evolution)")
@click.option("--data", default="fashion-mnist", show_default=True, help="labelled 28x28 images: fashion-mnist, a folder, an .npz")
@click.option("--budget-minutes", type=_POSITIVE_FLOAT, default=10.0, show_default=True, help="wall-clock budget of the search")
@click.option("--device", help="predict latency for this device (rx580, gtx1060, ...); the host is always measured")
@click.option("--provider", default="cpu", show_default=True, help="provider the host latency is measured on")
@click.option("--threads", type=_COUNT, default=0, show_default=True, help="torch and onnxruntime threads (0: all)")
@click.option("--teacher", type=click.Path(path_type=Path), help="ONNX model to distill the final training from")
@click.option("--genotype", type=click.Path(path_type=Path), help="skip the search: train this genotype (JSON)")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write the trained network as ONNX")
@click.option("--output-dir", type=click.Path(path_type=Path),
              help="model.onnx, genotype.json, candidates.json, front.png, report.json")
@click.option("--channels", type=_POSITIVE, default=8, show_default=True, help="channels of the first cells")
@click.option("--layers", type=_POSITIVE, default=5, show_default=True, help="cells (reductions at 1/3 and 2/3)")
@click.option("--nodes", type=_POSITIVE, default=3, show_default=True, help="intermediate nodes per cell")
@click.option("--train-size", type=_POSITIVE, default=4000, show_default=True, help="training images the search uses")
@click.option("--val-size", type=_POSITIVE, default=1000, show_default=True, help="held-out training images that score candidates")
@click.option("--proxy-steps", type=_POSITIVE, default=100, show_default=True, help="SGD steps that score one candidate")
@click.option("--final-steps", type=_POSITIVE, default=600, show_default=True, help="SGD steps of the final training")
@click.option("--final-channels", type=_POSITIVE, help="channels of the final network (default: --channels)")
@click.option("--order", type=click.Choice(["1", "2"]), default="1", show_default=True, help="DARTS: first or second order")
@click.option("--guard", type=click.Choice(["earlystop", "aux-skip", "none"]), default="earlystop", show_default=True,
              help="DARTS collapse guard: DARTS+ early stop on skip dominance, or DARTS- auxiliary skip")
@click.option("--population", type=_POSITIVE, default=10, show_default=True, help="evolution: population size")
@click.option("--max-latency", type=_POSITIVE_FLOAT,
              help="constraint: latency (ms; --device's prediction, else measured on the host) at most this")
@click.option("--torch-device", default="cpu", show_default=True, help="where torch trains (cpu, cuda, cuda:1, ...)")
@click.option("--seed", type=_COUNT, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def search_nas_cmd(strategy, objectives, data, budget_minutes, device, provider, threads, teacher, genotype, output,
                   output_dir, channels, layers, nodes, train_size, val_size, proxy_steps, final_steps, final_channels,
                   order, guard, population, max_latency, torch_device, seed, as_json):
    """Search a cell architecture on DATA, train it, export it to ONNX and measure it."""
    from tensorfold.search.nas.run import search_nas

    report = search_nas(strategy=strategy, objectives=objectives, data=data, budget_minutes=budget_minutes,
                        device=device, provider=provider, threads=threads, teacher=teacher, genotype=genotype,
                        output=output, output_dir=output_dir, channels=channels, layers=layers, nodes=nodes,
                        train_size=train_size, val_size=val_size, proxy_steps=proxy_steps, final_steps=final_steps,
                        final_channels=final_channels, order=int(order), guard=guard, population=population,
                        max_latency=max_latency, torch_device=torch_device, seed=seed,
                        progress=not as_json and sys.stderr.isatty())
    if as_json:
        _echo_json(report)
        return
    _render_nas(report)


def _render_nas(report: dict) -> None:
    console = _console()
    f = report["final"]
    console.print(f"[bold]{report['strategy']}[/] on {report['data']}: {report['candidates']} candidate(s) in "
                  f"{report['search_seconds']:.0f} s (budget {report['budget_minutes']:g} min)")
    if report.get("darts"):
        d = report["darts"]
        console.print(f"DARTS: {d['epochs']} epoch(s), {d['steps']} steps, {d['stopped']}; peak memory "
                      f"{d['peak_memory_mb']:.0f} MB")
    console.print(f"proxy: {report['proxy']}")
    console.print(f"genotype: {f['genotype_text']}")
    table = Table(title="final network", title_justify="left")
    for col in ("test accuracy", "params", "FLOPs", "host latency", "device latency", "training"):
        table.add_column(col, justify="right")
    acc = f"{100 * f['test_accuracy']:.2f}%" if f.get("test_accuracy") is not None else "-"
    dev = f"{f['device_ms']:.3f} ms ({f['device']}, predicted)" if f.get("device_ms") else "-"
    table.add_row(acc, f"{f['params']:,}", _flops(f["flops"]), f"{f['host_ms']:.3f} ms", dev,
                  f"{f['steps']} steps{' distilled' if f['distilled_from'] else ''}")
    console.print(table)
    for key in ("output", "model", "plot"):
        if report.get(key):
            console.print(f"{key}: {report[key]}")


@main.command("pipeline")
@click.option("--data", default="fashion-mnist", show_default=True)
@click.option("--strategy", type=click.Choice(["darts", "evolution", "random"]), default="evolution", show_default=True)
@click.option("--budget-minutes", type=_POSITIVE_FLOAT, default=10.0, show_default=True, help="architecture search budget")
@click.option("--teacher", type=click.Path(path_type=Path), required=True,
              help="ONNX model the found network is distilled from")
@click.option("--device", help="also predict latency for this device (rx580, ...)")
@click.option("--proxy-steps", type=_POSITIVE, default=100, show_default=True, help="SGD steps that score one candidate")
@click.option("--train-size", type=_POSITIVE, default=4000, show_default=True, help="training images the search uses")
@click.option("--final-steps", type=_POSITIVE, default=600, show_default=True)
@click.option("--final-channels", type=_POSITIVE, default=16, show_default=True)
@click.option("--method", default="auto", show_default=True, help="factorization for the decomposition stage")
@click.option("--ratio", type=_POSITIVE_FLOAT, default=2.0, show_default=True,
              help="the factorizable layers together hold RATIO times fewer parameters")
@click.option("--recover-steps", type=_COUNT, default=300, show_default=True)
@click.option("--hardware-aware/--no-hardware-aware", default=True, show_default=True,
              help="keep a factor chain only where it is faster on the CPU provider")
@click.option("--threads", type=_COUNT, default=0, show_default=True)
@click.option("--seed", type=_COUNT, default=0, show_default=True)
@click.option("--output-dir", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def pipeline_cmd(data, strategy, budget_minutes, teacher, device, proxy_steps, train_size, final_steps, final_channels,
                 method, ratio, recover_steps, hardware_aware, threads, seed, output_dir, as_json):
    """NAS -> distillation -> decomposition -> recovery, each stage measured and kept in OUTPUT_DIR."""
    from tensorfold.pipeline import run_pipeline

    report = run_pipeline(data=data, strategy=strategy, budget_minutes=budget_minutes, teacher=teacher, device=device,
                          final_steps=final_steps, final_channels=final_channels, method=method, ratio=ratio,
                          recover_steps=recover_steps, threads=threads, seed=seed, output_dir=output_dir,
                          hardware_aware=hardware_aware, proxy_steps=proxy_steps, train_size=train_size,
                          progress=not as_json and sys.stderr.isatty())
    if as_json:
        _echo_json(report)
        return
    console = _console()
    table = Table(title=f"pipeline ({report['output_dir']})", title_justify="left")
    for col in ("stage", "model", "test accuracy", "params", "FLOPs", "host latency"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for s in report["stages"]:
        acc = f"{100 * s['test_accuracy']:.2f}%" if s.get("test_accuracy") is not None else "-"
        table.add_row(s["stage"], s["model"], acc, f"{s['params']:,}", _flops(s["flops"]), f"{s['host_ms']:.3f} ms")
    console.print(table)
    for note in report["optimize"]["notes"]:
        console.print(f"decomposition: {note}")


def _render_search(report: dict) -> None:
    console = _console()
    t = report["trials"]
    console.print(f"[bold]{report['model']}[/]  study {report['study']} ({report['storage']}), "
                  f"{report['space']['mode']} space over {report['space']['layers']} layers "
                  f"({', '.join(report['space']['methods'])})")
    per = report["seconds_per_trial"]["median"]
    console.print(f"{t['this_run']} trials this run, {t['total']} in the study: {t['complete']} complete, "
                  f"{t['failed']} failed, {t['infeasible']} infeasible"
                  + (f"; {per:.2f} s per trial (median)" if per else ""))
    for f in report["failures"][:3]:
        console.print(f"  trial {f['trial']} failed: {f['reason']}")
    objectives = report["objectives"]
    table = Table(title=f"Pareto front ({len(report['front'])} points; hypervolume {report['hypervolume']:.4f})",
                  title_justify="left")
    for col in ("#", "trial", *objectives, "layers", "verified", "config"):
        table.add_column(col, justify="left" if col in ("config", "verified") else "right")
    base = report["baseline"]
    table.add_row("orig", "-", *[_objective(o, base[o], base) for o in objectives], "0", "-", "")
    for p in report["front"]:
        verified = "yes" if p["verified"] else f"NO: {p.get('verify_error', '')[:40]}"
        table.add_row(str(p["point"]), str(p["trial"]), *[_objective(o, p["values"][o], base) for o in objectives],
                      str(p.get("layers_rewritten", "")), verified, p.get("config", ""))
    console.print(table)
    if report.get("plot"):
        console.print(f"plot: {report['plot']}")
    if "error" in objectives and str(report.get("inputs", "")).startswith("random"):
        console.print("[yellow]error was measured on random inputs; pass --inputs file.npz with real ones for an "
                      "error that reflects the model's use[/]")
    if report.get("interrupted"):
        console.print("[yellow]interrupted: the front above covers the trials finished so far[/]")


def _objective(name: str, value: float, base: dict) -> str:
    if name in ("params", "flops"):
        ratio = base[name] / value if value else float("inf")
        return f"{_flops(value) if name == 'flops' else f'{int(value):,}'} ({ratio:.1f}x)"
    if name == "latency":
        return f"{value:.3f} ms ({base['latency'] / value:.2f}x)" if value else "-"
    if name == "accuracy":
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


DEMO_OUTPUT = Path("results/demo/fmnist_cnn.tucker.onnx")    # out of the way of a checkout's files


def demo_model_path() -> Path:
    return Path(str(resources.files("tensorfold") / "data" / "fmnist_cnn.onnx"))


@main.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=DEMO_OUTPUT, show_default=True)
@click.option("--ratio", type=_POSITIVE_FLOAT, default=4.0, show_default=True)
@click.option("--recover-steps", type=_COUNT, default=200, show_default=True,
              help="fine-tune the result with distillation when Fashion-MNIST is installed (0: skip)")
def demo_cmd(output, ratio, recover_steps):
    """Factorize the built-in Fashion-MNIST CNN with Tucker-2, show the report, then recover it."""
    from tensorfold.api import optimize

    src = demo_model_path()
    made = [p for p in reversed(output.parents) if not p.exists()] if output == DEMO_OUTPUT else []
    for folder in made:
        folder.mkdir()
    console = _console()
    console.print(f"demo: {src.name}, a 3-conv CNN trained on Fashion-MNIST; tucker --ratio {ratio:g}")
    try:
        report = optimize(src, output, method="tucker", ratio=ratio, progress=sys.stderr.isatty())
    except BaseException:
        for folder in reversed(made):       # a demo that failed leaves nothing behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    report.render(console)
    if not _demo_accuracy(console, src, output) or recover_steps <= 0:
        return
    from tensorfold.recovery.finetune import RecoverConfig
    from tensorfold.recovery.run import recover

    recovered = Path(output).with_name(Path(output).stem + ".rec.onnx")
    console.print(f"recover: {recover_steps} steps of distillation from the original (Hinton KD + each chain's "
                  f"output matched to its layer's) ...")
    r = recover(output, recovered, teacher_path=src, cfg=RecoverConfig(max_steps=recover_steps),
                progress=sys.stderr.isatty())
    test = r["test_accuracy"]
    console.print(f"Fashion-MNIST test accuracy, recovered: {test['student_after']:.2%} after {r['steps']} steps "
                  f"({r['seconds']:.0f} s); wrote {recovered}")


def _demo_accuracy(console, original: Path, rewritten: Path) -> bool:
    """Test-set accuracy before and after, when Debian's dataset-fashion-mnist is installed."""
    try:
        from tensorfold.datasets import load_fashion_mnist, to_model_input
        images, labels = load_fashion_mnist(split="test")
    except TensorfoldError as exc:
        console.print(f"(accuracy not measured: {exc})")
        return False
    from tensorfold.runtime.evaluation import evaluate_onnx

    x = to_model_input(images)
    for label, path in (("original", original), ("tucker", rewritten)):
        console.print(f"Fashion-MNIST test accuracy, {label}: {evaluate_onnx(path, x, labels):.2%} (no fine-tuning)")
    return True


def _echo_json(obj) -> None:
    """One JSON object on stdout: NaN and infinities become null (bare NaN is not JSON)."""
    click.echo(json_text(obj))


def _console() -> Console:
    # piped output (CI logs, files) is read later in full: don't wrap tables at 80 columns
    return Console() if sys.stdout.isatty() else Console(width=200)


def _flops(v) -> str:
    if v is None:
        return "unknown"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(v)


if __name__ == "__main__":
    main()
