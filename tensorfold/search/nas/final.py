"""The chosen network's final training (optionally distilled from a teacher), export and measurement."""

from __future__ import annotations

import numpy as np

from tensorfold.errors import TensorfoldError
from tensorfold.search.nas.options import IMAGE
from tensorfold.search.nas.scoring import net_params
from tensorfold.search.nas.space import Genotype, NetConfig, Network, to_onnx
from tensorfold.search.nas.train import train_network


def train_final(
    genotype: Genotype,
    cfg: NetConfig,
    data: str,
    steps: int,
    seed: int,
    teacher_model,
    provider: str,
    threads: int,
    dev,
    progress: bool,
    torch_device: str = "cpu",
    deadline: float | None = None,
) -> dict:
    """Train on the whole training split, test on the test split (never seen by the search)."""
    from tensorfold.datasets import load_data, prepare_inputs
    from tensorfold.graph.stats import model_stats
    from tensorfold.runtime.devices import predict_seconds
    from tensorfold.runtime.evaluation import evaluate_onnx
    from tensorfold.runtime.latency import measure

    x, y, _ = load_data(data, "train", IMAGE[1:], IMAGE[0])
    x = prepare_inputs(x, [1, *IMAGE], None)
    teacher = None
    if teacher_model is not None:
        from tensorfold.recovery.distill import OnnxTeacher

        teacher = OnnxTeacher(teacher_model, [], threads)
    net = Network(genotype, cfg)
    t = train_network(
        net,
        x,
        y.astype(np.int64),
        steps=steps,
        seed=seed,
        teacher=teacher,
        progress=progress,
        device=torch_device,
        deadline=deadline,
    )
    model = to_onnx(net)
    out = {
        "genotype": genotype.as_dict(),
        "genotype_text": str(genotype),
        "channels": cfg.channels,
        "steps": t["steps"],
        "train_seconds": round(t["seconds"], 1),
        "distilled_from": bool(teacher),
    }
    try:
        xt, yt, _ = load_data(data, "test", IMAGE[1:], IMAGE[0])
        out["test_accuracy"] = evaluate_onnx(model, prepare_inputs(xt, [1, *IMAGE], None), yt, threads=threads)
    except TensorfoldError:
        out["test_accuracy"] = None  # data with no test split
    feeds = {"input": np.random.default_rng(0).standard_normal((1, *IMAGE)).astype(np.float32)}
    out["params"] = net_params(net)
    out["flops"] = model_stats(model, {"input": [1, *IMAGE]}).flops
    out["host_ms"] = measure(model, feeds, provider, threads, warmup=5, runs=50).median
    if dev is not None:
        out["device"] = dev.name
        out["device_ms"] = predict_seconds(model, {"input": [1, *IMAGE]}, dev) * 1e3
    out["_model"] = model
    return out


def load_teacher(teacher):
    if teacher is None:
        return None
    from tensorfold.graph.io import load_model
    from tensorfold.onnxrt.inputs import model_inputs

    model = load_model(teacher)
    ins = model_inputs(model)
    dims = [d.dim_value for d in ins[0].type.tensor_type.shape.dim] if ins else []
    if len(ins) != 1 or dims[1:] not in ([*IMAGE], [0, 0, 0]):
        raise TensorfoldError(
            f"--teacher {teacher} takes {dims[1:] or 'no'} inputs; the searched networks take {list(IMAGE)} images"
        )
    return model
