"""Calibration: the user's real inputs, the layer statistics they give, and what is built on them
(data-fitted factors, the output-error budget search, int8 quantization)."""
