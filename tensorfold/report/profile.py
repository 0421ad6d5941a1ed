"""The report of `profile`: latency per batch (measured or predicted), per-op and per-node tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from tensorfold.report.base import Report, fmt_count, sometimes, warn


@dataclass(kw_only=True)
class ProfileReport(Report):
    model: str
    params: int
    flops: int | None  # batch 1
    size_bytes: int
    provider: str | None  # measured on it, or None
    device: str | None  # predicted for it, or None
    # batch -> flops and the latency model's row (measured min/median/p90, or predicted_ms), predicted_memory
    batches: dict[str, dict[str, Any]]
    input_shapes: dict[str, list[int]]
    shapes_from: str
    warnings: list[str]
    graph_nodes: list[dict[str, Any]]  # the top nodes by FLOPs (batch 1): node, op, flops, params
    compare: dict[str, Any] | None = sometimes()  # with compare_with: its model, params, flops, size_bytes
    # measured runs only: onnxruntime's profiler by op type and by node, and the process's peak RSS
    ops: list[dict[str, Any]] | None = sometimes()
    nodes: list[dict[str, Any]] | None = sometimes()
    peak_rss_mb: float | None = sometimes()
    profiled_runs: int | None = sometimes()  # the warm calls the profiler's tables average

    def render(self, console: Console) -> None:
        where = f"predicted for {self.device}" if self.device else f"measured on {self.provider}"
        console.print(
            f"[bold]{self.model}[/]: {self.params:,} params, {fmt_count(self.flops)} FLOPs "
            f"(batch 1), {self.size_bytes:,} bytes; latency {where}"
        )
        others = [b for b in self.batches if b != "1"]
        console.print(
            "input shapes "
            + ", ".join(f"{k} {v}" for k, v in self.input_shapes.items())
            + f" (batch 1; from {self.shapes_from})"
            + (
                f"; the table times batch {', '.join(self.batches)} (the first axis repeated)"
                if others
                else ", timed as they are"
            )
        )
        for warning in self.warnings:
            warn(warning)
        c = self.compare
        if c is not None:
            console.print(
                f"vs {c['model']}: {c['params']:,} params, {fmt_count(c['flops'])} FLOPs, {c['size_bytes']:,} bytes"
            )
        table = Table(title="latency (ms)", title_justify="left")
        for col in ("batch", "FLOPs", "min", "median", "p90", "other median", "speedup", "memory (pred.)"):
            table.add_column(col, justify="right")
        for batch, row in self.batches.items():
            memory = f"{row['predicted_memory']['total_mb']:.1f} MiB" if row.get("predicted_memory") else ""
            if "predicted_ms" in row:
                table.add_row(
                    batch,
                    fmt_count(row["flops"]),
                    "",
                    f"{row['predicted_ms']:.3f}",
                    "",
                    f"{row['compare_predicted_ms']:.3f}" if "compare_predicted_ms" in row else "",
                    f"{row['predicted_speedup']:.2f}x" if "predicted_speedup" in row else "",
                    memory,
                )
                continue
            lat = row["latency"]
            other = row.get("compare_latency")
            table.add_row(
                batch,
                fmt_count(row["flops"]),
                f"{lat['min_ms']:.3f}",
                f"{lat['median_ms']:.3f}",
                f"{lat['p90_ms']:.3f}",
                f"{other['median_ms']:.3f}" if other else "",
                f"{row['speedup']:.2f}x" if other else "",
                memory,
            )
        console.print(table)
        if self.ops:  # a measured run: the profiler's tables (nodes and peak RSS come with them)
            self._render_profiler(console, self.ops, self.nodes or [], self.peak_rss_mb or 0.0)
        if self.graph_nodes:
            graph = Table(title=f"top {len(self.graph_nodes)} graph nodes by FLOPs (batch 1)", title_justify="left")
            for col in ("node", "op", "FLOPs", "params"):
                graph.add_column(col, justify="right" if col in ("FLOPs", "params") else "left")
            for r in self.graph_nodes:
                graph.add_row(r["node"], r["op"], fmt_count(r["flops"]), f"{r['params']:,}")
            console.print(graph)

    def _render_profiler(
        self, console: Console, op_rows: list[dict[str, Any]], node_rows: list[dict[str, Any]], peak_rss_mb: float
    ) -> None:
        calls = f", mean of {self.profiled_runs} calls" if self.profiled_runs else ""
        ops = Table(
            title=f"time by op type (onnxruntime profiler, batch {next(iter(self.batches))}{calls})",
            title_justify="left",
        )
        for col in ("op", "nodes", "ms", "share"):
            ops.add_column(col, justify="left" if col == "op" else "right")
        for r in op_rows:
            ops.add_row(r["op"], str(r["nodes"]), f"{r['ms']:.4f}", f"{r['share']:.1%}")
        console.print(ops)
        nodes = Table(title=f"top {len(node_rows)} nodes (ms: mean per call)", title_justify="left")
        for col in ("node", "op", "ms", "share"):
            nodes.add_column(col, justify="right" if col in ("ms", "share") else "left")
        for r in node_rows:
            nodes.add_row(r["node"], r["op"], f"{r['ms']:.4f}", f"{r['share']:.1%}")
        console.print(nodes)
        console.print(f"process peak RSS: {peak_rss_mb:.0f} MiB")
