"""tensorfold: rewrite the weight-heavy nodes of ONNX models into verified low-rank factor chains."""

__version__ = "0.1.0"
