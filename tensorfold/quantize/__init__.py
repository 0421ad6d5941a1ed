"""int8 quantization with onnxruntime: the format that is fast on the provider, calibrated on the
user's samples, mixed precision chosen by measured error, and what onnxruntime fused checked."""
