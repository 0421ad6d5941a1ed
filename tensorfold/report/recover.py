"""The report of `recover`: validation before/after, test accuracy where labels exist, where it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from tensorfold.report.base import NOT_JSON, Report


@dataclass(kw_only=True)
class RecoverReport(Report):
    """Under torchrun only rank 0 reports the run; the other ranks' reports hold `rank` (> 0),
    world_size, output (None), steps and stop, and every other field keeps its default."""

    peers: list[dict[str, Any]] = field(default_factory=list)  # --peer: each one's output and validation
    student: str = ""
    teacher: str | list[str] | None = None
    generations: list[dict[str, float]] = field(default_factory=list)  # each generation's validation
    output: str | None
    data: str = ""
    train_size: int = 0
    val_size: int = 0
    validation: str = ""  # what the validation samples are
    metric: str = ""  # what validation selects on: accuracy, teacher_agreement or output_error
    outputs: str = ""  # how the model's outputs are matched to the teacher's
    world_size: int
    config: dict[str, Any] = field(default_factory=dict)  # the RecoverConfig as run
    features_matched: int = 0
    trained: str = ""  # which weights trained (recovery/trainable.py)
    val_before: dict[str, float] = field(default_factory=dict)
    val_after: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] | None = None  # the best evaluation: its step and metrics
    test_accuracy: dict[str, float] = field(default_factory=dict)  # student_before/after, teacher
    steps: int
    stop: str
    checkpoints: str = ""
    history: str = ""
    plot: str | None = None
    seconds: float = 0.0
    rank: int = field(default=0, metadata=NOT_JSON)

    def as_dict(self) -> dict[str, Any]:
        if self.rank:
            return {
                "rank": self.rank,
                "world_size": self.world_size,
                "output": self.output,
                "steps": self.steps,
                "stop": self.stop,
            }
        return super().as_dict()

    def render(self, console: Console) -> None:
        table = Table(title=f"tensorfold recover — {self.data}", title_justify="left")
        for col in ("", "before", "after"):
            table.add_column(col, justify="right" if col else "left")
        for key in ("accuracy", "teacher_agreement", "output_error"):
            if key in self.val_before and key in self.val_after:
                fmt = "{:.4f}" if key == "output_error" else "{:.2%}"
                mark = " (selects)" if key == self.metric else ""
                table.add_row(
                    f"validation {key.replace('_', ' ')}{mark}",
                    fmt.format(self.val_before[key]),
                    fmt.format(self.val_after[key]),
                )
        test = self.test_accuracy
        if test:
            table.add_row("test accuracy", f"{test['student_before']:.2%}", f"{test['student_after']:.2%}")
            if "teacher" in test:
                table.add_row("test accuracy, teacher", f"{test['teacher']:.2%}", "")
        console.print(table)
        console.print(f"validation: {self.validation}")
        if self.outputs:
            console.print(f"outputs: {self.outputs}")
        precision = self.config.get("precision", "fp32")
        console.print(
            f"{self.steps} steps ({precision}"
            + (f", {self.config['batch']}" if self.config.get("batch") else "")
            + f") in {self.seconds:.0f} s; {self.stop}; "
            f"{self.features_matched} layer outputs matched to the teacher's"
            + (f"; {self.trained}" if self.trained else "")
        )
        console.print(
            f"checkpoints {self.checkpoints}, history {self.history}" + (f", plot {self.plot}" if self.plot else "")
        )
        console.print(f"wrote {self.output}")
