"""Benchmark report: a Markdown table per model, the JSON rows, and plots (accuracy vs compression
with its Pareto front and the int8 points; latency vs compression)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tensorfold.errors import TensorfoldError
from tensorfold.log import warn
from tensorfold.outputs import atomic_path, check_output_dir, write_text_atomic


def load_rows(results: Path) -> list[dict]:
    path = results / "rows.jsonl" if results.is_dir() else results
    if not path.exists():
        raise TensorfoldError(f"{path}: no benchmark rows (run `tensorfold bench` first)")
    rows = {}
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise TensorfoldError(f"{path}: not benchmark rows (one JSON object per line)") from None
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[row["key"]] = row  # a re-run row replaces the older one
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines) and not text.endswith("\n"):  # a run killed while writing its last row
                warn(f"{path}: line {number} was cut short (an interrupted run) and is left out")
                break
            raise TensorfoldError(
                f"{path}: line {number} is not a benchmark row (one JSON object per line): "
                f"{str(exc).splitlines()[0][:160]}"
            ) from None
    return list(rows.values())


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (compression, accuracy) not beaten on both by another point."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(front)


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def markdown(rows: list[dict]) -> str:
    by_model = defaultdict(list)
    for r in rows:
        by_model[(r["model"], r["width"], r.get("label", ""))].append(r)
    out = []
    for (model, width, label), items in sorted(by_model.items()):
        out += [
            f"### {model} (width {width:g}{', ' + label if label else ''})",
            "",
            "| method | ratio | int8 | params x | FLOPs x | size x | accuracy | loss (pt) | compressed acc. "
            "| latency x b1 | latency x b32 | peak MB b32 |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(items, key=lambda r: (r["method"] != "original", r["method"], r["ratio"], r["int8"])):
            if "error" in r:
                out.append(
                    f"| {r['method']} | {r['ratio']:g} | {'yes' if r['int8'] else ''} | failed: {r['error']} "
                    f"| | | | | | | | |"
                )
                continue
            out.append(
                f"| {r['method']} | {r['ratio']:g} | {'yes' if r['int8'] else ''} | {r['params_ratio']:.2f} | "
                f"{_fmt(r.get('flops_ratio'), '.2f')} | {r['size_ratio']:.2f} | {r['accuracy']:.2%} | "
                f"{r['accuracy_loss'] * 100:+.2f} | {_fmt(r.get('compressed_accuracy'), '.2%')} | "
                f"{r['latency_ratio_b1']:.2f} | {r['latency_ratio_b32']:.2f} | "
                f"{_fmt(r.get('peak_memory_mb_b32'), '.0f')} |"
            )
        first = items[0]
        out += [
            "",
            f"Baseline: {first['baseline_train'].get('data', '')}, trained "
            f"{first['baseline_train']['recipe']['epochs']} epochs on {first['baseline_train']['device']} "
            f"({first['baseline_train']['train_seconds']} s). Rows: {first['date'][:10]}, {first['machine']}, "
            f"onnxruntime {first['onnxruntime']}, torch {first['torch']}. Latency x = original time / this "
            "time, interleaved runs on the CPU provider; size x = file size ratio; int8 = onnxruntime static "
            "QDQ quantization (uint8 activations, int8 per-channel weights, MinMax: quantize/baseline.py), calibrated on training images.",
            "",
        ]
    return "\n".join(out)


def plots(rows: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_model = defaultdict(list)
    for r in rows:
        if "error" not in r:
            by_model[(r["model"], r["width"])].append(r)
    paths = []
    for (model, width), items in sorted(by_model.items()):
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for method in sorted({r["method"] for r in items}):
            for int8, marker in ((False, "o"), (True, "^")):
                pts = [
                    (r["size_ratio"], r["accuracy"], r["latency_ratio_b1"])
                    for r in items
                    if r["method"] == method and r["int8"] == int8
                ]
                if pts:
                    label = f"{method}{' int8' if int8 else ''}"
                    ax[0].scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
                    ax[1].scatter([p[0] for p in pts], [p[2] for p in pts], marker=marker, label=label)
        front = pareto([(r["size_ratio"], r["accuracy"]) for r in items])
        ax[0].plot(*zip(*front), "k--", lw=0.8, label="Pareto front")
        ax[0].set_xscale("log")
        ax[0].set_xlabel("compression (file size ratio)")
        ax[0].set_ylabel("test accuracy")
        ax[0].legend(fontsize=7)
        ax[1].set_xscale("log")
        ax[1].axhline(1.0, color="grey", lw=0.6)
        ax[1].set_xlabel("compression (file size ratio)")
        ax[1].set_ylabel("speedup vs original, batch 1")
        fig.suptitle(f"{model} (width {width:g})")
        fig.tight_layout()
        path = out_dir / f"{model}-w{width:g}.png"
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(results: Path, out_dir: Path) -> dict:
    rows = load_rows(results)
    check_output_dir(out_dir, "-o")
    text = "# Benchmark suite\n\nGenerated by `tensorfold bench report`.\n\n" + markdown(rows)
    images = plots(rows, out_dir)
    text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n"
    write_text_atomic(out_dir / "bench.md", text)
    write_text_atomic(out_dir / "bench.json", json.dumps(rows, indent=1))
    return {
        "rows": len(rows),
        "markdown": str(out_dir / "bench.md"),
        "json": str(out_dir / "bench.json"),
        "plots": [str(p) for p in images],
    }


def publish(lines: list[str], out: Path | None) -> str:
    """Print a benchmark tool's Markdown and, when asked, write it atomically to `out`."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        write_text_atomic(out, text)
    return text
