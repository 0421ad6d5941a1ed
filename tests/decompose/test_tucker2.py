import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorfold.decompose.tucker2 import (
    Tucker2,
    leading_basis,
    tucker2,
    tucker2_error_table,
    tucker2_params,
    tucker2_reconstruct,
)
from tensorfold.errors import DecompositionError

# numerical properties, cheap per example: few examples keep the folder fast and reproducible
FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None)

spatial = st.sampled_from([(), (1,), (3,), (1, 1), (3, 1), (1, 5), (3, 3), (2, 3, 2)])
kernel_shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), spatial).map(lambda t: (t[0], t[1]) + t[2])


def _kernel(shape, seed, decay=0.0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    if decay and len(shape) >= 2:
        w = w * ((1.0 + np.arange(shape[0])) ** -decay).reshape((-1,) + (1,) * (len(shape) - 1))
    return w


def _rel_err2(w, t):
    return np.linalg.norm(w - tucker2_reconstruct(t)) ** 2 / np.linalg.norm(w) ** 2


@FAST
@given(shape=kernel_shapes, seed=st.integers(0, 2**16))
def test_full_rank_is_exact(shape, seed):
    w = _kernel(shape, seed)
    t = tucker2(w, (shape[0] + 2, shape[1] + 5))  # clipped to (O, I)
    assert t.ranks == (shape[0], shape[1])
    assert t.core.shape == shape
    np.testing.assert_allclose(tucker2_reconstruct(t), w, atol=1e-10 * max(1.0, np.abs(w).max()))


@FAST
@given(shape=kernel_shapes, seed=st.integers(0, 2**16), data=st.data())
def test_factors_are_orthonormal_and_shapes_right(shape, seed, data):
    w = _kernel(shape, seed)
    ro = data.draw(st.integers(1, shape[0]))
    ri = data.draw(st.integers(1, shape[1]))
    t = tucker2(w, (ro, ri))
    assert isinstance(t, Tucker2)
    assert t.out_factor.shape == (shape[0], ro) and t.in_factor.shape == (shape[1], ri)
    assert t.core.shape == (ro, ri) + shape[2:]
    np.testing.assert_allclose(t.out_factor.T @ t.out_factor, np.eye(ro), atol=1e-10)
    np.testing.assert_allclose(t.in_factor.T @ t.in_factor, np.eye(ri), atol=1e-10)
    # the core is the projection of the kernel on the factors
    c = np.einsum("oa,oi...,ib->ab...", t.out_factor, w, t.in_factor)
    np.testing.assert_allclose(t.core, c, atol=1e-10 * max(1.0, np.abs(w).max()))


@FAST
@given(shape=kernel_shapes, seed=st.integers(0, 2**16))
def test_error_table_is_exact_hosvd_error(shape, seed):
    w = _kernel(shape, seed, decay=0.5)
    table = tucker2_error_table(w)
    o, i = shape[:2]
    assert table.shape == (o + 1, i + 1)
    assert np.all(table[0, :] == 1.0) and np.all(table[:, 0] == 1.0)
    # explicit HOSVD truncations (no HOOI) against the table, every rank pair
    for ro in range(1, o + 1):
        for ri in range(1, i + 1):
            explicit = _rel_err2(w, tucker2(w, (ro, ri), hooi_iters=0))
            assert abs(table[ro, ri] - explicit) <= 1e-9, (ro, ri, table[ro, ri], explicit)
    assert table[o, i] <= 1e-12
    # monotone in both ranks
    assert np.all(np.diff(table, axis=0) <= 1e-12) and np.all(np.diff(table, axis=1) <= 1e-12)


@FAST
@given(shape=kernel_shapes, seed=st.integers(0, 2**16), data=st.data())
def test_hooi_never_worse_than_hosvd(shape, seed, data):
    w = _kernel(shape, seed)
    ranks = (data.draw(st.integers(1, shape[0])), data.draw(st.integers(1, shape[1])))
    hosvd = _rel_err2(w, tucker2(w, ranks, hooi_iters=0))
    hooi = _rel_err2(w, tucker2(w, ranks, hooi_iters=3))
    assert hooi <= hosvd + 1e-12


def test_error_decreases_with_rank():
    w = _kernel((12, 10, 3, 3), 3, decay=0.7)
    errs = [_rel_err2(w, tucker2(w, (r, r))) for r in range(1, 11)]
    assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < errs[0]


def test_tall_unfoldings_use_a_complete_basis():
    # O > I*k: the mode-0 unfolding is tall and rank-deficient; the basis must still be orthonormal
    w = _kernel((40, 3, 1, 1), 0)
    t = tucker2(w, (10, 3))
    np.testing.assert_allclose(t.out_factor.T @ t.out_factor, np.eye(10), atol=1e-10)
    np.testing.assert_allclose(tucker2_reconstruct(t), w, atol=1e-10)  # rank 3 covers everything
    q = leading_basis(np.zeros((6, 2)), 4)  # all-zero: still an orthonormal basis
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-12)


def test_table_of_zero_kernel_and_nan():
    table = tucker2_error_table(np.zeros((3, 2, 3, 3)))
    assert table.shape == (4, 3) and np.all(table[1:, 1:] == 0.0)
    w = np.ones((2, 2, 3, 3))
    w[0, 0, 0, 0] = np.inf
    with pytest.raises(DecompositionError):
        tucker2(w, (1, 1))


def test_bad_ranks_raise():
    w = _kernel((4, 4, 3, 3), 0)
    with pytest.raises(ValueError):
        tucker2(w, (0, 2))
    with pytest.raises(ValueError):
        tucker2(w, (2, -1))
    with pytest.raises(ValueError):
        tucker2(np.ones(5), (1, 1))


def test_params():
    assert tucker2_params((64, 32, 3, 3), (16, 8)) == 64 * 16 + 16 * 8 * 9 + 8 * 32
    assert tucker2_params((64, 32), (16, 8)) == 64 * 16 + 16 * 8 + 8 * 32
    assert tucker2_params((4, 2, 3, 1), (10, 10)) == tucker2_params((4, 2, 3, 1), (4, 2))
    t = tucker2(_kernel((8, 6, 1, 5), 0), (3, 2))
    assert tucker2_params((8, 6, 1, 5), t.ranks) == t.core.size + t.out_factor.size + t.in_factor.size
