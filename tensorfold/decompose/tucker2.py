"""Tucker-2 over the two channel modes of a conv kernel (Kim et al. 2016).

A kernel W of shape (O, I, *k) becomes  out_factor (O, r_out), core (r_out, r_in, *k),
in_factor (I, r_in):  W ~= core x0 out_factor x1 in_factor. As a conv chain:
1x1 conv I -> r_in (in_factor^T), the k-conv r_in -> r_out (core), 1x1 conv r_out -> O.

Speed: the bases come from eigendecompositions of the small Gram matrices (O x O and
I x I), never from an SVD of an unfolding; that is several times cheaper than the SVD of
the (O, I*k) unfolding and as accurate for the leading subspaces that are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tensorfold.decompose.ranks import clip_rank
from tensorfold.decompose.svd import as_float_array

__all__ = [
    "Tucker2",
    "tucker2",
    "tucker2_reconstruct",
    "tucker2_error_table",
    "tucker2_params",
    "leading_basis",
    "leading_subspace",
]


@dataclass
class Tucker2:
    core: np.ndarray  # (r_out, r_in, *k)
    out_factor: np.ndarray  # (O, r_out), orthonormal columns
    in_factor: np.ndarray  # (I, r_in), orthonormal columns

    @property
    def ranks(self) -> tuple[int, int]:
        return int(self.core.shape[0]), int(self.core.shape[1])


def _sym_eig_desc(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w, v = np.linalg.eigh(gram)
    return w[::-1], v[:, ::-1]


def leading_basis(a: np.ndarray, rank: int) -> np.ndarray:
    """(m, rank) orthonormal columns spanning the leading left singular subspace of ``a`` (m, n).

    Columns are ordered by descending singular value. Wide or square ``a``: eigenvectors of
    a a^T (m x m). Tall ``a`` (m > n): eigenvectors V of a^T a (n x n), then a V normalized and
    re-orthonormalized (QR); directions beyond the numerical rank, and ``rank`` > n, are
    completed with a deterministic orthonormal complement.
    """
    return leading_subspace(a, lambda s2: rank)[0]


def gram_eig(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(squared singular values of ``a``, descending; eigenvectors of its smaller Gram matrix)."""
    m, n = a.shape
    w, v = _sym_eig_desc(a @ a.T if m <= n else a.T @ a)
    return np.maximum(w, 0.0), v


