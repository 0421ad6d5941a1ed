"""The report of `pipeline`: every stage (teacher, NAS, decomposition, recovery, int8) measured
alike, latencies timed round-robin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from tensorfold.report.base import Report, fmt_count


@dataclass(kw_only=True)
class PipelineReport(Report):
    output_dir: str
    stages: list[dict[str, Any]]  # per stage: stage, model, test_accuracy, params, flops, host_ms
    nas: dict[str, Any]  # the search's strategy, candidates, proxy, search_seconds, chosen
    notes: list[str]
    optimize: dict[str, Any]  # the decomposition's layers_rewritten, notes, latency, verification
    recover: dict[str, Any]  # steps, stop, seconds

    def render(self, console: Console) -> None:
        table = Table(title=f"pipeline ({self.output_dir})", title_justify="left")
        for col in ("stage", "model", "test accuracy", "params", "FLOPs", "host latency"):
            table.add_column(col, justify="left" if col in ("stage", "model") else "right")
        for s in self.stages:
            acc = f"{100 * s['test_accuracy']:.2f}%" if s.get("test_accuracy") is not None else "-"
            table.add_row(
                s["stage"], s["model"], acc, f"{s['params']:,}", fmt_count(s["flops"]), f"{s['host_ms']:.3f} ms"
            )
        console.print(table)
        for note in self.notes:
            console.print(f"note: {note}")
        for note in self.optimize["notes"]:
            console.print(f"decomposition: {note}")
