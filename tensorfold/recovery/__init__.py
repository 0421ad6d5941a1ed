"""Recovery: fine-tune a factorized model with distillation from the original, and write the
trained weights back into the same ONNX graph."""
