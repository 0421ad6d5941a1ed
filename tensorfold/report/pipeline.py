"""The report of `pipeline`: every stage (teacher, NAS, decomposition, recovery, int8) measured
alike, latencies timed round-robin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from tensorfold.report.base import Report, fmt_bytes, fmt_count


@dataclass(kw_only=True)
class PipelineReport(Report):
    output_dir: str
    # per stage: stage, model, test_accuracy, params, size_bytes, flops, host_ms, rx580_ms, peak_bytes
    stages: list[dict[str, Any]]
    nas: dict[str, Any]  # the search's strategy, candidates, proxy, search_seconds, chosen
    notes: list[str]
    optimize: dict[str, Any]  # the decomposition's layers_rewritten, notes, latency, verification
    recover: dict[str, Any]  # steps, stop, seconds
    # each later stage against the teacher (pipeline.against_teacher): the plan's four numbers
    against_teacher: list[dict[str, Any]] = field(default_factory=list)
    # the answer for the target device: target, stage, model (pipeline.final_stage)
    final: dict[str, Any] = field(default_factory=dict)

    def render(self, console: Console) -> None:
        table = Table(title=f"pipeline ({self.output_dir})", title_justify="left")
        cols = (
            "stage",
            "model",
            "test accuracy",
            "params",
            "size",
            "FLOPs",
            "CPU latency",
            "RX 580 (pred.)",
            "peak mem",
        )
        for col in cols:
            table.add_column(col, justify="left" if col in ("stage", "model") else "right")
        for s in self.stages:
            acc = f"{100 * s['test_accuracy']:.2f}%" if s.get("test_accuracy") is not None else "-"
            table.add_row(
                s["stage"],
                s["model"],
                acc,
                f"{s['params']:,}",
                fmt_bytes(s["size_bytes"]) if "size_bytes" in s else "-",
                fmt_count(s["flops"]),
                f"{s['host_ms']:.3f} ms",
                f"{s['rx580_ms']:.3f} ms" if "rx580_ms" in s else "-",
                fmt_bytes(s["peak_bytes"]) if s.get("peak_bytes") else "-",
            )
        console.print(table)
        if self.against_teacher:
            vs = Table(title="against the teacher", title_justify="left")
            for col in ("stage", "params", "bytes", "accuracy lost", "CPU speedup", "RX 580 speedup", "memory saved"):
                vs.add_column(col, justify="left" if col == "stage" else "right")
            for r in self.against_teacher:
                saved = r.get("memory_saved")
                vs.add_row(
                    r["stage"],
                    f"{r['params_x']:.1f}x",
                    f"{r['bytes_x']:.1f}x",
                    f"{r['accuracy_loss_pt']:+.2f} pt",
                    f"{r['cpu_speedup']:.2f}x",
                    f"{r['rx580_speedup']:.2f}x",
                    f"{100 * saved:.0f}%" if saved is not None else "-",
                )
            console.print(vs)
        if self.final:
            console.print(f"answer for {self.final['target']}: {self.final['model']} ({self.final['stage']})")
        for note in self.notes:
            console.print(f"note: {note}")
        for note in self.optimize["notes"]:
            console.print(f"decomposition: {note}")
