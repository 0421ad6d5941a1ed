import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorfold.decompose.svd import singular_values, truncated_svd
from tensorfold.errors import DecompositionError

# numerical properties, cheap per example: few examples keep the folder fast and reproducible
FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None)

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def _matrix(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@FAST
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_full_rank_is_exact_and_balanced(shape, seed):
    a = _matrix(shape, seed)
    left, right = truncated_svd(a, max(shape) + 3)  # clipped, never raises
    r = min(shape)
    assert left.shape == (shape[0], r) and right.shape == (r, shape[1])
    assert left.dtype == np.float64 and right.dtype == np.float64
    np.testing.assert_allclose(left @ right, a, atol=1e-12 * max(1.0, np.abs(a).max()))
    # sqrt(s) on both sides: column norms of left equal row norms of right
    np.testing.assert_allclose(np.linalg.norm(left, axis=0), np.linalg.norm(right, axis=1), rtol=1e-10)


@FAST
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_error_decreases_with_rank_and_matches_eckart_young(shape, seed):
    a = _matrix(shape, seed)
    s = singular_values(a)
    assert np.all(np.diff(s) <= 1e-12)
    errs = []
    for r in range(1, min(shape) + 1):
        left, right = truncated_svd(a, r)
        e2 = np.linalg.norm(a - left @ right) ** 2
        np.testing.assert_allclose(e2, np.sum(s[r:] ** 2), atol=1e-10 * np.sum(s**2))
        errs.append(e2)
    assert all(b <= a_ + 1e-10 for a_, b in zip(errs, errs[1:]))


def test_rank_below_one_raises():
    with pytest.raises(ValueError):
        truncated_svd(np.eye(3), 0)


def test_not_a_matrix_raises():
    with pytest.raises(ValueError):
        truncated_svd(np.ones((2, 2, 2)), 1)


def test_nan_is_a_decomposition_error():
    a = np.eye(3)
    a[0, 1] = np.nan
    with pytest.raises(DecompositionError):
        truncated_svd(a, 2)
    with pytest.raises(DecompositionError):
        singular_values(a)


def test_accepts_float32_and_returns_float64():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    left, right = truncated_svd(a, 2)
    assert left.dtype == np.float64
    np.testing.assert_allclose(left @ right, a, atol=1e-4)  # arange is rank 2
