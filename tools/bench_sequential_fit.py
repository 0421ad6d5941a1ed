"""Would fitting each low-rank layer to the inputs of the already-compressed layers before it
(sequential, error-compensating fits: SVD-LLM's "sequential low-rank approximation", GPTQ's order)
beat fitting every layer to the original model's inputs (what tensorfold does)?

    .venv/bin/python tools/bench_sequential_fit.py [--model minilm-l3] [--ratios 1.25,1.5,2]

For the model's Gemm/MatMul layers with a 2-D weight (convs are left as they are), each at one
uniform per-layer compression: rank r = K N / (ratio (K + N)).
- independent: the whitened SVD of each weight in the data norm of its input on the original model
  (decompose.data_aware.WhitenedSVD's fit);
- sequential: in graph order, each layer's rank-r M' minimizing ||X M - X' M'||^2, X its input on
  the original model, X' its input on the model whose earlier layers are already replaced.
Both replace the weight by the dense rank-r product (the same outputs as the factor chain) and
report the relative output error on held-out samples (the RMS over outputs of
||y - y'||^2 / ||y||^2). Calibration rows of padding tokens are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import scipy.linalg
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from bench_recover_in_optimize import model_path, samples  # noqa: E402

from tensorfold.calibration.stats import _with_outputs  # noqa: E402
from tensorfold.decompose.data_aware import damped  # noqa: E402
from tensorfold.graph.normalize import normalize  # noqa: E402
from tensorfold.onnxrt.sessions import make_session  # noqa: E402


def matrix_layers(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, bool]]:
    """(node, weight name, transposed) of every MatMul/Gemm whose second input is a 2-D initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    found = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            found.append((n, n.input[1], any(a.name == "transB" and a.i for a in n.attribute)))
    return found


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], extra: list[str] = ()) -> dict[str, np.ndarray]:
    outs = list(dict.fromkeys([o.name for o in model.graph.output] + list(extra)))
    session = make_session(_with_outputs(model, list(extra)) if extra else model, "cpu")
    n = len(next(iter(feeds.values())))
    parts = [session.run(outs, {k: v[i : i + 16] for k, v in feeds.items()}) for i in range(0, n, 16)]
    return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(outs)}


def weight(model: onnx.ModelProto, name: str, transposed: bool) -> np.ndarray:
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name)).astype(np.float64)
    return w.T if transposed else w  # (K, N): y = x @ w


def set_weight(model: onnx.ModelProto, name: str, transposed: bool, w: np.ndarray) -> None:
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array((w.T if transposed else w).astype(np.float32), name))


def low_rank(m: np.ndarray, gram: np.ndarray, cross: np.ndarray, rank: int) -> np.ndarray:
    """Rank-`rank` M' minimizing ||X M - X' M'||^2, gram = X'^T X', cross = X'^T X: the least-squares
    map truncated in the norm of X' (independent fits: X' = X, cross = gram)."""
    lower = np.linalg.cholesky(damped(gram))
    target = scipy.linalg.solve_triangular(lower, cross @ m, lower=True)
    u, s, vt = np.linalg.svd(target, full_matrices=False)
    return scipy.linalg.solve_triangular(lower.T, (u[:, :rank] * s[:rank]) @ vt[:rank], lower=False)


def relative_error(reference: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> float:
    e = [np.sum((reference[k] - out[k]) ** 2) / np.sum(reference[k] ** 2) for k in reference]
    return float(np.sqrt(np.mean(e)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l3")
    parser.add_argument("--ratios", default="1.25,1.5,2")
    parser.add_argument("--samples", type=int, default=256, help="calibration samples")
    parser.add_argument("--held-out", type=int, default=128)
    args = parser.parse_args(argv)
    model, _ = normalize(onnx.load(str(model_path(args.model))))  # exact: Paddle's Constant weights become initializers
    layers = matrix_layers(model)
    tokens = args.model == "minilm-l3"
    calib = samples(args.model, args.samples, 0)
    held = samples(args.model, args.held_out, 0, skip=args.samples) if tokens else samples(args.model, args.held_out, 7)
    outputs = [o.name for o in model.graph.output]
    reference = {k: v for k, v in run(model, held).items() if k in outputs}
    inputs = list(dict.fromkeys(n.input[0] for n, _, _ in layers))
    original = run(model, calib, inputs)
    mask = calib["attention_mask"].astype(bool) if tokens else None

    def rows(x: np.ndarray) -> np.ndarray:
        if mask is not None and x.ndim == 3 and x.shape[:2] == mask.shape:
            return x[mask].astype(np.float64)
        return x.reshape(-1, x.shape[-1]).astype(np.float64)

    print(f"{args.model}: {len(layers)} matrix layers, {args.samples} calibration and {args.held_out} held-out samples")
    print("| ratio per layer | independent | sequential |\n|---:|---:|---:|")
    for ratio in (float(r) for r in args.ratios.split(",")):
        ranks = []
        for _, name, transposed in layers:
            k, n = weight(model, name, transposed).shape
            ranks.append(max(1, int(k * n / ratio / (k + n))))
        independent, sequential = onnx.ModelProto(), onnx.ModelProto()
        independent.CopyFrom(model)
        sequential.CopyFrom(model)
        for (node, name, transposed), rank in zip(layers, ranks):
            x = rows(original[node.input[0]])
            gram = x.T @ x
            set_weight(independent, name, transposed, low_rank(weight(model, name, transposed), gram, gram, rank))
            compressed = rows(run(sequential, calib, [node.input[0]])[node.input[0]])
            fit = low_rank(weight(model, name, transposed), compressed.T @ compressed, compressed.T @ x, rank)
            set_weight(sequential, name, transposed, fit)
        e_ind, e_seq = (
            relative_error(reference, run(independent, held)),
            relative_error(reference, run(sequential, held)),
        )
        print(f"| {ratio:g}x | {e_ind:.4f} | {e_seq:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
