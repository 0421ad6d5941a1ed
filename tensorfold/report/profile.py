"""The report of `profile`: latency per batch (measured or predicted), per-op and per-node tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tensorfold.report.base import Report, fmt_count, warn


class ProfileReport(Report):
    def render(self, console: Console) -> None:
        where = f"predicted for {self['device']}" if self["device"] else f"measured on {self['provider']}"
        console.print(
            f"[bold]{self['model']}[/]: {self['params']:,} params, {fmt_count(self['flops'])} FLOPs "
            f"(batch 1), {self['size_bytes']:,} bytes; latency {where}"
        )
        console.print(
            "timed at input shapes "
            + ", ".join(f"{k} {v}" for k, v in self["input_shapes"].items())
            + f" (batch 1; from {self['shapes_from']})"
        )
        for warning in self["warnings"]:
            warn(warning)
        if "compare" in self:
            c = self["compare"]
            console.print(
                f"vs {c['model']}: {c['params']:,} params, {fmt_count(c['flops'])} FLOPs, {c['size_bytes']:,} bytes"
            )
        table = Table(title="latency (ms)", title_justify="left")
        for col in ("batch", "FLOPs", "min", "median", "p90", "other median", "speedup", "memory (pred.)"):
            table.add_column(col, justify="right")
        for batch, row in self["batches"].items():
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
        if self.get("ops"):
            self._render_profiler(console)
        if self.get("graph_nodes"):
            graph = Table(title=f"top {len(self['graph_nodes'])} graph nodes by FLOPs (batch 1)", title_justify="left")
            for col in ("node", "op", "FLOPs", "params"):
                graph.add_column(col, justify="right" if col in ("FLOPs", "params") else "left")
            for r in self["graph_nodes"]:
                graph.add_row(r["node"], r["op"], fmt_count(r["flops"]), f"{r['params']:,}")
            console.print(graph)

    def _render_profiler(self, console: Console) -> None:
        ops = Table(
            title=f"time by op type (onnxruntime profiler, batch {next(iter(self['batches']))})", title_justify="left"
        )
        for col in ("op", "nodes", "ms", "share"):
            ops.add_column(col, justify="left" if col == "op" else "right")
        for r in self["ops"]:
            ops.add_row(r["op"], str(r["nodes"]), f"{r['ms']:.4f}", f"{r['share']:.1%}")
        console.print(ops)
        nodes = Table(title=f"top {len(self['nodes'])} nodes", title_justify="left")
        for col in ("node", "op", "ms", "share"):
            nodes.add_column(col, justify="right" if col in ("ms", "share") else "left")
        for r in self["nodes"]:
            nodes.add_row(r["node"], r["op"], f"{r['ms']:.4f}", f"{r['share']:.1%}")
        console.print(nodes)
        console.print(f"process peak RSS: {self['peak_rss_mb']:.0f} MiB")
