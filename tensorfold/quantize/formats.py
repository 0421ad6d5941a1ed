"""Which int8 format is fast on which provider.

Measured here (AVX-512 VNNI x86-64, onnxruntime 1.32, PP-OCRv4 det, batch 1, one thread;
docs/results/int8-formats.md, tools/bench_int8_formats.py): QDQ with uint8 activations and int8
per-channel weights (U8S8) runs 1.69x faster than float, every Conv, Add and Mul fused into a
QLinear kernel; symmetric S8S8 QDQ 0.72x (24 of 62 convs fused, 167 QuantizeLinear left);
QOperator U8S8 1.71x (the same kernels); dynamic quantization 0.24x on that conv net (ConvInteger
plus a DynamicQuantizeLinear per conv). onnxruntime's quantization docs give the rest: reduce_range
(7-bit weights) where x86-64 lacks VNNI (saturation of the u8*s8 pairwise sums), symmetric S8S8 on
ARM and for TensorRT."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorfold.errors import TensorfoldError

# providers with int8 kernels onnxruntime dispatches QDQ models to; the rest run a QDQ model as
# DequantizeLinear + float ops (slower than the float model)
INT8_PROVIDERS = ("cpu", "dml", "tensorrt", "openvino", "qnn", "nnapi")


@dataclass(frozen=True)
class Int8Format:
    """The settings handed to onnxruntime.quantization."""

    name: str  # "QDQ U8S8 per-channel"
    activations: str  # "uint8" | "int8"
    weights: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    why: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "activations": self.activations,
            "weights": self.weights,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "why": self.why,
        }

    def ort_types(self) -> tuple[Any, Any]:
        from onnxruntime.quantization import QuantType

        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        return types[self.activations], types[self.weights]


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    line = next((row for row in text.splitlines() if row.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def has_vnni(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def format_for(provider: str, machine: str | None = None, flags: set[str] | None = None) -> Int8Format:
    """The int8 format for `provider` on this machine (or the given one)."""
    provider = provider.lower()
    machine = (machine or platform.machine()).lower()
    if provider not in INT8_PROVIDERS:
        raise TensorfoldError(
            f"provider '{provider}' has no int8 kernels in onnxruntime (a QDQ model runs there "
            f"as float plus overhead); int8 is for {', '.join(INT8_PROVIDERS)}"
        )
    if provider == "tensorrt":
        return Int8Format("QDQ S8S8 per-channel", "int8", why="TensorRT takes symmetric int8 QDQ")
    if provider == "cpu" and machine in ("aarch64", "arm64"):
        return Int8Format("QDQ S8S8 per-channel", "int8", why="ARM kernels prefer symmetric int8 activations")
    if provider == "cpu" and machine in ("x86_64", "amd64", "i686", "x86") and not has_vnni(flags):
        return Int8Format(
            "QDQ U8S8 per-channel, reduced range",
            "uint8",
            reduce_range=True,
            why="x86-64 without VNNI: 7-bit weights keep u8*s8 pair sums from saturating",
        )
    return Int8Format(
        "QDQ U8S8 per-channel",
        "uint8",
        why="uint8 activations with int8 weights are onnxruntime's fast path (fused QLinear kernels)",
    )
