"""The reports of `search ranks` (a Pareto front of rank configurations) and `search nas` (the
architecture found and its final training)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from tensorfold.report.base import NOT_JSON, Report, fmt_count, sometimes


@dataclass(kw_only=True)
class RankSearchReport(Report):
    model: str
    study: str
    storage: str  # redacted, or "memory"
    objectives: list[str]
    directions: list[str]
    space: dict[str, Any]  # mode, layers, methods, ...
    evaluation: dict[str, Any]
    baseline: dict[str, float]  # the input's value of every objective measured
    trials: dict[str, int]  # total, this_run, complete, failed, infeasible
    failures: list[dict[str, Any]]  # trial, reason (the first 20)
    seconds_per_trial: dict[str, float | None]  # median, mean
    hypervolume: float
    # per Pareto point: point, trial, values, layers_rewritten, plan, verified (max_relative_error,
    # max_error, params_ratio; or verify_error), config and model where written
    front: list[dict[str, Any]]
    inputs: str
    seconds: float
    plot: str | None = None  # with --output-dir: front.png, or None where no trial completed
    interrupted: bool = False
    # the front was written to --output-dir: "plot" is a key then, even when None
    wrote_front: bool = field(default=False, metadata=NOT_JSON)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankSearchReport:
        return cls(**d, wrote_front="plot" in d)

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        if not self.wrote_front:
            del d["plot"]
        return d

    def render(self, console: Console) -> None:
        t = self.trials
        console.print(
            f"[bold]{self.model}[/]  study {self.study} ({self.storage}), "
            f"{self.space['mode']} space over {self.space['layers']} layers "
            f"({', '.join(self.space['methods'])})"
        )
        per = self.seconds_per_trial["median"]
        console.print(
            f"{t['this_run']} trials this run, {t['total']} in the study: {t['complete']} complete, "
            f"{t['failed']} failed, {t['infeasible']} infeasible" + (f"; {per:.2f} s per trial (median)" if per else "")
        )
        for f in self.failures[:3]:
            console.print(f"  trial {f['trial']} failed: {f['reason']}")
        objectives = self.objectives
        judged = [f"error on {self.inputs}"] if "error" in objectives else []
        if "latency" in objectives:  # measured on a provider or predicted for a device: say which
            judged.append(f"latency {self.evaluation.get('latency', '?')}, one call")
        if judged:
            console.print("; ".join(judged))
        table = Table(
            title=f"Pareto front ({len(self.front)} points; hypervolume {self.hypervolume:.4f})",
            title_justify="left",
        )
        for col in ("#", "trial", *objectives, "layers", "verified", "config"):
            table.add_column(col, justify="left" if col in ("config", "verified") else "right")
        base = self.baseline
        table.add_row("orig", "-", *[_objective(o, base[o], base) for o in objectives], "0", "-", "")
        for p in self.front:
            verified = "yes" if p["verified"] else f"NO: {p.get('verify_error', '')[:40]}"
            table.add_row(
                str(p["point"]),
                str(p["trial"]),
                *[_objective(o, p["values"][o], base) for o in objectives],
                str(p.get("layers_rewritten", "")),
                verified,
                p.get("config", ""),
            )
        console.print(table)
        if self.plot:
            console.print(f"plot: {self.plot}")
        if "error" in objectives and self.inputs.startswith("random"):
            console.print(
                "[yellow]error was measured on random inputs; pass --inputs file.npz with real ones for an "
                "error that reflects the model's use[/]"
            )
        if self.interrupted:
            console.print("[yellow]interrupted: the front above covers the trials finished so far[/]")


def _objective(name: str, value: float, base: dict[str, float]) -> str:
    if name in ("params", "flops"):
        ratio = base[name] / value if value else float("inf")
        return f"{fmt_count(value) if name == 'flops' else f'{int(value):,}'} ({ratio:.1f}x)"
    if name == "latency":
        return f"{value:.3f} ms ({base['latency'] / value:.2f}x)" if value else "-"
    if name == "memory":
        return f"{value:.1f} MB ({base['memory'] / value:.2f}x)" if value else "-"
    if name == "accuracy":
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


@dataclass(kw_only=True)
class NasReport(Report):
    strategy: str
    objectives: list[str]
    data: str
    budget_minutes: float
    search_seconds: float
    candidates: int
    proxy: str  # how candidates were scored
    threads: int
    budget: dict[str, Any]  # the budget's plan and its notes
    space: dict[str, Any]
    latency: dict[str, Any]
    darts: dict[str, Any] | None
    chosen: dict[str, Any]
    front: list[dict[str, Any]]
    final: dict[str, Any]  # the final network: genotype, training, test accuracy, size, latencies
    seconds: float
    output: str | None = sometimes()  # -o
    # --output-dir: the Pareto points written (several objectives), the final model and the plot
    front_points: int | None = sometimes()
    model: str | None = sometimes()
    plot: str | None = None  # a key where `model` is (--output-dir), even when None

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        if self.model is None:
            del d["plot"]
        return d

    def render(self, console: Console) -> None:
        f = self.final
        console.print(
            f"[bold]{self.strategy}[/] on {self.data}: {self.candidates} candidate(s) in "
            f"{self.search_seconds:.0f} s; whole run {self.seconds:.0f} s (budget "
            f"{self.budget_minutes:g} min)"
        )
        for note in self.budget.get("notes", []):
            console.print(f"budget: {note}")
        d = self.darts
        if d:
            console.print(
                f"DARTS: {d['epochs']} epoch(s), {d['steps']} steps, {d['stopped']}; peak memory "
                f"{d['peak_memory_mb']:.0f} MiB"
            )
        console.print(f"proxy: {self.proxy}")
        console.print(f"genotype: {f['genotype_text']}")
        table = Table(title="final network", title_justify="left")
        for col in ("test accuracy", "params", "FLOPs", "host latency", "device latency", "training"):
            table.add_column(col, justify="right")
        acc = f"{100 * f['test_accuracy']:.2f}%" if f.get("test_accuracy") is not None else "-"
        dev = f"{f['device_ms']:.3f} ms ({f['device']}, predicted)" if f.get("device_ms") else "-"
        table.add_row(
            acc,
            f"{f['params']:,}",
            fmt_count(f["flops"]),
            f"{f['host_ms']:.3f} ms",
            dev,
            f"{f['steps']} steps{' distilled' if f['distilled_from'] else ''}",
        )
        console.print(table)
        for key, value in (("output", self.output), ("model", self.model), ("plot", self.plot)):
            if value:
                console.print(f"{key}: {value}")
