"""CP (CANDECOMP/PARAFAC) by alternating least squares, with checks that the result is usable.

CP-ALS is known to misbehave (swamps, diverging components that cancel each other,
NaNs on rank-deficient normal equations). So: SVD initialization, balanced column norms
during the iterations, a small ridge in the normal equations, a stability check of every
try, and random restarts when a try is rejected.

Cost. Each ALS sweep needs one MTTKRP per mode (size * R flops each with the textbook
unfold @ khatri_rao). Here the modes are ordered largest first and a sweep does two big
contractions only: the mode-0 MTTKRP (unfolding @ Khatri-Rao of the *other*, small, modes)
and Z = A0^T @ unfolding, which every other mode's MTTKRP then reduces with cheap
per-component contractions (a two-level dimension tree). For a 4-way conv kernel that is
about half the work of N full MTTKRPs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.linalg

from tensorfold.decompose.svd import as_float_array
from tensorfold.errors import DecompositionError

__all__ = ["CP", "cp_als", "cp_reconstruct", "cp_params"]

# A try whose component norms w_r have sqrt(sum w_r^2) above this many times ||T|| fits T
# by cancelling large components against each other: it amplifies rounding (float16,
# int8) by that factor, and it is the signature of a degenerate (diverging) CP.
# (sum_r w_r is not used: it grows like sqrt(R) even for orthogonal components, and passes
# 50 x ||T|| on ordinary 256x256x3x3 kernels at rank ~140, in TensorLy's result as in ours.)
_DEGENERACY_RATIO = 50.0
_RIDGE = 1e-10


@dataclass
class CP:
    factors: list[np.ndarray]  # mode n: (dim_n, R); weights absorbed, columns balanced across modes
    rel_error: float = 0.0  # ||T - cp||_F / ||T||_F
    n_iter: int = 0  # ALS sweeps of the returned try
    restarts: int = 0  # random-init tries that ran after the SVD-init try

    @property
    def rank(self) -> int:
        return int(self.factors[0].shape[1])


def cp_params(shape: Sequence[int], rank: int) -> int:
    """Parameters of a rank-``rank`` CP of a tensor of ``shape``: rank * sum(shape)."""
    if int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return int(rank) * int(sum(int(d) for d in shape))


def cp_reconstruct(cp: CP) -> np.ndarray:
    """The full tensor sum_r a_r^(0) o a_r^(1) o ... ."""
    factors = cp.factors
    shape = tuple(f.shape[0] for f in factors)
    if len(factors) == 1:
        return factors[0].sum(axis=1).reshape(shape)
    # one matmul against the Khatri-Rao product of the other modes: 3-4x faster than summing the
    # full (prod(shape), rank) product elementwise, which a 256x256x3x3 kernel at rank 400 spends ~0.5 s on
    return (factors[0] @ _khatri_rao(factors[1:]).T).reshape(shape)


def _khatri_rao(mats: list[np.ndarray]) -> np.ndarray:
    """Row index in C order (first matrix slowest): KR[(i1, i2, ...), r] = prod_m mats[m][i_m, r]."""
    r = mats[0].shape[1]
    acc = mats[0]
    for m in mats[1:]:
        acc = (acc[:, None, :] * m[None, :, :]).reshape(-1, r)
    return acc


def _hadamard(grams: list[np.ndarray], skip: int) -> np.ndarray:
    out = None
    for n, g in enumerate(grams):
        if n == skip:
            continue
        out = g.copy() if out is None else out * g
    assert out is not None
    return out


def _solve(v: np.ndarray, mttkrp: np.ndarray) -> np.ndarray:
    """Factor = mttkrp @ v^-1 for the SPD normal matrix v, with a small ridge."""
    r = v.shape[0]
    ridge = _RIDGE * max(float(np.trace(v)), np.finfo(float).tiny)
    a = v + ridge * np.eye(r)
    try:
        c = scipy.linalg.cho_factor(a, lower=False, check_finite=False)
        return scipy.linalg.cho_solve(c, mttkrp.T, check_finite=False).T
    except (np.linalg.LinAlgError, ValueError):
        return np.linalg.lstsq(a, mttkrp.T, rcond=None)[0].T


def _reduce_z(z: np.ndarray, factors: list[np.ndarray], n: int) -> np.ndarray:
    """MTTKRP of mode n >= 1 from Z (R, d1, ..., d_{N-1}) = A0^T x0 T: contract every mode but n."""
    r = z.shape[0]
    dims = z.shape[1:]
    x = z
    # modes after n, from the last: (R, pre, d_m) x (R, d_m) -> (R, pre)
    for m in range(len(dims), n, -1):
        d = dims[m - 1]
        x = np.matmul(x.reshape(r, -1, d), factors[m].T[:, :, None]).reshape(r, -1)
    # modes before n (1..n-1), from the first: (R, d_m, post) x (R, d_m) -> (R, post)
    for m in range(1, n):
        d = dims[m - 1]
        x = np.matmul(factors[m].T[:, None, :], x.reshape(r, d, -1)).reshape(r, -1)
    return x.T  # (d_n, R)


def _balance(factors: list[np.ndarray]) -> list[np.ndarray]:
    """Rescale columns so every mode carries the same norm per component (same tensor)."""
    norms = np.stack([np.linalg.norm(f, axis=0) for f in factors])  # (N, R)
    n = len(factors)
    with np.errstate(divide="ignore", invalid="ignore"):
        target = np.exp(np.log(np.maximum(norms, 1e-300)).mean(axis=0))  # geometric mean
        scale = np.where(norms > 0, target[None, :] / norms, 1.0)
    zero = np.any(norms == 0, axis=0)
    scale[:, zero] = 1.0
    return [f * scale[m][None, :] for m, f in enumerate(factors[:n])]


def _svd_init(
    unfoldings_grams: list[np.ndarray], dims: tuple[int, ...], rank: int, rng: np.random.Generator
) -> list[np.ndarray]:
    factors = []
    for gram, d in zip(unfoldings_grams, dims):
        w, v = np.linalg.eigh(gram)
        v = v[:, ::-1]
        k = min(rank, d)
        f = np.empty((d, rank))
        f[:, :k] = v[:, :k]
        if rank > d:
            f[:, k:] = rng.standard_normal((d, rank - k)) / np.sqrt(d)
        factors.append(f)
    return factors


def _mode_gram(t: np.ndarray, n: int) -> np.ndarray:
    # tensordot copies as needed; the result is the (d_n, d_n) Gram of the mode-n unfolding
    axes = [a for a in range(t.ndim) if a != n]
    return np.tensordot(t, t, axes=(axes, axes))


def _rel_error(x0: np.ndarray, factors: list[np.ndarray], norm2: float) -> float:
    """Relative error of a CP model against the tensor, from one MTTKRP (mode 0)."""
    m = x0 @ _khatri_rao(factors[1:])
    inner = float(np.vdot(m, factors[0]))
    hat = factors[0].T @ factors[0]
    for f in factors[1:]:
        hat = hat * (f.T @ f)
    return float(np.sqrt(max(norm2 - 2.0 * inner + float(hat.sum()), 0.0) / norm2))


def _als(
    x0: np.ndarray,
    dims: tuple[int, ...],
    factors: list[np.ndarray],
    norm2: float,
    n_iter_max: int,
    tol: float,
    deadline: float | None = None,
) -> tuple[list[np.ndarray], float, int]:
    """Run ALS from ``factors``; returns (factors, approximate rel error, sweeps).

    After each sweep, a line search (Bro 1998; the step it^(1/3) of TensorLy's option):
    extrapolate every factor along its last change and keep the jump if the error goes down.
    It costs one extra MTTKRP per sweep and saves far more sweeps in the slow "swamps" that
    CP-ALS falls into on conv kernels.
    """
    n_modes = len(dims)
    rank = factors[0].shape[1]
    factors = [np.array(f, dtype=np.float64, copy=True) for f in factors]
    grams = [f.T @ f for f in factors]
    previous = None
    prev = np.inf
    rel = np.inf
    it = 0
    for it in range(1, n_iter_max + 1):
        kr = _khatri_rao(factors[1:])
        m = x0 @ kr
        factors[0] = _solve(_hadamard(grams, 0), m)
        grams[0] = factors[0].T @ factors[0]
        z = (factors[0].T @ x0).reshape((rank,) + tuple(dims[1:]))
        for n in range(1, n_modes):
            m = _reduce_z(z, factors, n)
            factors[n] = _solve(_hadamard(grams, n), m)
            grams[n] = factors[n].T @ factors[n]
        # ||T - T_hat||^2 = ||T||^2 - 2 <T, T_hat> + ||T_hat||^2, from the last MTTKRP
        inner = float(np.vdot(m, factors[-1]))
        hat2 = float(np.sum(_hadamard(grams, n_modes - 1) * grams[-1]))
        rel = np.sqrt(max(norm2 - 2.0 * inner + hat2, 0.0) / norm2)
        if not np.isfinite(rel):
            break
        if previous is not None and it > 2 and rel > 1e-10:
            step = it ** (1.0 / 3.0)
            jumped = [p + step * (f - p) for p, f in zip(previous, factors)]
            rel_jump = _rel_error(x0, jumped, norm2)
            if rel_jump < rel:
                factors, rel = jumped, rel_jump
        factors = _balance(factors)
        grams = [f.T @ f for f in factors]
        if rel < 1e-10 or prev - rel < tol * prev:
            break
        if deadline is not None and time.perf_counter() > deadline:
            break
        prev = rel
        previous = list(factors)  # a new list: the sweep reassigns factors[n] in place
    return factors, rel, it


def _check(factors: list[np.ndarray], norm_t: float, rel: float) -> tuple[str, bool] | None:
    """(reason, hard) to reject a try, or None. Soft rejections are kept as a last resort."""
    for f in factors:
        if not np.all(np.isfinite(f)):
            return "NaN/Inf in the factors", True
    if not np.isfinite(rel):
        return "NaN/Inf in the reconstruction error", True
    if rel > 1.0 + 1e-6:
        return f"diverged: relative error {rel:.3g} > 1", True
    weights = np.prod(np.stack([np.linalg.norm(f, axis=0) for f in factors]), axis=0)
    # Rounding each component (float16, int8) adds independent errors of about its norm, so
    # sqrt(sum_r w_r^2) / ||T|| is how much the CP amplifies rounding; orthogonal components
    # give <= 1, components that cancel each other give more.
    amplification = float(np.sqrt(np.sum(weights**2))) / norm_t
    if amplification > _DEGENERACY_RATIO:
        return (
            f"degenerate: sqrt(sum of squared component norms) is {amplification:.3g} x ||T|| "
            f"(limit {_DEGENERACY_RATIO:g}), the components cancel each other"
        ), True
    dead = int(np.count_nonzero(weights <= 1e-12 * norm_t))
    if dead and rel > 1e-6:
        return f"{dead} of {len(weights)} components collapsed to zero at relative error {rel:.3g}", False
    return None


def cp_als(
    tensor: npt.ArrayLike,
    rank: int,
    n_iter_max: int = 100,
    tol: float = 1e-6,
    n_restarts: int = 3,
    seed: int = 0,
    seconds: float | None = None,
) -> CP:
    """Rank-``rank`` CP of an N-way tensor (N >= 2) by ALS.

    The first try starts from the leading left singular vectors of each unfolding (padded
    with random columns where rank > dim). Each try stops after ``n_iter_max`` sweeps or when
    the relative error decreases by less than ``tol`` (relative) in a sweep, and must pass a
    stability check: finite, relative error <= 1, not degenerate (with w_r = prod_n ||a_r^(n)||,
    sqrt(sum_r w_r^2) <= 50 ||T||), and no component collapsed to zero while the error is
    still above 1e-6 (a saddle; a soft rejection, used only if nothing else is accepted).
    If the SVD-init try is rejected, up to ``n_restarts`` tries from random (seeded) starts
    follow and the accepted one with the lowest error is returned. Every try rejected:
    DecompositionError. ``seconds``: a time budget; past it the running try stops sweeping and
    no further restart begins (the best accepted try so far is returned).
    Factors come back in the tensor's mode order, components sorted by weight, the weight of
    each component spread evenly over its N columns.
    """
    t = np.asarray(tensor)
    if t.ndim < 2:
        raise ValueError(f"cp_als needs a tensor with >= 2 modes, got shape {t.shape}")
    t = as_float_array(t, None, "tensor")
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if n_iter_max < 1:
        raise ValueError(f"n_iter_max must be >= 1, got {n_iter_max}")
    if n_restarts < 0:
        raise ValueError(f"n_restarts must be >= 0, got {n_restarts}")
    shape = t.shape
    norm2 = float(np.vdot(t, t))
    if norm2 == 0.0:
        return CP([np.zeros((d, rank)) for d in shape], 0.0, 0, 0)
    norm_t = np.sqrt(norm2)

    # Largest mode first: the two big contractions per sweep then leave the smallest intermediates.
    perm = sorted(range(t.ndim), key=lambda a: (-shape[a], a))
    tp = np.ascontiguousarray(np.transpose(t, perm))
    dims = tp.shape
    x0 = tp.reshape(dims[0], -1)
    rng = np.random.default_rng(seed)

    deadline = None if seconds is None else time.perf_counter() + seconds
    best = None  # (soft-rejected, rel, factors, n_iter)
    reasons = []
    restarts = 0
    for attempt in range(1 + n_restarts):
        if attempt > 0 and deadline is not None and time.perf_counter() > deadline and best is not None:
            break
        if attempt == 0:
            grams = [_mode_gram(tp, n) if n else np.eye(dims[0]) for n in range(len(dims))]
            init = _svd_init(grams, dims, rank, rng)
        else:
            restarts += 1
            init = [rng.standard_normal((d, rank)) for d in dims]
            # columns scaled so that the initial model has about the tensor's norm
            s = (norm_t / np.sqrt(rank)) ** (1.0 / len(dims))
            init = [f / np.linalg.norm(f, axis=0, keepdims=True) * s for f in init]
        with np.errstate(all="ignore"):
            try:
                factors, rel, n_iter = _als(x0, dims, init, norm2, n_iter_max, tol, deadline)
                if all(np.all(np.isfinite(f)) for f in factors):
                    diff = tp - cp_reconstruct(CP(factors))
                    rel = float(np.sqrt(np.vdot(diff, diff) / norm2))
            except (np.linalg.LinAlgError, ValueError, FloatingPointError) as e:
                reasons.append(f"try {attempt + 1}: {e}")
                continue
        verdict = _check(factors, norm_t, rel)
        if verdict is not None:
            reasons.append(f"try {attempt + 1}: {verdict[0]}")
            if verdict[1]:
                continue
        key = (verdict is not None, rel)
        if best is None or key < best[:2]:
            best = (key[0], rel, factors, n_iter)
        if attempt == 0 and verdict is None:
            break  # the SVD-init try was accepted: restarts are the fallback, not the rule
    if best is None:
        raise DecompositionError(f"CP-ALS rank {rank} on {shape}: every try rejected ({'; '.join(reasons)})")

    _, rel, factors, n_iter = best
    weights = np.prod(np.stack([np.linalg.norm(f, axis=0) for f in factors]), axis=0)
    order = np.argsort(-weights, kind="stable")
    factors = [f[:, order] for f in factors]
    inv = np.argsort(perm)
    factors = [np.ascontiguousarray(factors[inv[a]]) for a in range(len(shape))]
    return CP(factors=factors, rel_error=float(rel), n_iter=int(n_iter), restarts=restarts)
