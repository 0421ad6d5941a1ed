"""Static int8 quantization with onnxruntime, prepared once and calibrated once per method.

A model is converted to opset >= 13 (per-channel DequantizeLinear needs `axis`), run through
onnxruntime's pre-processing (shape inference, basic graph optimizations) and its activation ranges
are collected once per calibration method, a few calls at a time (memory stays at a few calls'
activations, not all samples'). Every quantization after that (another set of nodes kept float)
reuses those ranges through onnxruntime's calibration cache: seconds, not a new calibration.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import save_model
from tensorfold.graph.stats import QUANTIZED_MAC_OPS
from tensorfold.onnxrt import large
from tensorfold.onnxrt.batching import chunks
from tensorfold.quantize.formats import Int8Format

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# onnxruntime's percentile default (99.999) keeps the outliers a detector's maps are made of
PERCENTILE = 99.99


@contextlib.contextmanager
def quiet_onnxruntime_quantization() -> Iterator[None]:
    """onnxruntime.quantization logs warnings at root level (pre-processing advice, per-tensor notes),
    prints its histogram progress to stdout (which would corrupt --json) and lets numpy warn about
    empty histograms; none of it is for the user."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def at_least_opset(model: onnx.ModelProto, version: int = 13) -> onnx.ModelProto:
    """Per-channel QDQ needs DequantizeLinear's `axis` (opset 13): older models are converted first
    (onnx's version converter rewrites the ops whose signature changed, e.g. Squeeze, Split)."""
    current = max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), default=version)
    if current >= version:
        return model
    try:
        return large.transform(model, lambda m: onnx.version_converter.convert_version(m, version))
    except Exception as exc:  # noqa: BLE001 - the converter raises several kinds
        raise TensorfoldError(
            f"int8 needs opset >= {version} (per-channel QDQ); converting this opset-{current} "
            f"model failed: {str(exc).splitlines()[0][:200]}"
        ) from None


# ops of a model that is quantized already (QDQ or QOperator format, or dynamic)
QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", *QUANTIZED_MAC_OPS}
)


def quantized_nodes(model: onnx.ModelProto) -> int:
    """How many of the model's top-level nodes belong to a quantization: onnxruntime's quantizer
    cannot quantize such a model again (a QDQ model's DequantizeLinear outputs would be written twice)."""
    return sum(n.op_type in QUANTIZED_OPS for n in model.graph.node)


# the most bins a tensor's histogram keeps for the entropy calibration. onnxruntime widens a
# histogram by its first bin width whenever a later sample reaches further (a quiet first sample of
# openWakeWord's hey_jarvis model left one tensor at tens of thousands of bins), and its KL-divergence
# search is quadratic in the bins, in Python: minutes for that one tensor. 2048 is 16x onnxruntime's
# default of 128.
MAX_ENTROPY_BINS = 2048


