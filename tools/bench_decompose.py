"""Decomposition quality and speed: tensorfold.decompose against TensorLy, at equal parameter count.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python tools/bench_decompose.py [KERNELS...] [--ratio 8]
        [--repeats 3] [--methods tucker2,cp3,cp4,tt] [--cp-iters 100] [--tl-cp-iters N]
        [--limit 4] [--resnet50] [--out docs/results/decompose-benchmark.md]

KERNELS: .npy files holding conv weights (O, I, *k), or one or more .onnx models (every Conv
weight with I > 1 and a spatial extent > 1, from initializers or Constant nodes, largest first,
--limit of them). With none, random kernels 64x64x3x3, 128x128x3x3, 256x256x3x3 with a
power-law spectrum on both channel modes (closer to trained weights than i.i.d. noise).

For each kernel and method the parameter budget is size/ratio:
  tucker2  ranks (ro, ri) proportional to (O, I)   vs tensorly partial_tucker(modes=[0, 1])
  cp3      CP of the (O, I, k*k) tensor            vs tensorly parafac(init='svd')
  cp4      CP of the (O, I, kh, kw) tensor         vs tensorly parafac(init='svd')
  tt       TT-SVD of (I, kh, kw, O) (the order of the emitted chain), one rank cap
                                                   vs tensorly tensor_train(same ranks)
Reported: relative Frobenius error ||W - W_hat|| / ||W|| and median wall time of --repeats runs.
Both CP codes get the same iteration cap unless --tl-cp-iters says otherwise; each keeps its
own default tolerance (TensorLy 1e-8 absolute, tensorfold 1e-6 relative).

--resnet50: also times Tucker-2 on the 53 conv shapes of a ResNet-50 (random weights, ranks at
--ratio) against the floor of just the SVDs of the two unfoldings of every kernel.

On a shared machine, set OPENBLAS_NUM_THREADS=1: with more threads than free cores OpenBLAS
spins, and an SVD that takes 0.8 s can take 20 s.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tensorfold.decompose.cp import cp_als, cp_params, cp_reconstruct  # noqa: E402
from tensorfold.decompose.tt import tt_contraction, tt_params, tt_ranks, tt_svd  # noqa: E402
from tensorfold.decompose.tucker2 import (  # noqa: E402
    tucker2,
    tucker2_error_table,
    tucker2_params,
    tucker2_reconstruct,
)

METHODS = ("tucker2", "cp3", "cp4", "tt")


# --------------------------------------------------------------------------- kernels


def structured_kernel(o: int, i: int, k: int = 3, seed: int = 0, decay: float = 0.7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((o, i, k, k))
    q0, _ = np.linalg.qr(rng.standard_normal((o, o)))
    q1, _ = np.linalg.qr(rng.standard_normal((i, i)))
    d0 = (1.0 + np.arange(o)) ** -decay
    d1 = (1.0 + np.arange(i)) ** -decay
    return np.einsum("oa,abkl,ib->oikl", q0 * d0, g, q1 * d1)


def onnx_conv_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = attr.t
    out = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in tensors:
            continue
        w = numpy_helper.to_array(tensors[node.input[1]])
        if w.ndim == 4 and w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1:
            out.append((f"{path.stem}:{node.name or node.input[1]}", w.astype(np.float64)))
    return out


def load_kernels(paths: list[str], limit: int) -> list[tuple[str, np.ndarray]]:
    if not paths:
        return [(f"random {o}x{o}x3x3", structured_kernel(o, o, 3, seed=o)) for o in (64, 128, 256)]
    found = []
    for p in map(Path, paths):
        if p.suffix == ".onnx":
            found += onnx_conv_weights(p)
        else:
            found.append((p.stem, np.load(p).astype(np.float64)))
    found.sort(key=lambda kv: -kv[1].size)
    return found[:limit] if limit else found


# --------------------------------------------------------------------------- ranks at a budget


def tucker_ranks(shape, budget: int) -> tuple[int, int]:
    o, i = shape[:2]
    best = (1, 1)
    for ro in range(1, o + 1):
        ri = max(1, min(i, round(ro * i / o)))
        if tucker2_params(shape, (ro, ri)) <= budget:
            best = (ro, ri)
    return best


def tt_rank_cap(dims, budget: int) -> list[int]:
    def ranks_for(cap):
        n = len(dims)
        return [1] + [min(cap, int(np.prod(dims[: k + 1])), int(np.prod(dims[k + 1 :]))) for k in range(n - 1)] + [1]

    def params(r):
        return sum(r[k] * dims[k] * r[k + 1] for k in range(len(dims)))

    cap = 1
    while params(ranks_for(cap + 1)) <= budget and ranks_for(cap + 1) != ranks_for(cap):
        cap += 1
    return ranks_for(cap)


# --------------------------------------------------------------------------- runners


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def bench_kernel(name, w, args, tl):
    from tensorly.decomposition import parafac, partial_tucker, tensor_train

    rows = []
    budget = int(w.size // args.ratio)
    o, i = w.shape[:2]
    spatial = w.shape[2:]
    kk = int(np.prod(spatial))
    for method in args.methods:
        if method == "tucker2":
            ranks = tucker_ranks(w.shape, budget)
            params = tucker2_params(w.shape, ranks)
            ours, t_ours = timed(lambda: tucker2(w, ranks), args.repeats)
            e_ours = rel(w, tucker2_reconstruct(ours))
            theirs, t_tl = timed(lambda: partial_tucker(w, rank=list(ranks), modes=[0, 1], init="svd"), args.repeats)
            (core, factors), _ = theirs
            e_tl = rel(w, tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1]))
            label = f"({ranks[0]}, {ranks[1]})"
        elif method in ("cp3", "cp4"):
            t = w.reshape(o, i, kk) if method == "cp3" else w
            rank = max(1, budget // sum(t.shape))
            params = cp_params(t.shape, rank)
            ours, t_ours = timed(lambda: cp_als(t, rank, n_iter_max=args.cp_iters), args.repeats)
            e_ours = rel(t, cp_reconstruct(ours))
            tl_iters = args.tl_cp_iters or args.cp_iters
            theirs, t_tl = timed(lambda: parafac(t, rank, init="svd", n_iter_max=tl_iters), args.repeats)
            e_tl = rel(t, tl.cp_to_tensor(theirs))
            label = f"R={rank} ({ours.n_iter} it)"
        elif method == "tt":
            t = np.moveaxis(w, 0, -1)  # (I, *k, O)
            ranks = tt_rank_cap(t.shape, budget)
            ours, t_ours = timed(lambda: tt_svd(t, ranks=ranks[1:-1]), args.repeats)
            params = tt_params(ours)
            assert tt_ranks(ours) == ranks, (tt_ranks(ours), ranks)
            e_ours = rel(t, tt_contraction(ours))
            theirs, t_tl = timed(lambda: tensor_train(t, rank=ranks), args.repeats)
            e_tl = rel(t, tl.tt_to_tensor(theirs))
            label = "ranks " + "-".join(map(str, ranks[1:-1]))
        else:
            raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        rows.append(
            (name, "x".join(map(str, w.shape)), method, label, params, w.size / params, e_ours, e_tl, t_ours, t_tl)
        )
        print(
            f"  {name} {method}: err {e_ours:.4f} vs {e_tl:.4f}, {t_ours:.3f}s vs {t_tl:.3f}s",
            file=sys.stderr,
            flush=True,
        )
    return rows


def resnet50_shapes() -> list[tuple[int, ...]]:
    shapes = [(64, 3, 7, 7)]
    inp = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, inp, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            if b == 0:
                shapes.append((4 * width, inp, 1, 1))
            inp = 4 * width
    return shapes


def bench_resnet50(ratio: float) -> dict:
    rng = np.random.default_rng(0)
    kernels = [rng.standard_normal(s) for s in resnet50_shapes()]
    t = time.perf_counter()
    for w in kernels:
        o, i = w.shape[:2]
        np.linalg.svd(w.reshape(o, -1), full_matrices=False)
        np.linalg.svd(np.moveaxis(w, 1, 0).reshape(i, -1), full_matrices=False)
    floor = time.perf_counter() - t
    t = time.perf_counter()
    for w in kernels:
        tucker2(w, tucker_ranks(w.shape, int(w.size // ratio)))
    tk = time.perf_counter() - t
    t = time.perf_counter()
    for w in kernels:
        tucker2_error_table(w)
    table = time.perf_counter() - t
    return {"kernels": len(kernels), "floor": floor, "tucker2": tk, "table": table}


# --------------------------------------------------------------------------- report


def markdown(rows, args, r50) -> str:
    import tensorly

    lines = []
    lines.append(
        "| kernel | shape | method | ranks | params | x smaller | rel. error tensorfold | rel. error TensorLy "
        "| time tensorfold | time TensorLy | speedup |"
    )
    lines.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, shape, method, label, params, ratio, e1, e2, t1, t2 in rows:
        lines.append(
            f"| {name} | {shape} | {method} | {label} | {params} | {ratio:.1f} | {e1:.5f} | {e2:.5f} "
            f"| {t1:.3f} s | {t2:.3f} s | {t2 / t1:.1f}x |"
        )
    head = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, python {platform.python_version()}, "
        f"numpy {np.__version__}, tensorly {tensorly.__version__}",
        f"- ratio {args.ratio}, median of {args.repeats} runs, CP iterations: tensorfold {args.cp_iters}, "
        f"TensorLy {args.tl_cp_iters or args.cp_iters}",
    ]
    out = "\n".join(head) + "\n\n" + "\n".join(lines) + "\n"
    if r50:
        out += (
            f"\nResNet-50 conv shapes ({r50['kernels']} kernels, random weights, ranks at {args.ratio}x): "
            f"SVDs of both unfoldings of every kernel {r50['floor']:.2f} s; tucker2 (HOSVD + HOOI, default sweeps) "
            f"{r50['tucker2']:.2f} s = {r50['tucker2'] / r50['floor']:.2f}x of that; "
            f"tucker2_error_table of every kernel {r50['table']:.2f} s = {r50['table'] / r50['floor']:.2f}x.\n"
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kernels", nargs="*", help=".npy conv weights or .onnx models")
    ap.add_argument("--ratio", type=float, default=8.0, help="compression ratio that sets the parameter budget")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--cp-iters", type=int, default=100, help="n_iter_max of cp_als (and of parafac by default)")
    ap.add_argument("--tl-cp-iters", type=int, default=0, help="n_iter_max of TensorLy's parafac if different")
    ap.add_argument("--limit", type=int, default=4, help="largest N kernels of a model (0: all)")
    ap.add_argument("--resnet50", action="store_true", help="also time Tucker-2 on ResNet-50 conv shapes")
    ap.add_argument("--out", type=Path, help="also write the report to this Markdown file")
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    warnings.filterwarnings("ignore", category=UserWarning, module="tensorly")

    import tensorly as tl

    rows = []
    for name, w in load_kernels(args.kernels, args.limit):
        rows += bench_kernel(name, w, args, tl)
    r50 = bench_resnet50(args.ratio) if args.resnet50 else None
    report = markdown(rows, args, r50)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