def leading_subspace(
    a: np.ndarray, choose_rank: Callable[[np.ndarray], int], eig: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(basis (m, r), squared singular values of ``a``, descending) with r = choose_rank(s2).

    The spectrum comes from the eigenvalues of the smaller Gram matrix (accurate to about
    eps * s_max^2, plenty for choosing ranks and for the subspaces that are kept). ``eig``:
    gram_eig(a) computed before, for a caller that truncates the same matrix several ways.
    """
    m, n = a.shape
    s2, v = eig if eig is not None else gram_eig(a)
    if m <= n:
        rank = min(int(choose_rank(s2)), m)
        return np.ascontiguousarray(v[:, :rank]), s2
    rank = min(int(choose_rank(s2)), m)
    k = min(rank, n)
    b = a @ v[:, :k]
    norms = np.linalg.norm(b, axis=0)
    good = norms > 1e-12 * max(float(norms[0]) if norms.size else 0.0, np.finfo(float).tiny)
    cols = np.empty((m, rank))
    cols[:, :k] = np.where(good, b / np.where(good, norms, 1.0), 0.0)
    bad = np.concatenate([~good, np.ones(rank - k, dtype=bool)])
    if not np.any(bad) and norms[k - 1] > 1e-4 * norms[0]:
        # a V for eigenvectors V of a^T a has orthogonal columns; well-conditioned, normalizing
        # them is orthonormal to ~1e-8 and the QR (the cost of the tall case) adds nothing
        return cols, s2
    if np.any(bad):
        fill = np.random.default_rng(12345).standard_normal((m, rank))
        cols[:, bad] = fill[:, bad]
    q, r = np.linalg.qr(cols)
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)
    return q, s2


def _as_3d(kernel: npt.ArrayLike) -> tuple[np.ndarray, tuple[int, ...]]:
    w = np.asarray(kernel)
    if w.ndim < 2:
        raise ValueError(f"kernel must have shape (O, I, *spatial), got {w.shape}")
    w = as_float_array(w, None, "kernel")
    spatial = tuple(w.shape[2:])
    o, i = w.shape[:2]
    return w.reshape(o, i, -1), spatial


def _mode1_unfolding(w3: np.ndarray) -> np.ndarray:
    o, i, k = w3.shape
    return np.ascontiguousarray(w3.transpose(1, 0, 2)).reshape(i, o * k)


def tucker2(kernel: npt.ArrayLike, ranks: tuple[int, int], hooi_iters: int = 5) -> Tucker2:
    """Tucker-2 of ``kernel`` (O, I, *spatial) to ``ranks`` = (r_out, r_in).

    HOSVD initialization from the Gram matrices of the mode-0 and mode-1 unfoldings, then up
    to ``hooi_iters`` HOOI sweeps (out_factor given in_factor, then in_factor given
    out_factor), stopping early once the error stops improving. Ranks are clipped to (O, I).
    """
    w3, spatial = _as_3d(kernel)
    o, i, k = w3.shape
    r_out = clip_rank(ranks[0], o)
    r_in = clip_rank(ranks[1], i)
    if hooi_iters < 0:
        raise ValueError(f"hooi_iters must be >= 0, got {hooi_iters}")

    w0 = w3.reshape(o, i * k)  # mode-0 unfolding (a view)
    w_oki = np.ascontiguousarray(w3.transpose(0, 2, 1)).reshape(o * k, i)
    norm2 = float(np.vdot(w0, w0))

    u = leading_basis(w0, r_out)
    v = leading_basis(_mode1_unfolding(w3), r_in)

    def core_of(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (r_out, I, k) -> contract I with v -> (r_out, r_in, k)
        z = (u.T @ w0).reshape(r_out, i, k)
        return np.einsum("aik,ib->abk", z, v, optimize=True), z

    core, z = core_of(u, v)
    err2 = norm2 - float(np.vdot(core, core))
    # Full ranks are exact already; with no spatial extent (k == 1) W is a matrix and the
    # HOSVD bases (its leading singular vectors) are already optimal, HOOI cannot improve them.
    done = (r_out == o and r_in == i) or k == 1
    for _ in range(0 if done else hooi_iters):
        # out_factor: leading left subspace of W x1 v^T, unfolded on mode 0 -> (O, k*r_in)
        y = (w_oki @ v).reshape(o, k * r_in)
        u_new = leading_basis(y, r_out)
        # in_factor: leading left subspace of W x0 u^T, unfolded on mode 1 -> (I, r_out*k)
        z_new = (u_new.T @ w0).reshape(r_out, i, k)
        v_new = leading_basis(_mode1_unfolding(z_new), r_in)
        core_new = np.einsum("aik,ib->abk", z_new, v_new, optimize=True)
        err2_new = norm2 - float(np.vdot(core_new, core_new))
        if not err2_new < err2 - 1e-9 * max(err2, 1e-300):
            if err2_new < err2:
                u, v, core, err2 = u_new, v_new, core_new, err2_new
            break
        u, v, core, err2 = u_new, v_new, core_new, err2_new

    return Tucker2(core=core.reshape((r_out, r_in) + spatial), out_factor=u, in_factor=v)


def tucker2_reconstruct(t: Tucker2) -> np.ndarray:
    """The kernel (O, I, *k) that ``t`` represents."""
    r_out, r_in = t.core.shape[:2]
    spatial = t.core.shape[2:]
    c = t.core.reshape(r_out, r_in, -1)
    x = np.einsum("oa,abk->obk", t.out_factor, c, optimize=True)
    x = np.einsum("obk,ib->oik", x, t.in_factor, optimize=True)
    return x.reshape((t.out_factor.shape[0], t.in_factor.shape[0]) + tuple(spatial))


def tucker2_error_table(kernel: npt.ArrayLike) -> np.ndarray:
    """E[ro, ri] = ||W - W_hat||^2 / ||W||^2 of the HOSVD truncation to ranks (ro, ri).

    Shape (O+1, I+1); E[0, :] = E[:, 0] = 1. With full orthonormal bases U, V from the Gram
    matrices (descending eigenvalues), C = U^T W V per spatial position and
    B[i, j] = sum_k C[i, j, k]^2, the truncation error is ||W||^2 - sum(B[:ro, :ri]):
    exact, for every (ro, ri) at the cost of one contraction. An all-zero kernel gives 0
    for every nonzero rank pair.
    """
    w3, _ = _as_3d(kernel)
    o, i, k = w3.shape
    w0 = w3.reshape(o, i * k)
    # Beyond min(O, I*k) (resp. min(I, O*k)) the basis only adds directions with no energy:
    # the table is flat there, so those columns are never built (a 2048x512 1x1 conv would
    # otherwise pay for a 2048x2048 QR).
    ku, kv = min(o, i * k), min(i, o * k)
    u = leading_basis(w0, ku)
    v = leading_basis(_mode1_unfolding(w3), kv)
    z = (u.T @ w0).reshape(ku, i, k)
    c = np.einsum("aik,ib->abk", z, v, optimize=True)
    b = np.einsum("abk,abk->ab", c, c)
    norm2 = float(np.vdot(w0, w0))
    table = np.ones((o + 1, i + 1))
    if norm2 == 0.0:
        table[1:, 1:] = 0.0
        return table
    kept = np.cumsum(np.cumsum(b, axis=0), axis=1)
    err = np.clip((norm2 - kept) / norm2, 0.0, 1.0)
    # Exact in exact arithmetic; make it monotone so roundoff never reorders options.
    err = np.minimum.accumulate(np.minimum.accumulate(err, axis=0), axis=1)
    table[1:, 1:] = np.pad(err, ((0, o - ku), (0, i - kv)), mode="edge")
    return table


def tucker2_params(shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Parameters of the Tucker-2 chain: O*ro + ro*ri*prod(k) + ri*I (ranks clipped to O, I)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (O, I, *spatial), got {shape}")
    o, i = shape[:2]
    ro = clip_rank(ranks[0], o)
    ri = clip_rank(ranks[1], i)
    return o * ro + ro * ri * int(np.prod(shape[2:], dtype=np.int64)) + ri * i
