"""The report of `inspect`: what is in a model and which method can rewrite each layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from tensorfold.passes.layers import Skip
from tensorfold.report.base import Report, fmt_count


@dataclass(kw_only=True)
class InspectReport(Report):
    input: str
    opset: int | None
    producer: str
    inputs: dict[str, list[int]]  # the shapes counted at
    outputs: list[str]
    params: int
    flops: int | None
    size_bytes: int
    ops: dict[str, int]
    normalization: dict[str, int]
    # per weight-heavy layer: node, op, weight_shape, groups, params, flops, methods (name -> "yes" or
    # why not), weight, shared_with, and with calibration its sensitivity
    layers: list[dict[str, Any]]
    skipped: list[Skip]
    factorizable_params: int  # a weight read by several layers counts once
    calibration: str | None
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "skipped": [s.as_dict() for s in self.skipped]}

    def render(self, console: Console) -> None:
        methods = list(self.layers[0]["methods"]) if self.layers else []
        console.print(f"[bold]{self.input}[/]  opset {self.opset}  {self.producer}")
        console.print(f"inputs {self.inputs}  outputs {self.outputs}")
        console.print(
            f"{self.params:,} parameters, {fmt_count(self.flops)} FLOPs, {self.size_bytes:,} bytes; "
            f"{self.factorizable_params:,} parameters in {len(self.layers)} factorizable layers"
        )
        console.print("ops: " + ", ".join(f"{k} {v}" for k, v in self.ops.items()))
        table = Table(title="weight-heavy layers", title_justify="left")
        sens_cols = ("layer err @2x", "model err @2x") if self.calibration else ()
        for col in ("node", "op", "weight", "params", "FLOPs", *methods, *sens_cols):
            table.add_column(col, justify="right" if col in ("params", "FLOPs", *sens_cols) else "left")
        for row in self.layers:
            shape = "x".join(map(str, row["weight_shape"])) + (f" g{row['groups']}" if row["groups"] > 1 else "")
            if row["shared_with"]:
                shape += f" (shared by {len(row['shared_with']) + 1})"
            marks = ["yes" if row["methods"][m] == "yes" else "-" for m in methods]
            extra = []
            if sens_cols:
                sens = row.get("sensitivity")
                extra = [f"{sens['layer_error']:.3f}", f"{sens['model_error']:.3f}"] if sens else ["-", "-"]
            table.add_row(row["node"], row["op"], shape, f"{row['params']:,}", fmt_count(row["flops"]), *marks, *extra)
        console.print(table)
        if sens_cols:
            from tensorfold.calibration.sensitivity import PROBE_SAMPLES

            console.print(
                f"sensitivity on {self.calibration}: each layer alone at half its parameters (data-fitted "
                "Tucker-2/SVD); layer err = its relative output error, model err = the model's, on "
                f"{PROBE_SAMPLES} samples spread over the file (a rare input the cut breaks can be missed: "
                "`optimize --max-output-error` checks the whole held-out share)"
            )
        reasons: dict[str, list[str]] = {}
        for row in self.layers:
            for verdict in row["methods"].values():
                if verdict != "yes":
                    reasons.setdefault(verdict, []).append(row["node"])
        for s in self.skipped:
            reasons.setdefault(s.reason, []).append(s.node)
        for reason, nodes in reasons.items():
            console.print(f"- {reason}: {len(nodes)} node(s), e.g. {nodes[0]}")
        for warning in self.warnings:
            console.print(f"[yellow]warning: {warning}[/]")
