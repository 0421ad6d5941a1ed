"""Latency on an onnxruntime provider: warm-up, timed runs, medians; two models interleaved run by
run so that machine noise hits both alike; per-node times from onnxruntime's own profiler."""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt.sessions import make_session, ort_message


@dataclass
class LatencyStats:
    """Wall-clock milliseconds of each timed run."""

    runs_ms: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.runs_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.runs_ms)

    @property
    def p90(self) -> float:
        return float(np.percentile(self.runs_ms, 90))

    def as_dict(self) -> dict:
        return {
            "min_ms": round(self.min, 4),
            "median_ms": round(self.median, 4),
            "p90_ms": round(self.p90, 4),
            "runs": len(self.runs_ms),
        }


def with_batch(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The same inputs with the leading (batch) dimension set to `batch`."""
    out = {}
    for name, x in feeds.items():
        if x.ndim == 0:
            out[name] = x
            continue
        reps = int(np.ceil(batch / x.shape[0]))
        out[name] = np.concatenate([x] * reps, axis=0)[:batch]
    return out


def _timed(session, feeds) -> float:
    start = time.perf_counter()
    session.run(None, feeds)
    return (time.perf_counter() - start) * 1e3


def measure(
    model: onnx.ModelProto | str,
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
    threads: int = 0,
    warmup: int = 5,
    runs: int = 30,
    optimization: str = "all",
) -> LatencyStats:
    session = make_session(model, provider, threads, optimization)
    _run_checked(session, feeds)
    for _ in range(warmup):
        session.run(None, feeds)
    return LatencyStats([_timed(session, feeds) for _ in range(runs)])


def measure_interleaved(
    models: list[tuple[onnx.ModelProto | str, dict[str, np.ndarray]]],
    provider: str = "cpu",
    threads: int = 0,
    warmup: int = 3,
    rounds: int = 25,
    spinning: bool = False,
    settle: int = 1,
) -> list[LatencyStats]:
    """Time several models round-robin: each round visits every model, in alternating order, so a
    burst of load from other processes hits all of them alike instead of whichever model was being
    timed then. A visit runs the model `settle` times untimed, then once timed (the first run after
    switching models pays for cold caches). Worker threads do not spin between runs (spinning=False):
    a session's spinning workers would otherwise take the cores from the next session. On this
    shared 2-core host two passes of the 77-82 layer/chain models agree at Kendall tau 0.94-0.97 this
    way ("second measurement" in docs/results/device-model-quality.md; timed one block per model, as
    the tool did before, at 0.79-0.92)."""
    sessions = []
    for model, feeds in models:
        session = make_session(model, provider, threads, spinning=spinning)
        _run_checked(session, feeds)
        sessions.append((session, feeds))
    for _ in range(warmup):
        for session, feeds in sessions:
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(rounds):
        order = range(len(sessions)) if r % 2 == 0 else range(len(sessions) - 1, -1, -1)
        for i in order:
            session, feeds = sessions[i]
            for _ in range(settle):
                session.run(None, feeds)
            times[i].append(_timed(session, feeds))
    return [LatencyStats(t) for t in times]


# timed_for_budget: at least `rounds` rounds and, where the models are small, as many more as fit
# this many seconds of timed runs (each round also runs every model once untimed). On the 0.1 ms demo
# CNN copies of one model read 0.90-1.31x of each other over 15 rounds, 0.94-1.02x over 300
# (tools/bench_timing_noise.py)
TIMING_BUDGET_S, MAX_ROUNDS = 2.0, 300


def timed_for_budget(
    models: list[tuple[onnx.ModelProto | str, dict[str, np.ndarray]]],
    provider: str = "cpu",
    threads: int = 0,
    rounds: int = 15,
) -> tuple[list[LatencyStats], int]:
    """measure_interleaved for `rounds` rounds, and again for more where they fit TIMING_BUDGET_S;
    the stats and the rounds they are of."""
    stats = measure_interleaved(models, provider, threads, rounds=rounds)
    per_round = sum(s.median for s in stats) / 1e3
    more = min(MAX_ROUNDS, int(TIMING_BUDGET_S / per_round)) if per_round > 0 else rounds
    if more > rounds:
        rounds = more
        stats = measure_interleaved(models, provider, threads, rounds=rounds)
    return stats, rounds


@dataclass
class Comparison:
    a: LatencyStats
    b: LatencyStats
    ratios: list[float]  # b / a per interleaved pair

    @property
    def speedup(self) -> float:
        """How many times faster a is than b (median of per-pair ratios)."""
        return statistics.median(self.ratios)

    def as_dict(self) -> dict:
        return {
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "speedup_a_over_b": round(self.speedup, 4),
            "ratio_p10": round(float(np.percentile(self.ratios, 10)), 4),
            "ratio_p90": round(float(np.percentile(self.ratios, 90)), 4),
        }


def compare(
    model_a,
    model_b,
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
    threads: int = 0,
    warmup: int = 5,
    runs: int = 30,
) -> Comparison:
    """Time a and b alternately (a, b, b, a, ...) so drift and noise cancel in the ratios: the
    round-robin of `measure_interleaved` without untimed visits.

    Worker threads do not spin between runs: with two sessions, one session's spinning workers
    take the cores from the other's run. Measured once on this 2-core host (commit a471734) (five comparisons of a model
    with itself): with spinning, ratios 0.82-1.07 and times 1.3x above the model run alone; without,
    0.99-1.07 (ResNet-18, batch 8) and 0.98-1.01 (PP-OCRv4 det, batch 1), times near the solo ones.
    It does not penalize the model with more nodes: a factorized detector against its input came out
    1.54-1.55x this way and 1.55-1.59x timed alone in alternating blocks with spinning on."""
    sa, sb = measure_interleaved([(model_a, feeds), (model_b, feeds)], provider, threads, warmup, runs, settle=0)
    return Comparison(sa, sb, [b / a for a, b in zip(sa.runs_ms, sb.runs_ms)])


def _run_checked(session, feeds) -> None:
    try:
        session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise TensorfoldError(
            f"onnxruntime failed to run the model: {ort_message(exc)} "
            f"(where a dynamic dim is the cause: --shape NAME:D1,D2,...)"
        ) from None


@dataclass
class NodeTime:
    node: str
    op: str
    mean_ms: float
    share: float


def node_profile(
    model: onnx.ModelProto | str, feeds: dict[str, np.ndarray], provider: str = "cpu", threads: int = 0, runs: int = 10
) -> list[NodeTime]:
    """Per-node kernel time from onnxruntime's profiler (enable_profiling), mean over the `runs`
    warm calls.

    Node names are onnxruntime's after its graph optimizations (fused nodes keep one name)."""
    with tempfile.TemporaryDirectory(prefix="tensorfold-prof-") as tmp:
        session = make_session(model, provider, threads, profile_prefix=os.path.join(tmp, "ort"))
        _run_checked(session, feeds)
        for _ in range(runs):
            session.run(None, feeds)
        path = session.end_profiling()
        with open(path) as fh:
            events = json.load(fh)
    # the first (checked) call is cold: its kernels are left out where the calls can be told apart
    # (on a 0.07 ms VAD, averaging it in made one conv read 87% of the model and 17x its latency)
    calls = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events if ev.get("name") == "model_run")
    timed = calls[-runs:] if len(calls) > runs else []

    def counted(ts: float) -> bool:
        return not timed or any(start <= ts <= end for start, end in timed)

    totals: dict[tuple[str, str], float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time") or not counted(ev["ts"]):
            continue
        node = ev["name"][: -len("_kernel_time")]
        totals[(node, ev.get("args", {}).get("op_name", "?"))] += ev["dur"] / 1e3
    total = sum(totals.values()) or 1.0
    out = [NodeTime(node, op, ms / (len(timed) or runs + 1), ms / total) for (node, op), ms in totals.items()]
    return sorted(out, key=lambda t: -t.mean_ms)


def by_op_type(times: list[NodeTime]) -> list[tuple[str, float, float, int]]:
    """(op, mean ms per run, share, node count), largest first."""
    agg: dict[str, list[float]] = defaultdict(list)
    for t in times:
        agg[t.op].append(t.mean_ms)
    total = sum(sum(v) for v in agg.values()) or 1.0
    return sorted(((op, sum(v), sum(v) / total, len(v)) for op, v in agg.items()), key=lambda r: -r[1])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (an upper bound for what the sessions used)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
