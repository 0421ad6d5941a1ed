"""The report of `recover`: validation before/after, test accuracy where labels exist, where it wrote."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tensorfold.report.base import Report


class RecoverReport(Report):
    def render(self, console: Console) -> None:
        table = Table(title=f"tensorfold recover — {self['data']}", title_justify="left")
        for col in ("", "before", "after"):
            table.add_column(col, justify="right" if col else "left")
        for key in ("accuracy", "teacher_agreement", "output_error"):
            if key in self["val_before"] and key in self["val_after"]:
                fmt = "{:.4f}" if key == "output_error" else "{:.2%}"
                mark = " (selects)" if key == self.get("metric") else ""
                table.add_row(
                    f"validation {key.replace('_', ' ')}{mark}",
                    fmt.format(self["val_before"][key]),
                    fmt.format(self["val_after"][key]),
                )
        test = self["test_accuracy"]
        if test:
            table.add_row("test accuracy", f"{test['student_before']:.2%}", f"{test['student_after']:.2%}")
            if "teacher" in test:
                table.add_row("test accuracy, teacher", f"{test['teacher']:.2%}", "")
        console.print(table)
        console.print(f"validation: {self['validation']}")
        if self.get("outputs"):
            console.print(f"outputs: {self['outputs']}")
        precision = (self.get("config") or {}).get("precision", "fp32")
        console.print(
            f"{self['steps']} steps ({precision}) in {self['seconds']:.0f} s; {self['stop']}; "
            f"{self['features_matched']} layer outputs matched to the teacher's"
        )
        console.print(
            f"checkpoints {self['checkpoints']}, history {self['history']}"
            + (f", plot {self['plot']}" if self["plot"] else "")
        )
        console.print(f"wrote {self['output']}")