def cap_histograms(histograms: dict[str, tuple[Any, ...]] | None, most: int = MAX_ENTROPY_BINS) -> None:
    """Merge neighbouring bins of each histogram above `most` bins, k at a time, keeping the range
    symmetric about zero (the entropy search splits it at its middle edge): zero bins are added at
    both ends so that the merged groups meet at zero."""
    if histograms is None:
        return
    for name, entry in list(histograms.items()):
        hist, edges, low, high, threshold = entry
        size = len(hist)
        if size <= most or size % 2:
            continue
        k = -(-size // most)
        pad = (-size) % (2 * k) // 2  # each side: the length becomes a multiple of 2k
        stride = (edges[-1] - edges[0]) / size
        padded = np.concatenate([np.zeros(pad, hist.dtype), hist, np.zeros(pad, hist.dtype)])
        merged = padded.reshape(-1, k).sum(axis=1)
        wide = np.asarray(threshold + pad * stride, dtype=edges.dtype)
        new_edges = np.linspace(-wide, wide, len(merged) + 1, dtype=edges.dtype)
        histograms[name] = (merged, new_edges, low, high, wide)


class StaticQuantizer:
    """One float model, prepared for onnxruntime's static quantizer; `quantize` any number of times."""

    def __init__(
        self,
        model: onnx.ModelProto,
        fit: dict[str, np.ndarray],
        fmt: Int8Format,
        calls_per_collect: int = 4,
        preprocess: bool = True,
    ):
        from tensorfold.passes.layers import ensure_node_names

        self.fmt = fmt
        self._tmp = tempfile.TemporaryDirectory(prefix="tensorfold-int8-")
        self.dir = Path(self._tmp.name)
        self.external = large.is_large(model)
        # one sample per call: onnxruntime's histogram calibrators stack every call's outputs, which
        # fails when the last call holds fewer samples than the others
        self.calls = list(chunks(model, fit, max_batch=1))
        self.calls_per_collect = calls_per_collect
        self.preprocessed = True
        model = at_least_opset(model, 13)
        raw = self.dir / "model.onnx"
        save_model(model, raw)  # a large model keeps its weights in model.onnx.data
        prepared = self.dir / "prepared.onnx"
        with quiet_onnxruntime_quantization():
            if not preprocess or not self._preprocess(raw, prepared):
                prepared, self.preprocessed = raw, False
        # nodes are named, so a node kept in float is named in the report and in nodes_to_exclude
        self.model = onnx.load(str(prepared))
        ensure_node_names(self.model)
        self.source = self.dir / "source.onnx"
        save_model(self.model, self.source)
        self._ranges: dict[str, Path] = {}

    def _preprocess(self, src: Path, dst: Path) -> bool:
        """onnxruntime's recommended pre-processing; a model its symbolic shape inference cannot
        follow (PP-OCR's dynamic dims) is pre-processed without it, and one that fails even so is
        quantized as it is. It writes scratch files into the working directory, so it runs there."""
        import errno
        import logging

        from onnxruntime.quantization.shape_inference import quant_pre_process

        # onnxruntime logs a failed optimization step with its traceback and goes on: caught here
        # instead of printed; a full disk ends the run (the quantization itself needs the space too)
        records: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        handler = Keep(logging.ERROR)
        logger = logging.getLogger("onnxruntime.quantization.shape_inference")
        saved = logger.handlers[:], logger.propagate
        logger.handlers, logger.propagate = [handler], False
        cwd = os.getcwd()
        os.chdir(self.dir)
        try:
            for skip_symbolic in (False, True):
                records.clear()
                try:
                    quant_pre_process(
                        str(src), str(dst), skip_symbolic_shape=skip_symbolic, save_as_external_data=self.external
                    )
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    continue
                except Exception:  # noqa: BLE001 - try the next, then quantize the model as it is
                    continue
                logged = " ".join(r.getMessage() for r in records)
                if "No space left" in logged:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.dir))
                return True  # (an optimization step it skipped, logged, leaves a usable model)
            return False
        finally:
            os.chdir(cwd)
            logger.handlers, logger.propagate = saved

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> StaticQuantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ranges(self, method: str) -> Path | None:
        """The calibration cache (activation ranges) for `method`, computed on first use; None where
        this onnxruntime has no calibration cache (before 1.26): every quantization then calibrates."""
        if method not in CALIBRATION_METHODS:
            raise TensorfoldError(
                f"unknown calibration method '{method}' (choose from {', '.join(CALIBRATION_METHODS)})"
            )
        if not _has_calibration_cache():
            return None
        if method not in self._ranges:
            self._ranges[method] = self._calibrate(method)
        return self._ranges[method]

    def _calibrate(self, method: str) -> Path:
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        options: dict[str, object] = {"symmetric": self.fmt.activations == "int8"}
        if method == "percentile":
            options["percentile"] = PERCENTILE
        path = self.dir / f"ranges.{method}.json"
        with tempfile.TemporaryDirectory(prefix="calib-", dir=self.dir) as work, quiet_onnxruntime_quantization():
            try:
                calibrator = create_calibrator(
                    self.source,
                    op_types_to_calibrate=None,
                    augmented_model_path=str(Path(work, "augmented.onnx")),
                    calibrate_method=_ort_method(method),
                    use_external_data_format=self.external,
                    extra_options=options,
                )
                # histogram calibrators stack the outputs of the calls of one collect: one call each keeps
                # them working where activation shapes vary between samples (a decoder's length)
                step = self.calls_per_collect if method == "minmax" else 1
                for start in range(0, len(self.calls), step):
                    calibrator.collect_data(_reader(self.calls[start : start + step]))
                if method == "entropy":
                    cap_histograms(getattr(getattr(calibrator, "collector", None), "histogram_dict", None))
                save_tensors_data(calibrator.compute_data(), path)
            except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many kinds
                raise TensorfoldError(f"int8 calibration ({method}) failed: {str(exc).splitlines()[0][:300]}") from None
        return path

    def quantize(self, method: str = "minmax", exclude: frozenset[str] | set[str] = frozenset()) -> onnx.ModelProto:
        """The model quantized in the provider's format, `exclude`d nodes left in float."""
        from onnxruntime.quantization import QuantFormat, quantize_static

        cache = self.ranges(method)
        activations, weights = self.fmt.ort_types()
        cached = {"calibration_cache_path": str(cache)} if cache is not None else {}
        return self._written(
            "int8 quantization",
            lambda dst: quantize_static(
                str(self.source),
                dst,
                None if cache is not None else _reader(self.calls),
                quant_format=QuantFormat.QDQ,
                per_channel=self.fmt.per_channel,
                reduce_range=self.fmt.reduce_range,
                activation_type=activations,
                weight_type=weights,
                nodes_to_exclude=sorted(exclude),
                use_external_data_format=self.external,
                calibrate_method=_ort_method(method),
                **cached,
            ),
        )

    def quantize_dynamic(
        self, exclude: frozenset[str] | set[str] = frozenset(), source: Path | None = None
    ) -> onnx.ModelProto:
        """Weights int8, activations quantized at run time (MatMulInteger, DynamicQuantizeLSTM): no
        calibration; for MatMul/LSTM-heavy models, where it can beat static QDQ on a CPU. `source`:
        a variant of the prepared model (`variant`) instead of it."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        return self._written(
            "dynamic int8 quantization",
            lambda dst: quantize_dynamic(
                str(source or self.source),
                dst,
                weight_type=QuantType.QInt8,
                per_channel=self.fmt.per_channel,
                reduce_range=self.fmt.reduce_range,
                op_types_to_quantize=list(DYNAMIC_OPS),
                nodes_to_exclude=sorted(exclude),
                use_external_data_format=self.external,
            ),
        )

    def variant(self, model: onnx.ModelProto, name: str) -> Path:
        """`model` (the prepared model, rewritten) saved in the work folder for quantize_dynamic."""
        path = self.dir / f"{name}.onnx"
        save_model(model, path)
        return path

    def _written(self, what: str, write: Callable[[str], object]) -> onnx.ModelProto:
        """Run an onnxruntime quantizer that writes into the work folder; the model it wrote."""
        dst = self.dir / "quantized.onnx"
        with quiet_onnxruntime_quantization():
            try:
                write(str(dst))
            except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many kinds
                raise TensorfoldError(f"{what} failed: {str(exc).splitlines()[0][:300]}") from None
        quantized = onnx.load(str(dst))
        for path in self.dir.glob("quantized.onnx*"):
            path.unlink()
        return quantized


# the ops dynamic quantization pays off for: weight-heavy matrix products and recurrent cells, and
# embedding tables (a Gather of int8 rows: MiniLM-L3's 30,522 x 384 table is 68% of its weights)
DYNAMIC_COMPUTE_OPS = ("MatMul", "Gemm", "LSTM", "GRU", "Attention")
DYNAMIC_OPS = (*DYNAMIC_COMPUTE_OPS, "Gather")


def _has_calibration_cache() -> bool:
    """onnxruntime 1.26 added quantize_static(calibration_cache_path=...) (microsoft/onnxruntime#28221)."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _reader(calls: list[dict[str, np.ndarray]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
        def __init__(self) -> None:
            self.calls = iter(calls)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.calls, None)

    return Reader()


def _ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
