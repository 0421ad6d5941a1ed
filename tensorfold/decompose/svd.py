"""Truncated SVD of a weight matrix (Gemm/MatMul, 1x1 conv): W ~= left @ right."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tensorfold.decompose.ranks import clip_rank
from tensorfold.errors import DecompositionError

__all__ = ["singular_values", "truncated_svd", "as_float_array"]


def as_float_array(array: npt.ArrayLike, ndim: int | None = None, name: str = "array") -> np.ndarray:
    """float64 view/copy of ``array``; non-finite values are a DecompositionError (nothing to decompose)."""
    a = np.asarray(array, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise DecompositionError(f"{name} contains NaN or Inf")
    return a


def singular_values(matrix: npt.ArrayLike) -> np.ndarray:
    """Singular values of ``matrix``, descending, float64."""
    a = as_float_array(matrix, 2, "matrix")
    return np.linalg.svd(a, compute_uv=False)


def truncated_svd(matrix: npt.ArrayLike, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-``rank`` factorization ``left (m, r) @ right (r, n)`` of ``matrix``.

    The singular values are split as sqrt(s) onto both sides, so both factors have
    the same scale (better conditioned in float16/int8 than putting s on one side).
    ``rank`` is clipped to min(m, n).
    """
    a = as_float_array(matrix, 2, "matrix")
    r = clip_rank(rank, *a.shape)
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    root = np.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vt[:r]
