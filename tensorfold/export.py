"""torch module -> ONNX file, the one way tensorfold exports (zoo models, NAS candidates, compress())."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def export_onnx(module: nn.Module, example: torch.Tensor, path, opset: int = 17):
    """Eval-mode export with a dynamic batch, input "input" and output "output", one file (or a
    binary file object such as io.BytesIO)."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            path if hasattr(path, "write") else str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=True,
        )
    return path if hasattr(path, "write") else Path(path)
