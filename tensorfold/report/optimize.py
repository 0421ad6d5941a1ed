"""The report of `optimize`: one JSON object, or before/after tables for a terminal."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from tensorfold.graph.stats import ModelStats
from tensorfold.graph.verify import Verification
from tensorfold.passes.base import LayerRecord
from tensorfold.passes.layers import Skip
from tensorfold.report.base import Report, fmt_bytes, fmt_count, fmt_ratio, ratio


@dataclass
class OptimizeReport(Report):
    input: str
    output: str | None
    method: str
    ranks: str
    input_shapes: dict[str, Any]
    before: ModelStats
    after: ModelStats
    layers: list[LayerRecord]
    skipped: list[Skip]
    verification: Verification | None
    normalization: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the user should act on (printed in yellow)
    eligible_params: tuple[int, int] = (0, 0)  # weights of the layers the method could rewrite, before/after
    # target, input ms, speedup: hardware-aware runs, and every other rewrite timed against its input
    latency: dict[str, Any] | None = None
    stages: list[dict[str, Any]] = field(
        default_factory=list
    )  # with calibration/int8: params, size, held-out error per stage
    budget_search: list[dict[str, Any]] | None = None  # --max-output-error: every ratio tried and its held-out error
    recovery: dict[str, Any] | None = None  # --recover: steps, rate, data; without a bound, before/after
    deploy: dict[str, Any] | None = None  # --int8/--objective: every candidate, measured, and the one picked

    def as_dict(self) -> dict[str, Any]:
        # the stats flattened into keys, with their ratios: not the fields as they stand
        return {
            "input": self.input,
            "output": self.output,
            "method": self.method,
            "ranks": self.ranks,
            "input_shapes": self.input_shapes,
            "params_before": self.before.params,
            "params_after": self.after.params,
            "params_ratio": ratio(self.before.params, self.after.params),
            "flops_before": self.before.flops,
            "flops_after": self.after.flops,
            "flops_ratio": ratio(self.before.flops, self.after.flops),
            "size_before": self.before.size_bytes,
            "size_after": self.after.size_bytes,
            "ops_before": dict(sorted(self.before.ops.items())),
            "ops_after": dict(sorted(self.after.ops.items())),
            "factorizable_params_before": self.eligible_params[0],
            "factorizable_params_after": self.eligible_params[1],
            "factorizable_ratio": ratio(*self.eligible_params),
            "layers": [r.as_dict() for r in self.layers],
            "skipped": [s.as_dict() for s in self.skipped],
            "verification": self.verification.as_dict() if self.verification else None,
            "normalization": self.normalization,
            "notes": self.notes,
            "warnings": self.warnings,
            "latency": self.latency,
            "stages": self.stages,
            "budget_search": self.budget_search,
            "deploy": self.deploy,
            **({"recovery": self.recovery} if self.recovery is not None else {}),
            "seconds": round(self.seconds, 3),
        }

    def render(self, console: Console) -> None:
        summary = Table(title=f"tensorfold optimize — {self.method}, {self.ranks}", title_justify="left")
        summary.add_column("")
        summary.add_column("before", justify="right")
        summary.add_column("after", justify="right")
        summary.add_column("ratio", justify="right")
        summary.add_row(
            "parameters",
            f"{self.before.params:,}",
            f"{self.after.params:,}",
            fmt_ratio(self.before.params, self.after.params),
        )
        if self.eligible_params[0]:
            summary.add_row(
                "  in factorizable layers",
                f"{self.eligible_params[0]:,}",
                f"{self.eligible_params[1]:,}",
                fmt_ratio(*self.eligible_params),
            )
        summary.add_row(
            "FLOPs",
            fmt_count(self.before.flops),
            fmt_count(self.after.flops),
            fmt_ratio(self.before.flops, self.after.flops),
        )
        summary.add_row(
            "size",
            fmt_bytes(self.before.size_bytes),
            fmt_bytes(self.after.size_bytes),
            fmt_ratio(self.before.size_bytes, self.after.size_bytes),
        )
        ops = sorted(set(self.before.ops) | set(self.after.ops))
        for op in ops:
            b, a = self.before.ops.get(op, 0), self.after.ops.get(op, 0)
            summary.add_row(f"  {op} nodes", str(b), str(a), "" if a == b else f"{a - b:+d}")
        if self.latency:
            lat = self.latency
            summary.add_row(
                f"latency, {lat['target']}",
                f"{lat['input_ms']:.3f} ms",
                f"{lat['input_ms'] / lat['speedup']:.3f} ms",
                f"{lat['speedup']:.2f}x",
            )
            summary.add_row("  timed at", "", ", ".join(f"{k} {v}" for k, v in self.input_shapes.items()), "")
        if self.verification:
            for o in self.verification.outputs:
                value = f"{o.relative_error:.3e} rel. error" if o.kind == "float" else f"{o.agreement:.2%} agree"
                if o.argmax_agreement is not None:
                    value += f", argmax {o.argmax_agreement:.2%} agree"
                if notes := o.channel_notes():
                    value += f"; {notes}"
                summary.add_row(f"output {o.name}", "", value, "")
        console.print(summary)
        if self.verification:
            spread = self.verification.interval
            console.print(
                f"verified on: {self.verification.inputs}; worst output error "
                f"{self.verification.max_error:.3e} (relative L2 of float outputs, share of changed "
                "elements of integer outputs and of argmaxes on class axes)"
                + (
                    f"; 90% bootstrap interval {spread[0]:.3e}-{spread[1]:.3e} over its {self.verification.interval_samples} samples"
                    if spread is not None
                    else ""
                )
            )
        if self.stages:
            stages = Table(title="stages", title_justify="left")
            for col in ("stage", "params", "size", "max rel. output error", "max argmax disagreement"):
                stages.add_column(col, justify="left" if col == "stage" else "right")
            for row in self.stages:
                err = row.get("max_relative_error")
                dis = row.get("max_disagreement")
                stages.add_row(
                    row["stage"],
                    f"{row['params']:,}",
                    fmt_bytes(row["size_bytes"]),
                    "" if err is None else f"{err:.3e}",
                    "" if err is None else "-" if dis is None else f"{dis:.2%}",  # -: no class axis
                )
            console.print(stages)
        if self.deploy:
            _render_deploy(self.deploy, console)
        if self.budget_search and any("before_recovery" in t for t in self.budget_search):
            _render_recovered_search(self.budget_search, console)
        elif self.budget_search:
            trials = ", ".join(
                f"{t['ratio']:.2f}x {'ok' if t['within'] else 'over'} ({t['max_relative_error']:.3f})"
                for t in self.budget_search
            )
            console.print(f"budget search (ratio over factorizable layers, held-out error): {trials}")
        if self.recovery:
            how = self.recovery
            each = " per candidate" if self.budget_search else ""  # --ratio: one candidate
            line = f"recovery: {how['steps']} steps{each} at lr {how['lr']:.2g} ({how['lr_from']}) on {how['data']}"
            if how.get("batch"):
                line += f", {how['batch']}"
            if how.get("trained"):
                line += f"; {how['trained']}"
            if how.get("before") is not None and how.get("after") is not None:
                line += f"; held-out error {how['before']:.4f} -> {how['after']:.4f} in {how['seconds']:.0f} s"
            if how.get("kept_start"):
                line += "; no step improved on validation, so the factorized weights are written as they were"
            # the stages say what was written; with --int8/--objective the candidates table does
            if self.budget_search and self.stages and not any(s["stage"] == "recovered" for s in self.stages):
                line += "; no recovered candidate met the bound, so the unrecovered answer is written"
            if how.get("recomputed_candidates"):
                line += (
                    f"; {how['recomputed_candidates']} candidate(s) recomputed their largest factor chains in the "
                    "backward pass, whose intermediates would have held more memory a sample than the input model"
                )
            if how.get("resumed_candidates"):
                line += f"; {how['resumed_candidates']} candidate(s) taken from the interrupted run's checkpoints"
            console.print(line)
        if self.layers:
            layers = Table(title=f"rewritten layers ({len(self.layers)})", title_justify="left")
            data = any(r.output_error is not None for r in self.layers)
            cols = ("node", "op", "method", "ranks", "params", "weight error") + (
                ("layer output error",) if data else ()
            )
            for col in cols:
                layers.add_column(
                    col, justify="right" if col in ("params", "weight error", "layer output error") else "left"
                )
            for r in self.layers:
                cells = [
                    r.node,
                    r.op,
                    r.method,
                    ",".join(map(str, r.ranks)),
                    f"{r.params_before:,} -> {r.params_after:,}",
                    f"{r.weight_error:.3f}",
                ]
                if data:
                    cells.append("" if r.output_error is None else f"{r.output_error:.3f}")
                layers.add_row(*cells)
            console.print(layers)
        if self.skipped:
            reasons = Counter(s.reason for s in self.skipped)
            skipped = Table(title=f"skipped nodes ({len(self.skipped)})", title_justify="left")
            skipped.add_column("nodes", justify="right")
            skipped.add_column("reason")
            skipped.add_column("example")
            for reason, n in reasons.most_common():
                example = next(s.node for s in self.skipped if s.reason == reason)
                skipped.add_row(str(n), reason, example)
            console.print(skipped)
        for warning in self.warnings:
            console.print(f"[yellow]warning: {warning}[/]")
        for note in self.notes:
            console.print(f"note: {note}")
        if self.output:
            console.print(f"wrote {self.output} in {self.seconds:.1f} s")


def _render_recovered_search(trials: list[dict[str, Any]], console: Console) -> None:
    """Each candidate of a search with --recover: the unrefined search's, then the recovered ones
    above its answer, with the held-out error before and after recovery and its time."""
    table = Table(title="budget search (held-out error; recovery above the unrecovered answer)", title_justify="left")
    for col in ("ratio", "factorizable params", "start", "before recovery", "after", "recovery", "within"):
        table.add_column(col, justify="right")
    for t in trials:
        recovered = "before_recovery" in t
        table.add_row(
            f"{t['ratio']:.2f}x",
            f"{t['factorizable_params_after']:,}",
            t.get("start", "cold") if recovered else "-",
            f"{t['before_recovery']:.4f}" if recovered else f"{t['max_relative_error']:.4f}",
            _after(t) if recovered else "-",
            f"{t['recovery_seconds']:.0f} s" if recovered else "-",
            "yes" if t["within"] else "no",
        )
    console.print(table)


def _after(trial: dict[str, Any]) -> str:
    """A recovered candidate's held-out error: the recovered model's, or the candidate's own where
    recovery made it worse on the held-out share (and what recovery had reached)."""
    if "recovered_not_kept" in trial:
        worse = f"recovered {trial['recovered_not_kept']:.4f}"
        disagreement = trial.get("recovered_not_kept_disagreement")
        if disagreement is not None and disagreement > max(trial["recovered_not_kept"], trial["max_disagreement"]):
            # the argmax disagreement decided (the larger of the two, as the bound judges)
            worse += f", argmax disagreement {disagreement:.1%} against {trial['max_disagreement']:.1%}"
        return f"{trial['max_relative_error']:.4f} ({worse}: not kept)"
    return f"{trial['max_relative_error']:.4f}"


def _render_deploy(deploy: dict[str, Any], console: Console) -> None:
    """The candidates side by side (same held-out samples, timed together) and the int8 details."""
    title = f"candidates (objective: {deploy['objective']}; chosen: {deploy['chosen']})"
    table = Table(title=title, title_justify="left")
    for col in ("candidate", "params", "size", "held-out error", "per output", "speed vs input", "within bound"):
        table.add_column(col, justify="left" if col in ("candidate", "per output") else "right")
    for c in deploy["candidates"]:
        outputs = "; ".join(
            f"{o['name']}: "
            + (f"{o['relative_error']:.3g}" if o["relative_error"] is not None else f"{o['agreement']:.1%} equal")
            + (f", argmax {o['argmax_agreement']:.1%}" if o["argmax_agreement"] is not None else "")
            for o in (c["outputs"] or [])
        )
        speed = "" if c["speedup"] is None else f"{c['speedup']:.2f}x"
        mark = "* " if c["name"] == deploy["chosen"] else "  "
        table.add_row(
            mark + c["name"] + (" (recovered)" if c.get("recovered") else ""),
            f"{c['params']:,}",
            fmt_bytes(c["size_bytes"]),
            "reference" if c["outputs"] is None else f"{c['max_error']:.3e}",
            outputs,
            speed,
            "yes" if c["within"] else "no",
        )
    console.print(table)
    if deploy["latency"]:
        console.print(f"speed: {deploy['latency']}")
    for c in deploy["candidates"]:  # the written candidate's only: the others' are in --json
        q = c["int8"]
        if not q or not q["float_nodes"] or c["name"] != deploy["chosen"]:
            continue
        shown = list(q["float_nodes"].items())[:8]
        more = len(q["float_nodes"]) - len(shown)
        console.print(
            f"{c['name']}: {len(q['float_nodes'])} node(s) left in float: "
            + "; ".join(f"{n} ({why})" for n, why in shown)
            + (f"; and {more} more (--json)" if more else "")
        )
