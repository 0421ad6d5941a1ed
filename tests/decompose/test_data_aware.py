"""Data-fitted factors: exact at full rank, errors as predicted, never worse than weight-fitted ones
on the data they were fitted to."""

import numpy as np
import pytest

from tensorfold.decompose.data_aware import Tucker2DataFit, WhitenedSVD, damped, output_error2, refit_output
from tensorfold.decompose.svd import truncated_svd
from tensorfold.decompose.tucker2 import tucker2, tucker2_reconstruct


def correlated_gram(dim: int, n: int = 4000, seed: int = 0) -> np.ndarray:
    """Gram of inputs with a decaying spectrum and a mean (as post-ReLU activations have)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dim, dim)) * np.geomspace(1, 1e-2, dim)
    x = rng.standard_normal((n, dim)) @ mix.T + 0.3
    return x.T @ x


@pytest.mark.parametrize("k,n,rank", [(20, 12, 3), (12, 30, 5), (16, 16, 16)])
def test_whitened_svd_error_is_its_spectrum_tail_and_beats_plain(k, n, rank):
    rng = np.random.default_rng(1)
    m = rng.standard_normal((k, n))
    gram = correlated_gram(k)
    fit = WhitenedSVD(m, gram)
    left, right = fit.factors(rank)
    s2 = fit.spectrum
    g = damped(gram)
    err = output_error2(m.T, (left @ right).T, g)
    assert err == pytest.approx(s2[rank:].sum() / s2.sum(), abs=1e-9)
    pl, pr = truncated_svd(m, rank)
    assert err <= output_error2(m.T, (pl @ pr).T, g) + 1e-12
    if rank == min(k, n):
        np.testing.assert_allclose(left @ right, m, atol=1e-8)


@pytest.mark.parametrize("gram_kind", ["correlated", "zero"])
def test_whitening_does_not_depend_on_which_root(gram_kind):
    """The Cholesky root gives the symmetric (eigendecomposition) root's spectrum and factors."""
    rng = np.random.default_rng(2)
    m = rng.standard_normal((24, 10))
    gram = correlated_gram(24) if gram_kind == "correlated" else np.zeros((24, 24))
    lam, q = np.linalg.eigh(damped(gram))
    sym = WhitenedSVD.__new__(WhitenedSVD)
    u, sym.s, sym.vt = np.linalg.svd((np.sqrt(lam)[:, None] * q.T) @ m, full_matrices=False)
    sym.left = (q / np.sqrt(lam)[None, :]) @ u
    fit = WhitenedSVD(m, gram)
    np.testing.assert_allclose(fit.spectrum, sym.spectrum, rtol=1e-9, atol=1e-12)
    for rank in (1, 4, 10):
        a, b = fit.factors(rank), sym.factors(rank)
        np.testing.assert_allclose(a[0] @ a[1], b[0] @ b[1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("shape", [(12, 8, 3, 3), (6, 10, 3, 1), (8, 5, 5)])
def test_tucker2_data_matches_its_table_and_beats_hosvd(shape):
    rng = np.random.default_rng(2)
    w = rng.standard_normal(shape)
    o, i = shape[:2]
    d = int(np.prod(shape[1:]))
    gram = correlated_gram(d, seed=3)
    r_ins = [1, 2, i // 2, i]
    fit = Tucker2DataFit(w, gram)
    table, total = fit.table(r_ins), fit.total
    assert total > 0 and table.shape == (o + 1, len(r_ins))
    g = damped(gram)
    for ro in (1, o // 2, o):
        for col, ri in enumerate(r_ins):
            core, out_f, in_f, err = fit.factors((ro, ri))
            approx = np.einsum("oa,abk,ib->oik", out_f, core.reshape(ro, ri, -1), in_f).reshape(o, -1)
            direct = output_error2(w.reshape(o, -1), approx, g)
            assert err == pytest.approx(table[ro, col], abs=1e-7)
            assert direct == pytest.approx(err, abs=1e-7)
            plain = tucker2_reconstruct(tucker2(w, (ro, ri))).reshape(o, -1)
            assert direct <= output_error2(w.reshape(o, -1), plain, g) + 1e-9
    assert table[o, -1] < 1e-8  # full rank: exact
    assert np.all(np.diff(table, axis=0) <= 1e-9)


def test_refit_output_error_is_exact():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((7, 18))
    maps = rng.standard_normal((4, 18))
    gram = correlated_gram(18, seed=5)
    b, err = refit_output(w, maps, gram)
    assert output_error2(w, b @ maps, damped(gram)) == pytest.approx(err, abs=1e-9)
    # least squares: any other output matrix does worse
    other = b + 0.01 * rng.standard_normal(b.shape)
    assert output_error2(w, other @ maps, damped(gram)) > err
