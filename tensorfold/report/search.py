"""The reports of `search ranks` (a Pareto front of rank configurations) and `search nas` (the
architecture found and its final training)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tensorfold.report.base import Report, fmt_count


class RankSearchReport(Report):
    def render(self, console: Console) -> None:
        t = self["trials"]
        console.print(
            f"[bold]{self['model']}[/]  study {self['study']} ({self['storage']}), "
            f"{self['space']['mode']} space over {self['space']['layers']} layers "
            f"({', '.join(self['space']['methods'])})"
        )
        per = self["seconds_per_trial"]["median"]
        console.print(
            f"{t['this_run']} trials this run, {t['total']} in the study: {t['complete']} complete, "
            f"{t['failed']} failed, {t['infeasible']} infeasible" + (f"; {per:.2f} s per trial (median)" if per else "")
        )
        for f in self["failures"][:3]:
            console.print(f"  trial {f['trial']} failed: {f['reason']}")
        objectives = self["objectives"]
        table = Table(
            title=f"Pareto front ({len(self['front'])} points; hypervolume {self['hypervolume']:.4f})",
            title_justify="left",
        )
        for col in ("#", "trial", *objectives, "layers", "verified", "config"):
            table.add_column(col, justify="left" if col in ("config", "verified") else "right")
        base = self["baseline"]
        table.add_row("orig", "-", *[_objective(o, base[o], base) for o in objectives], "0", "-", "")
        for p in self["front"]:
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
        if self.get("plot"):
            console.print(f"plot: {self['plot']}")
        if "error" in objectives and str(self.get("inputs", "")).startswith("random"):
            console.print(
                "[yellow]error was measured on random inputs; pass --inputs file.npz with real ones for an "
                "error that reflects the model's use[/]"
            )
        if self.get("interrupted"):
            console.print("[yellow]interrupted: the front above covers the trials finished so far[/]")


def _objective(name: str, value: float, base: dict) -> str:
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


class NasReport(Report):
    def render(self, console: Console) -> None:
        f = self["final"]
        console.print(
            f"[bold]{self['strategy']}[/] on {self['data']}: {self['candidates']} candidate(s) in "
            f"{self['search_seconds']:.0f} s; whole run {self['seconds']:.0f} s (budget "
            f"{self['budget_minutes']:g} min)"
        )
        for note in (self.get("budget") or {}).get("notes", []):
            console.print(f"budget: {note}")
        if self.get("darts"):
            d = self["darts"]
            console.print(
                f"DARTS: {d['epochs']} epoch(s), {d['steps']} steps, {d['stopped']}; peak memory "
                f"{d['peak_memory_mb']:.0f} MiB"
            )
        console.print(f"proxy: {self['proxy']}")
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
        for key in ("output", "model", "plot"):
            if self.get(key):
                console.print(f"{key}: {self[key]}")
