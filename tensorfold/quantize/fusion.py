"""What onnxruntime made of a quantized model: the int8 kernels it fused, and the slow spots.

A QDQ model is only fast where onnxruntime's graph optimizer folds DequantizeLinear -> op ->
QuantizeLinear into one int8 kernel (QLinearConv, QLinearMatMul, ...). A weight-heavy op whose
input still comes from a DequantizeLinear after optimization runs in float on dequantized values,
plus the cost of the Q/DQ pair: that is a slow spot, and the report names it.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from tensorfold.onnxrt.sessions import make_session

# int8 kernels onnxruntime runs a quantized model with (ai.onnx and com.microsoft)
INT8_KERNELS = (
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeLSTM",
    "QGemm",
    "QAttention",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QLinearWhere",
    "QLinearReduceMean",
)
# float ops that carry the weights: with a dequantized weight after optimization, they ran unfused
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "LSTM", "GRU")


@dataclass
class FusionReport:
    kernels: dict[str, int] = field(default_factory=dict)  # int8 kernel -> count after optimization
    slow_spots: list[str] = field(default_factory=list)  # weight ops left in float between Q/DQ
    float_weight_ops: int = 0  # weight ops in float (kept float or unfused)
    quantize_nodes: int = 0  # QuantizeLinear left after optimization
    dequantize_nodes: int = 0

    @property
    def fused(self) -> int:
        return sum(self.kernels.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "kernels": dict(sorted(self.kernels.items())),
            "fused": self.fused,
            "slow_spots": self.slow_spots,
            "float_weight_ops": self.float_weight_ops,
            "quantize_nodes": self.quantize_nodes,
            "dequantize_nodes": self.dequantize_nodes,
        }

    def describe(self) -> str:
        kernels = ", ".join(f"{n} {k}" for k, n in sorted(self.kernels.items(), key=lambda kv: -kv[1]))
        text = f"onnxruntime fused {kernels or 'no int8 kernel'}"
        if self.slow_spots:
            names = ", ".join(self.slow_spots[:5]) + (", ..." if len(self.slow_spots) > 5 else "")
            text += f"; {len(self.slow_spots)} weight op(s) left as DequantizeLinear -> float op (slow): {names}"
        return text


def fused_kernels(model: onnx.ModelProto, provider: str = "cpu") -> FusionReport:
    """Load `model` with onnxruntime's full optimizations on `provider` and count what it became."""
    with tempfile.TemporaryDirectory(prefix="tensorfold-fused-") as tmp:
        path = Path(tmp, "optimized.onnx")
        make_session(model, provider, threads=1, optimized_model_path=str(path))
        optimized = onnx.load(str(path))
    return fusion_of(optimized)


def fusion_of(optimized: onnx.ModelProto) -> FusionReport:
    """Count the kernels and slow spots of a graph onnxruntime has optimized."""
    ops = Counter(n.op_type for n in optimized.graph.node)
    producers = {o: n for n in optimized.graph.node for o in n.output}
    report = FusionReport(
        kernels={k: ops[k] for k in INT8_KERNELS if ops[k]},
        quantize_nodes=ops["QuantizeLinear"],
        dequantize_nodes=ops["DequantizeLinear"],
    )
    for node in optimized.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        report.float_weight_ops += 1
        # its weight dequantized at run time: int8 weights with no int8 kernel (an activation input
        # fed by a DequantizeLinear is only the edge of a float island)
        weight = producers.get(node.input[1]) if len(node.input) > 1 else None
        if weight is not None and weight.op_type == "DequantizeLinear":
            report.slow_spots.append(node.name or node.output[0])
    return report
