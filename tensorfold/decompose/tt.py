"""Tensor-Train: TT-SVD (Oseledets 2011) and the TT-matrix format (Novikov et al. 2015)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tensorfold.decompose.svd import as_float_array
from tensorfold.decompose.tucker2 import gram_eig, leading_subspace

__all__ = [
    "tt_svd",
    "tt_rank_ladder",
    "tt_contraction",
    "tt_matrix",
    "tt_matrix_contraction",
    "factorize_dim",
    "tt_params",
    "tt_ranks",
]


def _bond_caps(ranks: int | Sequence[int] | None, n_bonds: int) -> list[int] | None:
    if ranks is None:
        return None
    if isinstance(ranks, (int, np.integer)):
        caps = [int(ranks)] * n_bonds
    else:
        caps = [int(r) for r in ranks]
        if len(caps) != n_bonds:
            raise ValueError(f"ranks needs {n_bonds} bond ranks (N-1), got {len(caps)}")
    for r in caps:
        if r < 1:
            raise ValueError(f"TT ranks must be >= 1, got {caps}")
    return caps


def tt_svd(
    tensor: npt.ArrayLike,
    ranks: int | Sequence[int] | None = None,
    rel_eps: float | None = None,
    memo: dict[Any, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """TT cores G_k (r_{k-1}, n_k, r_k), r_0 = r_N = 1, by sequential truncated SVDs.

    ``ranks``: one cap for every bond, or N-1 caps; each is clipped to what the sequential
    unfolding allows. ``rel_eps``: delta-truncation with delta = rel_eps / sqrt(N-1) * ||A||,
    which guarantees ||A - TT||_F <= rel_eps ||A||_F. Both: the smaller rank wins at each bond.
    Neither: no truncation (exact up to rounding).

    ``memo``: a dict shared by calls on the *same* tensor (a ladder of truncations): the unfolding
    at each bond depends only on the ranks chosen before it, so its eigendecomposition and each
    truncated basis are computed once for every call that reaches it (the cores are identical).
    ``info``: filled with "error2", the relative squared error ||A - TT||^2 / ||A||^2, which for
    TT-SVD is the sum of the squared singular values discarded at each bond (the successive
    projections are orthogonal): no reconstruction needed.
    """
    a = as_float_array(tensor, None, "tensor")
    if a.ndim == 0:
        raise ValueError("tt_svd needs a tensor with >= 1 mode")
    dims = a.shape
    n_modes = len(dims)
    caps = _bond_caps(ranks, n_modes - 1)
    delta2 = 0.0
    if rel_eps is not None:
        rel_eps = float(rel_eps)
        if rel_eps < 0:
            raise ValueError(f"rel_eps must be >= 0, got {rel_eps}")
        if n_modes > 1:
            delta2 = (rel_eps**2 / (n_modes - 1)) * float(np.vdot(a, a))

    def choose(s2: np.ndarray, k: int) -> int:
        r = len(s2)
        if rel_eps is not None:
            # smallest r whose discarded tail sum(s[r:]^2) <= delta^2
            tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])
            r = int(np.argmax(tail <= delta2))
        if caps is not None:
            r = min(r, caps[k])
        return max(r, 1)

    # The Gram route (eigh of the smaller Gram matrix, then project) is several times faster
    # than an SVD of each unfolding; its spectrum is accurate to ~eps * s_max^2, so a tolerance
    # below ~1e-6 gets the SVD, whose small singular values are exact enough for it.
    use_gram = rel_eps is None or rel_eps >= 1e-6
    cores = []
    r_prev = 1
    c = a.reshape(1, -1)
    prefix: tuple[int, ...] = ()
    discarded = 0.0
    for k in range(n_modes - 1):
        c = c.reshape(r_prev * dims[k], -1)
        if use_gram:
            eig = memo.get(prefix) if memo is not None else None
            if eig is None:
                eig = gram_eig(c)
                if memo is not None:
                    memo[prefix] = eig
            r = min(choose(eig[0][: min(c.shape)], k), c.shape[0])
            discarded += float(eig[0][r : min(c.shape)].sum())
            key = ("basis", prefix, r)
            if memo is not None and key in memo:
                u, rest = memo[key]
            else:
                u = leading_subspace(c, lambda s2: r, eig)[0]
                rest = u.T @ c
                if memo is not None:
                    memo[key] = (u, rest)
            prefix += (r,)
        else:
            u, s, vt = np.linalg.svd(c, full_matrices=False)
            r = choose(s * s, k)
            discarded += float((s[r:] ** 2).sum())
            u, rest = u[:, :r], s[:r, None] * vt[:r]
        cores.append(np.ascontiguousarray(u).reshape(r_prev, dims[k], r))
        c = rest
        r_prev = r
    cores.append(np.ascontiguousarray(c).reshape(r_prev, dims[-1], 1))
    if info is not None:
        norm2 = float(np.vdot(a, a))
        info["error2"] = discarded / norm2 if norm2 > 0 else 0.0
    return cores


def tt_rank_ladder(tensor: npt.ArrayLike, shares: Sequence[float]) -> list[tuple[tuple[int, ...], float]]:
    """For each share: bond ranks that discard at most that share of ||A||^2 at every bond, and an
    estimate of TT-SVD's relative squared error at those ranks, from one spectrum per bond of the
    tensor's own unfoldings A_k = A.reshape(n_1...n_k, n_k+1...n_N), whatever the other bonds take.

    With t_k the share of ||A||^2 beyond rank r_k in A_k's spectrum, TT-SVD's error lies between
    max_k t_k (no TT of those ranks beats the best rank-r_k approximation of any unfolding) and
    sum_k t_k (Oseledets 2011, Theorem 2.2). The estimate is the midpoint of the lower bound and
    1 - prod_k (1 - t_k) (each bond removing its share of what is left): the sequential TT-SVD
    discards less than the product says, because the directions one bond drops are largely those
    the next would drop. Measured against the exact error on the demo CNN's and a ResNet-18's kxk
    convs (tests/decompose/test_tt.py checks it stays within the bounds): estimate / exact has median
    0.87, 10th-90th percentile 0.73-1.0; the upper bounds alone overstate the middle of the ladder
    by up to 1.48x (tools/bench_tt_estimate.py), which made a budget collapse a layer to rank 1 (a
    trained CNN at chance).

    The exact ladder (tt_svd with a memo) needs one eigendecomposition per bond per distinct
    prefix of ranks: on a ResNet-18 kxk conv ~35 instead of 3.
    """
    a = as_float_array(tensor, None, "tensor")
    dims = a.shape
    n_bonds = len(dims) - 1
    norm2 = float(np.vdot(a, a))
    if n_bonds < 1 or norm2 == 0:
        return [(tuple(1 for _ in range(n_bonds)), 0.0) for _ in shares]
    tails = []
    for k in range(n_bonds):
        unfolding = a.reshape(int(np.prod(dims[: k + 1])), -1)
        m, n = unfolding.shape
        s2 = np.maximum(np.linalg.eigvalsh(unfolding @ unfolding.T if m <= n else unfolding.T @ unfolding)[::-1], 0)
        tails.append(np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]]))
    out = []
    for share in shares:
        delta2 = float(share) * norm2
        ranks, prev, kept, most = [], 1, 1.0, 0.0
        for k, tail in enumerate(tails):
            # the sequential unfolding at bond k has r_{k-1} n_k rows: no rank above that
            r = min(max(int(np.argmax(tail <= delta2)), 1), prev * dims[k], len(tail) - 1)
            ranks.append(r)
            share = min(float(tail[r]) / norm2, 1.0)
            kept *= 1.0 - share
            most = max(most, share)
            prev = r
        out.append((tuple(ranks), 0.5 * (most + 1.0 - kept)))
    return out


def tt_ranks(cores: Sequence[np.ndarray]) -> list[int]:
    """[r_0, r_1, ..., r_N] of a list of TT (or TT-matrix) cores."""
    return [int(cores[0].shape[0])] + [int(c.shape[-1]) for c in cores]


def _check_chain(cores: Sequence[np.ndarray], core_ndim: int) -> None:
    if len(cores) == 0:
        raise ValueError("no TT cores")
    for k, c in enumerate(cores):
        if c.ndim != core_ndim:
            raise ValueError(f"TT core {k} must have {core_ndim} dims, got shape {c.shape}")
        if k and cores[k - 1].shape[-1] != c.shape[0]:
            raise ValueError(f"TT cores {k - 1} and {k} do not chain: {cores[k - 1].shape} then {c.shape}")
    if cores[0].shape[0] != 1 or cores[-1].shape[-1] != 1:
        raise ValueError("the first and last TT ranks must be 1")


def tt_contraction(cores: Sequence[np.ndarray]) -> np.ndarray:
    """The full tensor (n_1, ..., n_N) of a TT."""
    cores = [np.asarray(c, dtype=np.float64) for c in cores]
    _check_chain(cores, 3)
    dims = tuple(c.shape[1] for c in cores)
    x = cores[0].reshape(-1, cores[0].shape[-1])
    for c in cores[1:]:
        x = (x @ c.reshape(c.shape[0], -1)).reshape(-1, c.shape[-1])
    return x.reshape(dims)


def tt_matrix(
    matrix: npt.ArrayLike,
    row_dims: Sequence[int],
    col_dims: Sequence[int],
    ranks: int | Sequence[int] | None = None,
    rel_eps: float | None = None,
) -> list[np.ndarray]:
    """TT-matrix cores (r_{k-1}, m_k, n_k, r_k) of ``matrix`` (M, N), M = prod(row_dims), N = prod(col_dims).

    Reshape to (m_1..m_d, n_1..n_d), interleave to (m_1, n_1, ..., m_d, n_d), TT-SVD over
    the merged (m_k n_k) modes. ``ranks``/``rel_eps`` as in :func:`tt_svd` (d-1 bonds).
    """
    w = as_float_array(matrix, 2, "matrix")
    row_dims = [int(m) for m in row_dims]
    col_dims = [int(n) for n in col_dims]
    if len(row_dims) != len(col_dims) or not row_dims:
        raise ValueError(f"row_dims and col_dims need the same nonzero length, got {row_dims} and {col_dims}")
    if min(row_dims + col_dims) < 1:
        raise ValueError(f"TT-matrix dims must be >= 1, got {row_dims} and {col_dims}")
    if int(np.prod(row_dims)) != w.shape[0] or int(np.prod(col_dims)) != w.shape[1]:
        raise ValueError(
            f"prod(row_dims)={int(np.prod(row_dims))} and prod(col_dims)={int(np.prod(col_dims))} "
            f"must equal the matrix shape {w.shape}"
        )
    d = len(row_dims)
    x = w.reshape(row_dims + col_dims)
    order = [a for k in range(d) for a in (k, d + k)]
    x = x.transpose(order).reshape([m * n for m, n in zip(row_dims, col_dims)])
    cores = tt_svd(x, ranks=ranks, rel_eps=rel_eps)
    return [c.reshape(c.shape[0], m, n, c.shape[-1]) for c, m, n in zip(cores, row_dims, col_dims)]


def tt_matrix_contraction(cores: Sequence[np.ndarray]) -> np.ndarray:
    """The (M, N) matrix of TT-matrix cores (r_{k-1}, m_k, n_k, r_k)."""
    cores = [np.asarray(c, dtype=np.float64) for c in cores]
    _check_chain(cores, 4)
    row_dims = [c.shape[1] for c in cores]
    col_dims = [c.shape[2] for c in cores]
    full = tt_contraction([c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores])
    d = len(cores)
    x = full.reshape([v for m, n in zip(row_dims, col_dims) for v in (m, n)])
    x = x.transpose([2 * k for k in range(d)] + [2 * k + 1 for k in range(d)])
    return x.reshape(int(np.prod(row_dims)), int(np.prod(col_dims)))


def factorize_dim(n: int, d: int) -> list[int]:
    """``d`` integer factors of ``n`` (product exactly n), as equal as possible, descending.

    "As equal as possible": the smallest largest factor, then the smallest spread of the
    logs. 784, 2 -> [28, 28]; 512, 3 -> [8, 8, 8]; 12, 2 -> [4, 3]; a prime p -> [p, 1, ...].
    """
    n, d = int(n), int(d)
    if n < 1 or d < 1:
        raise ValueError(f"factorize_dim needs n >= 1 and d >= 1, got n={n}, d={d}")
    target = np.log(n) / d
    best: tuple[tuple[int, float], list[int]] | None = None

    def divisors_desc(m: int, upper: int) -> list[int]:
        small = [k for k in range(1, int(m**0.5) + 1) if m % k == 0]
        divs = set(small) | {m // k for k in small}
        return sorted((k for k in divs if k <= upper), reverse=True)

    def search(rest: int, slots: int, upper: int, chosen: list[int]) -> None:
        nonlocal best
        if slots == 1:
            if rest <= upper:
                f = chosen + [rest]
                key = (f[0], float(sum((np.log(v) - target) ** 2 for v in f)))
                if best is None or key < best[0]:
                    best = (key, f)
            return
        # the next factor must be >= rest^(1/slots) (factors are descending)
        lower = int(np.floor(rest ** (1.0 / slots) * (1 - 1e-12)))
        for k in divisors_desc(rest, upper):
            if k < lower:
                break
            if best is not None and chosen and chosen[0] > best[0][0]:
                return
            if best is not None and not chosen and k > best[0][0]:
                continue
            search(rest // k, slots - 1, k, chosen + [k])

    search(n, d, n, [])
    assert best is not None
    return best[1]


def tt_params(cores: Sequence[np.ndarray]) -> int:
    """Total number of entries of the cores."""
    return int(sum(int(np.asarray(c).size) for c in cores))
