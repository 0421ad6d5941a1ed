import numpy as np
import pytest

import tensorfold.decompose.cp as cp_module
from tensorfold.decompose.cp import CP, cp_als, cp_params, cp_reconstruct
from tensorfold.errors import DecompositionError


def _low_rank(dims, rank, seed):
    rng = np.random.default_rng(seed)
    factors = [rng.standard_normal((d, rank)) for d in dims]
    return cp_reconstruct(CP(factors)), factors


@pytest.mark.parametrize(
    "dims,rank,seed",
    [
        ((6, 7, 8), 4, 0),
        ((12, 10, 9), 6, 1),
        ((16, 8, 3, 3), 3, 2),
        ((9, 11), 3, 3),
        ((5, 4, 3, 2, 3), 2, 4),
    ],
)
def test_recovers_exactly_low_rank_tensor(dims, rank, seed):
    t, _ = _low_rank(dims, rank, seed)
    cp = cp_als(t, rank, n_iter_max=500, tol=1e-10)
    assert cp.rel_error < 1e-6
    rec = cp_reconstruct(cp)
    assert rec.shape == t.shape and rec.dtype == np.float64
    assert np.linalg.norm(rec - t) / np.linalg.norm(t) < 1e-6
    assert [f.shape for f in cp.factors] == [(d, rank) for d in dims]


def test_reported_error_is_the_true_error_and_factors_are_balanced():
    rng = np.random.default_rng(5)
    t = rng.standard_normal((10, 8, 6))
    cp = cp_als(t, 5, n_iter_max=30)
    true = np.linalg.norm(cp_reconstruct(cp) - t) / np.linalg.norm(t)
    assert cp.rel_error == pytest.approx(true, rel=1e-9)
    assert 0 < cp.rel_error < 1
    norms = np.stack([np.linalg.norm(f, axis=0) for f in cp.factors])
    np.testing.assert_allclose(norms, norms[0:1].repeat(3, axis=0), rtol=1e-9)
    weights = norms.prod(axis=0)
    assert np.all(np.diff(weights) <= 1e-12)  # components sorted by weight
    assert 1 <= cp.n_iter <= 30 and cp.restarts == 0


def test_rank_above_every_mode_works():
    rng = np.random.default_rng(6)
    t = rng.standard_normal((4, 3, 3))
    cp = cp_als(t, 7, n_iter_max=50)  # CP ranks may exceed the modes: no clipping
    assert cp.factors[0].shape == (4, 7)
    assert cp.rel_error < 0.5


def test_line_search_beats_tensorly_style_plain_als():
    # an 8x-compressed conv-like kernel; same iteration count as plain ALS from the same init
    rng = np.random.default_rng(7)
    w = rng.standard_normal((24, 24, 9)) * ((1.0 + np.arange(24)) ** -0.7)[:, None, None]
    r = (w.size // 8) // sum(w.shape)
    ours = cp_als(w, r, n_iter_max=40, tol=0.0)
    norm2 = float(np.vdot(w, w))
    init = cp_module._svd_init(
        [np.eye(24)] + [cp_module._mode_gram(w, n) for n in (1, 2)], w.shape, r, np.random.default_rng(0)
    )
    factors = [f.copy() for f in init]
    for _ in range(40):
        for n in range(3):
            others = [factors[m] for m in range(3) if m != n]
            v = (others[0].T @ others[0]) * (others[1].T @ others[1])
            unf = np.moveaxis(w, n, 0).reshape(w.shape[n], -1)
            kr = (others[0][:, None, :] * others[1][None, :, :]).reshape(-1, r)
            factors[n] = np.linalg.solve(v, (unf @ kr).T).T
    plain = np.linalg.norm(cp_reconstruct(CP(factors)) - w) / np.sqrt(norm2)
    assert ours.rel_error <= plain + 1e-9


def test_nan_input_is_a_decomposition_error():
    t = np.ones((3, 4, 5))
    t[1, 2, 3] = np.nan
    with pytest.raises(DecompositionError):
        cp_als(t, 2)


def test_every_try_rejected_raises_with_reasons(monkeypatch):
    monkeypatch.setattr(cp_module, "_DEGENERACY_RATIO", 1e-3)  # nothing can pass
    t, _ = _low_rank((5, 6, 7), 2, 8)
    with pytest.raises(DecompositionError) as info:
        cp_als(t, 2, n_iter_max=5, n_restarts=2)
    msg = str(info.value)
    assert "try 1" in msg and "try 3" in msg and "degenerate" in msg and "\n" not in msg


def test_rejected_svd_init_falls_back_to_random_restarts(monkeypatch):
    real = cp_module._check
    calls = []

    def reject_first(factors, norm_t, rel):
        calls.append(rel)
        if len(calls) == 1:
            return "forced", True
        return real(factors, norm_t, rel)

    monkeypatch.setattr(cp_module, "_check", reject_first)
    t, _ = _low_rank((6, 5, 4), 2, 9)
    cp = cp_als(t, 2, n_iter_max=300, tol=1e-10, n_restarts=2)
    assert cp.restarts == 2 and len(calls) == 3
    assert cp.rel_error < 1e-5


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(10)
    t = rng.standard_normal((6, 5, 4))
    a = cp_als(t, 3, n_iter_max=20, seed=3)
    b = cp_als(t, 3, n_iter_max=20, seed=3)
    for fa, fb in zip(a.factors, b.factors):
        np.testing.assert_array_equal(fa, fb)


def test_zero_tensor_and_bad_arguments():
    cp = cp_als(np.zeros((3, 4, 2)), 2)
    assert cp.rel_error == 0.0 and np.all(cp_reconstruct(cp) == 0)
    with pytest.raises(ValueError):
        cp_als(np.ones((3, 3, 3)), 0)
    with pytest.raises(ValueError):
        cp_als(np.ones(5), 1)


def test_params():
    assert cp_params((64, 32, 3, 3), 10) == 10 * (64 + 32 + 3 + 3)
    assert cp_params((64, 32, 9), 10) == 10 * (64 + 32 + 9)


def test_saddle_with_a_dead_component_triggers_restarts():
    # W-type tensor (border rank 2, rank 3): from the SVD init ALS kills one of the two
    # components and stalls at a saddle; random restarts must find the much better fits.
    rng = np.random.default_rng(0)
    a, b, c = (np.linalg.qr(rng.standard_normal((5, 2)))[0] for _ in range(3))
    t = (
        np.einsum("i,j,k->ijk", a[:, 0], b[:, 0], c[:, 1])
        + np.einsum("i,j,k->ijk", a[:, 0], b[:, 1], c[:, 0])
        + np.einsum("i,j,k->ijk", a[:, 1], b[:, 0], c[:, 0])
    )
    cp = cp_als(t, 2)
    assert cp.restarts == 3
    assert cp.rel_error < 0.1  # the saddle sits at 0.816


def test_a_time_budget_bounds_cp_als():
    """A layer must never hold a run for minutes: past `seconds` no sweep and no restart starts."""
    import time

    t = np.random.default_rng(0).standard_normal((64, 32, 3, 3))
    start = time.perf_counter()
    result = cp_als(t, 300, n_iter_max=10_000, tol=0.0, seconds=0.5)
    assert time.perf_counter() - start < 10
    assert result.n_iter < 10_000 and np.isfinite(result.rel_error)
