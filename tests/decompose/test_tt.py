import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorfold.decompose.tt import (
    factorize_dim,
    tt_contraction,
    tt_matrix,
    tt_matrix_contraction,
    tt_params,
    tt_rank_ladder,
    tt_ranks,
    tt_svd,
)
from tensorfold.errors import DecompositionError

# numerical properties, cheap per example: few examples keep the folder fast and reproducible
FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None)

tensor_shapes = st.lists(st.integers(1, 6), min_size=1, max_size=5).map(tuple)


def _tensor(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(a)


@FAST
@given(shape=tensor_shapes, seed=st.integers(0, 2**16))
def test_full_rank_is_exact(shape, seed):
    a = _tensor(shape, seed)
    cores = tt_svd(a)
    assert len(cores) == len(shape)
    r = tt_ranks(cores)
    assert r[0] == 1 and r[-1] == 1
    for k, c in enumerate(cores):
        assert c.shape == (r[k], shape[k], r[k + 1])
    np.testing.assert_allclose(tt_contraction(cores), a, atol=1e-10 * max(1.0, np.abs(a).max()))
    # huge caps are clipped to what the unfoldings allow: same as no cap
    big = tt_svd(a, ranks=10**6)
    assert tt_ranks(big) == r
    assert tt_params(cores) == sum(c.size for c in cores)


@FAST
@given(shape=tensor_shapes.filter(lambda s: len(s) >= 2), seed=st.integers(0, 2**16), eps=st.floats(0.0, 0.9))
def test_rel_eps_guarantee(shape, seed, eps):
    a = _tensor(shape, seed)
    cores = tt_svd(a, rel_eps=eps)
    assert _rel(a, tt_contraction(cores)) <= eps + 1e-10


@FAST
@given(shape=tensor_shapes.filter(lambda s: len(s) >= 2), seed=st.integers(0, 2**16))
def test_error_decreases_with_rank_cap(shape, seed):
    a = _tensor(shape, seed)
    errs = [_rel(a, tt_contraction(tt_svd(a, ranks=r))) for r in range(1, 8)]
    assert all(b <= e + 1e-10 for e, b in zip(errs, errs[1:]))


def test_rank_cap_and_eps_together_and_per_bond_caps():
    a = _tensor((4, 5, 6, 3), 1)
    cores = tt_svd(a, ranks=[2, 3, 2])
    assert tt_ranks(cores) == [1, 2, 3, 2, 1]
    both = tt_svd(a, ranks=2, rel_eps=1e-12)  # eps wants full rank, the cap wins
    assert max(tt_ranks(both)) == 2
    loose = tt_svd(a, ranks=100, rel_eps=0.99)
    assert max(tt_ranks(loose)) <= 4


def test_low_rank_tensor_found_by_eps():
    rng = np.random.default_rng(2)
    g = [rng.standard_normal(s) for s in [(1, 5, 2), (2, 6, 3), (3, 4, 2), (2, 5, 1)]]
    a = tt_contraction(g)
    cores = tt_svd(a, rel_eps=1e-8)
    assert tt_ranks(cores) == [1, 2, 3, 2, 1]
    assert _rel(a, tt_contraction(cores)) < 1e-8


def test_bad_arguments():
    a = _tensor((3, 4, 5), 0)
    with pytest.raises(ValueError):
        tt_svd(a, ranks=[2])  # needs N-1 = 2 caps
    with pytest.raises(ValueError):
        tt_svd(a, ranks=0)
    with pytest.raises(ValueError):
        tt_svd(a, rel_eps=-0.1)
    with pytest.raises(DecompositionError):
        tt_svd(np.full((2, 2), np.nan))
    with pytest.raises(ValueError):
        tt_contraction([np.ones((1, 2, 3)), np.ones((2, 2, 1))])  # bond mismatch


matrix_dims = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=3)


@FAST
@given(dims=matrix_dims, seed=st.integers(0, 2**16))
def test_tt_matrix_full_rank_is_exact(dims, seed):
    row_dims = [m for m, _ in dims]
    col_dims = [n for _, n in dims]
    w = _tensor((int(np.prod(row_dims)), int(np.prod(col_dims))), seed)
    cores = tt_matrix(w, row_dims, col_dims)
    for c, m, n in zip(cores, row_dims, col_dims):
        assert c.ndim == 4 and c.shape[1:3] == (m, n)
    np.testing.assert_allclose(tt_matrix_contraction(cores), w, atol=1e-10 * max(1.0, np.abs(w).max()))


def test_tt_matrix_truncation_and_validation():
    w = _tensor((12, 20), 3)
    cores = tt_matrix(w, [3, 4], [5, 4], ranks=2)
    assert [c.shape for c in cores] == [(1, 3, 5, 2), (2, 4, 4, 1)]
    assert tt_params(cores) == 1 * 3 * 5 * 2 + 2 * 4 * 4 * 1
    assert tt_matrix_contraction(cores).shape == (12, 20)
    assert _rel(w, tt_matrix_contraction(tt_matrix(w, [3, 4], [5, 4], rel_eps=0.5))) <= 0.5 + 1e-12
    # a Kronecker product is TT-matrix rank 1
    a, b = _tensor((3, 5), 4), _tensor((4, 4), 5)
    k = np.kron(a, b)
    assert _rel(k, tt_matrix_contraction(tt_matrix(k, [3, 4], [5, 4], ranks=1))) < 1e-12
    with pytest.raises(ValueError):
        tt_matrix(w, [3, 5], [5, 4])
    with pytest.raises(ValueError):
        tt_matrix(w, [12], [5, 4])


