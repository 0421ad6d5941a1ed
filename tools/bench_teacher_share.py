"""How much of a recovery step is the teacher? Whether caching the teacher's outputs across the
candidates of `optimize --recover` would pay (docs/results/compress.md).

    .venv/bin/python tools/bench_teacher_share.py [--models cls,rec] [--batch 16] [--ratio 1.5]

Per model: factorized at --ratio (fitted to 64 calibration samples), then the onnxruntime teacher
(outputs and every factor chain's original layer output) against the student's forward, loss,
backward and Adam step, on one batch, median of 5 steps after one warm-up; two torch threads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_recover_in_optimize import model_path, samples  # noqa: E402

from tensorfold.api import optimize  # noqa: E402
from tensorfold.recovery.distill import OnnxTeacher, Outputs, feature_loss, output_loss, rewritten_outputs  # noqa: E402
from tensorfold.recovery.onnx_torch import OnnxModule  # noqa: E402


def share(name: str, batch: int, ratio: float) -> str:
    path = model_path(name)
    model = onnx.load(str(path))
    names = [i.name for i in model.graph.input]
    arrays = {k: v for k, v in samples(name, 64, 0).items() if k in names}
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "cal.npz", **arrays)
        optimize(
            str(path), Path(tmp) / "cand.onnx", ratio=ratio, calibration=str(Path(tmp) / "cal.npz"), progress=False
        )
        candidate = onnx.load(str(Path(tmp) / "cand.onnx"))
    teacher = OnnxTeacher(model, rewritten_outputs(candidate), threads=2)
    student, spec = OnnxModule(candidate), Outputs.of(model)
    xb = [torch.from_numpy(np.asarray(arrays[n][:batch])) for n in names]
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], 1e-4)
    teacher_s, student_s = [], []
    for i in range(6):
        t0 = time.perf_counter()
        outs, feats = teacher(*xb)
        t1 = time.perf_counter()
        s_outs, s_feats = student(*xb, capture=tuple(feats))
        loss = output_loss(s_outs, outs, spec, 4.0) + feature_loss(s_feats, feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            teacher_s.append(t1 - t0)
            student_s.append(time.perf_counter() - t1)
    t, s = float(np.median(teacher_s)), float(np.median(student_s))
    return f"{name}, batch {batch}: teacher {t * 1e3:.0f} ms, student step {s * 1e3:.0f} ms, teacher share {t / (t + s):.0%}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cls,rec")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=1.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    for name in args.models.split(","):
        print(share(name, args.batch, args.ratio), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
