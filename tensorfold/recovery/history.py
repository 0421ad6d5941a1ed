"""The loss and validation history of a recovery run, and its plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tensorfold.outputs import atomic_path


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)  # the learning rate of each step, beside its loss

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plot_history(history: History, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(history.steps, history.loss, lw=0.8)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("training loss")
    ax[0].set_yscale("log")
    for key in ("accuracy", "teacher_agreement", "output_error"):
        pts = [(e["step"], e[key]) for e in history.evals if key in e]
        if pts:
            ax[1].plot(*zip(*pts), marker="o", label=key.replace("_", " "))
    ax[1].set_xlabel("step")
    if history.evals:
        ax[1].legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