@pytest.mark.parametrize(
    "n,d,expected",
    [
        (784, 2, [28, 28]),
        (512, 3, [8, 8, 8]),
        (12, 2, [4, 3]),
        (13, 3, [13, 1, 1]),
        (1, 2, [1, 1]),
        (4096, 4, [8, 8, 8, 8]),
        (1000, 3, [10, 10, 10]),
        (7, 1, [7]),
    ],
)
def test_factorize_dim_examples(n, d, expected):
    assert factorize_dim(n, d) == expected


def _all_factorizations(n, d, upper=None):
    upper = n if upper is None else upper
    if d == 1:
        return [[n]] if n <= upper else []
    return [
        [k] + rest for k in range(min(n, upper), 0, -1) if n % k == 0 for rest in _all_factorizations(n // k, d - 1, k)
    ]


@FAST
@given(n=st.integers(1, 400), d=st.integers(1, 4))
def test_factorize_dim_is_the_most_balanced(n, d):
    f = factorize_dim(n, d)
    assert len(f) == d and int(np.prod(f)) == n
    assert f == sorted(f, reverse=True) and min(f) >= 1
    assert f[0] == min(g[0] for g in _all_factorizations(n, d))  # smallest largest factor


def test_factorize_dim_large_is_fast():
    f = factorize_dim(2**20 * 3, 6)
    assert int(np.prod(f)) == 2**20 * 3 and max(f) == 16


def test_factorize_dim_bad_arguments():
    with pytest.raises(ValueError):
        factorize_dim(0, 2)
    with pytest.raises(ValueError):
        factorize_dim(8, 0)


def test_the_ladder_memo_and_the_discarded_error_match_a_plain_tt_svd():
    """A ladder of truncations sharing one memo gives the cores a lone call gives, and TT-SVD's
    error read from the discarded spectrum equals the reconstructed error."""
    from tensorfold.decompose.tt import tt_contraction, tt_svd

    t = np.random.default_rng(3).standard_normal((16, 3, 3, 24))
    memo: dict = {}
    for eps in (0.9, 0.5, 0.2, 0.5, 0.05):
        info: dict = {}
        shared = tt_svd(t, rel_eps=eps, memo=memo, info=info)
        alone = tt_svd(t, rel_eps=eps)
        assert [c.shape for c in shared] == [c.shape for c in alone]
        assert all(np.allclose(a, b) for a, b in zip(shared, alone))
        err2 = np.linalg.norm(t - tt_contraction(shared)) ** 2 / np.linalg.norm(t) ** 2
        assert abs(info["error2"] - err2) < 1e-8


@pytest.mark.parametrize("shape", [(16, 3, 3, 24), (8, 5, 12), (32, 3, 3, 32)])
def test_rank_ladder_estimate_within_bounds(shape):
    """The one-sweep ladder: ranks fall as the share grows down to rank 1 on every bond, and the
    estimate lies between TT-SVD's lower bound (the worst single unfolding) and its exact error's
    upper bound (the sum over bonds), with the exact error inside the same bounds."""
    rng = np.random.default_rng(3)
    # a decaying spectrum, as trained weights have: a low-rank part plus small noise
    a = np.einsum(
        "ir,jr,kr->ijk", *(rng.standard_normal((n, 6)) for n in (shape[0], int(np.prod(shape[1:-1])), shape[-1]))
    )
    a = a.reshape(shape) + 0.3 * rng.standard_normal(shape)
    norm2 = float(np.vdot(a, a))
    ladder = tt_rank_ladder(a, np.geomspace(1e-4, 1.0, 20))
    assert ladder[-1][0] == tuple(1 for _ in shape[:-1])
    for (r_small, _), (r_big, _) in zip(ladder[1:], ladder[:-1]):
        assert all(s <= b for s, b in zip(r_small, r_big))
    for ranks, est in ladder:
        info: dict = {}
        tt_svd(a, ranks=list(ranks), info=info)
        tails = []
        for k, r in enumerate(ranks):
            s = np.linalg.svd(a.reshape(int(np.prod(shape[: k + 1])), -1), compute_uv=False)
            tails.append(float((s[r:] ** 2).sum()) / norm2)
        lower, upper = max(tails), sum(tails)
        assert lower - 1e-9 <= info["error2"] <= upper + 1e-9
        assert lower - 1e-9 <= est <= min(upper, 1.0) + 1e-9


def test_rank_ladder_one_bond_is_exact():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 20))
    for ranks, est in tt_rank_ladder(a, [0.01, 0.1, 0.5]):
        info: dict = {}
        tt_svd(a, ranks=list(ranks), info=info)
        assert est == pytest.approx(info["error2"], rel=1e-9, abs=1e-12)
