"""The Pareto front of a study's trials, its hypervolume, and a plot.

Hypervolume is computed on normalized objectives, all minimized: params, flops, latency and memory as a
share of the original model's, error as is, accuracy as its loss against the original
(original accuracy - accuracy). The reference point is 1.0 for every objective (no saving, an
error as large as the output, or losing the whole accuracy), so fronts from different samplers
and seeds are compared in one fixed box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tensorfold.search.constraints import from_user_attrs
from tensorfold.search.objectives import DIRECTIONS


def feasible(trial) -> bool:
    return all(c <= 0 for c in from_user_attrs(trial))


def dominates(a, b) -> bool:
    """a, b: values already turned into minimization."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def minimized(values, objectives) -> list[float]:
    return [v if DIRECTIONS[o] == "minimize" else -v for v, o in zip(values, objectives)]


def front(trials, objectives) -> list:
    """Complete, feasible, non-dominated trials, one per distinct point, sorted by the first objective."""
    points = [t for t in trials if t.state.name == "COMPLETE" and t.values is not None and feasible(t)]
    keyed = [(minimized(t.values, objectives), t) for t in points]
    out, seen = [], set()
    for v, t in keyed:
        if any(dominates(w, v) for w, _ in keyed):
            continue
        key = tuple(round(x, 12) for x in v)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return sorted(out, key=lambda t: minimized(t.values, objectives))


def normalize(values, objectives, baseline: dict) -> list[float]:
    out = []
    for v, o in zip(values, objectives):
        if o in ("params", "flops", "latency", "memory"):
            out.append(v / baseline[o] if baseline.get(o) else v)
        elif o == "accuracy":
            out.append(baseline.get("accuracy", 1.0) - v)
        else:
            out.append(v)
    return out


def hypervolume(points: list[list[float]], reference: list[float]) -> float:
    """Exact dominated hypervolume of minimization points inside the reference box (slicing over the
    first objective; fine for the tens of points a search front holds)."""
    pts = [p for p in points if all(x < r for x, r in zip(p, reference))]
    if not pts:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[0])
    total = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else reference[0]
        if upper > p[0]:
            total += (upper - p[0]) * hypervolume([q[1:] for q in pts[: i + 1]], reference[1:])
    return total


def front_hypervolume(trials, objectives, baseline: dict) -> float:
    pts = [normalize(t.values, objectives, baseline) for t in front(trials, objectives)]
    return hypervolume(pts, [1.0] * len(objectives))


def plot_front(trials, objectives, path: Path, baseline: dict | None = None, title: str = "") -> Path | None:
    """All trials in grey, infeasible ones as crosses, the front in colour; one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t.state.name == "COMPLETE" and t.values is not None]
    if not done:
        return None
    best = front(trials, objectives)
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))] or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        if i == j:  # one objective: value by trial number
            ax.plot([t.number for t in done], [t.values[0] for t in done], ".", color="0.6")
            ax.set_xlabel("trial")
            ax.set_ylabel(objectives[0])
            continue
        ok = [t for t in done if feasible(t)]
        bad = [t for t in done if not feasible(t)]
        ax.scatter([t.values[i] for t in ok], [t.values[j] for t in ok], s=12, color="0.65", label="trials")
        if bad:
            ax.scatter(
                [t.values[i] for t in bad],
                [t.values[j] for t in bad],
                s=14,
                marker="x",
                color="0.8",
                label="infeasible",
            )
        fx = [t.values[i] for t in best]
        fy = [t.values[j] for t in best]
        ax.scatter(fx, fy, s=30, color="tab:red", label="Pareto front", zorder=3)
        for k, (x, y) in enumerate(zip(fx, fy), start=1):
            ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        if baseline and objectives[i] in baseline and objectives[j] in baseline:
            ax.scatter(
                [baseline[objectives[i]]],
                [baseline[objectives[j]]],
                marker="*",
                s=90,
                color="tab:blue",
                label="original",
                zorder=3,
            )
        ax.set_xlabel(objectives[i])
        ax.set_ylabel(objectives[j])
        if objectives[i] in ("params", "flops"):
            ax.set_xscale("log")
        if objectives[j] == "error":
            shown = fy + [t.values[j] for t in ok + bad]
            if baseline and "error" in baseline and objectives[i] in baseline:
                shown.append(baseline["error"])
            scale, settings = error_scale(shown)
            ax.set_yscale(scale, **settings)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    from tensorfold.outputs import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def error_scale(values: list[float]) -> tuple[str, dict[str, float]]:
    """The y scale of an error axis: log, or symlog where a point sits at error 0 (the original
    model is the reference, error 0, which a log axis leaves out), linear below the smallest
    non-zero error."""
    positive = [v for v in values if v > 0]
    if not positive:
        return "linear", {}
    if len(positive) == len(values):
        return "log", {}
    return "symlog", {"linthresh": min(positive)}


def spread(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
