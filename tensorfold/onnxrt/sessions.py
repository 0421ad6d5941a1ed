"""onnxruntime sessions for a model in memory or on disk, on a named execution provider."""

from __future__ import annotations

import onnx
import onnxruntime as ort

from tensorfold.errors import TensorfoldError
from tensorfold.limits import check_count
from tensorfold.onnxrt import large

# short names users type -> (provider, the package that brings it)
PROVIDERS = {
    "cpu": ("CPUExecutionProvider", "onnxruntime"),
    "cuda": ("CUDAExecutionProvider", "onnxruntime-gpu"),
    "tensorrt": ("TensorrtExecutionProvider", "onnxruntime-gpu (with TensorRT)"),
    "dml": ("DmlExecutionProvider", "onnxruntime-directml (Windows)"),
    "webgpu": ("WebGpuExecutionProvider", "an onnxruntime build with --use_webgpu"),
    "migraphx": ("MIGraphXExecutionProvider", "onnxruntime-migraphx"),
    "openvino": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "coreml": ("CoreMLExecutionProvider", "onnxruntime (macOS build)"),
}


def resolve_provider(name: str) -> str:
    """Map a short or full provider name to the full name; fail clearly if this install lacks it."""
    full = PROVIDERS.get(name.lower(), (name, None))[0]
    available = ort.get_available_providers()
    if full not in available:
        package = next((pkg for short, (prov, pkg) in PROVIDERS.items() if prov == full), None)
        hint = f"; it comes with {package}" if package else ""
        raise TensorfoldError(
            f"execution provider '{name}' is not available in this onnxruntime "
            f"(available: {', '.join(available)}){hint}"
        )
    return full


OPTIMIZATION_LEVELS = ("none", "basic", "extended", "all")


def make_session(
    model: onnx.ModelProto | str,
    provider: str = "cpu",
    threads: int = 0,
    optimization: str = "all",
    profile_prefix: str | None = None,
    spinning: bool = True,
    optimized_model_path: str | None = None,
) -> ort.InferenceSession:
    """A session on one provider. threads=0 lets onnxruntime use every core. spinning=False stops
    the session's worker threads from busy-waiting after a run (they otherwise take the cores
    from the next session when several are timed in turn)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = check_count(threads)
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # fatal only: a failed run's error comes back as the exception every caller turns into one
    # `error:` line; at 3 onnxruntime also printed it, coloured, before that line
    opts.log_severity_level = 4
    if optimized_model_path:  # what the graph optimizer made of it (int8 fusion checks)
        opts.optimized_model_filepath = optimized_model_path
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    source = model
    if isinstance(model, onnx.ModelProto):
        source, held = large.session_parts(model)
        if held:
            opts.add_external_initializers(*large.ort_values(held))
    try:
        return ort.InferenceSession(source, opts, providers=[resolve_provider(provider)])
    except TensorfoldError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types for a model it cannot load
        raise TensorfoldError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:300]}") from None


def ort_message(exc: BaseException, limit: int = 300) -> str:
    """onnxruntime's error as one line: its lines joined (the first alone says "for the following
    indices" and stops before them) and the "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :" prefix
    dropped."""
    import re

    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    return text[:limit]
