"""What a NAS run writes: the report, candidates, front, final model and the plot."""

from __future__ import annotations

import json
from pathlib import Path

from tensorfold.outputs import OutputFolder
from tensorfold.search.nas.space import NetConfig, Network, to_onnx

# what a NAS run writes in its --output-dir (outputs.OutputFolder: nothing else there is touched)
OUTPUT_NAMES = (
    "model.onnx",
    "model.onnx.data",
    "genotype.json",
    "candidates.json",
    "front.png",
    "front.json",
    "report.json",
    "point-*.json",
    "point-*.onnx",
    "point-*.onnx.data",
)


def write_dir(folder: OutputFolder, report, candidates, front, final, model, dev, cfg: NetConfig | None = None) -> None:
    """model.onnx (the final network), genotype.json, candidates.json, front.png; with several
    objectives (`cfg` given) also every Pareto point as point-K.onnx (its proxy-trained network) and
    point-K.json (genotype, objectives, metrics), and front.json, as `search ranks` writes its front."""
    from tensorfold.graph.io import save_model
    from tensorfold.outputs import write_text_atomic

    if cfg is not None:
        points = []
        for k, s in enumerate(front, start=1):
            point = {
                "point": k,
                "candidate": s.number,
                "genotype": s.genotype.as_dict(),
                "values": dict(zip(report["objectives"], s.values)),
                "metrics": s.metrics,
            }
            write_text_atomic(folder.file(f"point-{k}.json"), json.dumps(point, indent=2))
            if s.weights is not None:
                net = Network(s.genotype, cfg)
                net.load_state_dict(s.weights)
                save_model(to_onnx(net), folder.file(f"point-{k}.onnx"))
                point["model"] = str(folder.path / f"point-{k}.onnx")
            points.append(point)
        write_text_atomic(
            folder.file("front.json"), json.dumps({"objectives": report["objectives"], "points": points}, indent=2)
        )
        report["front_points"] = len(points)
    save_model(model, folder.file("model.onnx"))
    report["model"] = str(folder.path / "model.onnx")
    write_text_atomic(folder.file("genotype.json"), json.dumps({"genotype": final["genotype"]}, indent=2))
    write_text_atomic(folder.file("candidates.json"), json.dumps([c.as_dict() for c in candidates], indent=2))
    plot = plot_nas(candidates, front, folder.file("front.png"), dev.name if dev else None)
    report["plot"] = str(folder.path / "front.png") if plot else None


def plot_nas(candidates, front, path: Path, device: str | None) -> Path | None:
    """Accuracy against host-measured latency, and against the device's predicted latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [c for c in candidates if "accuracy" in c.metrics]
    if not scored:
        return None
    keys = [("host_ms", "host latency, measured (ms)")] + (
        [("device_ms", f"{device} latency, predicted (ms)")] if device else []
    )
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    on_front = {c.number for c in front}
    for ax, (key, label) in zip(axes[0], keys):
        ax.scatter(
            [c.metrics[key] for c in scored],
            [c.metrics["accuracy"] for c in scored],
            s=12,
            color="0.6",
            label="candidates",
        )
        f = [c for c in scored if c.number in on_front]
        ax.scatter(
            [c.metrics[key] for c in f],
            [c.metrics["accuracy"] for c in f],
            s=30,
            color="tab:red",
            label="front",
            zorder=3,
        )
        ax.set_xlabel(label)
        ax.set_ylabel("proxy accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from tensorfold.outputs import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
