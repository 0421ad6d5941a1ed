"""Rank selectors: clipping, energy threshold, EVBMF, and a global parameter budget.

Everything here is pure numpy/scipy. The selectors look at one layer (energy, EVBMF)
or at all layers at once (``allocate_budget``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar

__all__ = ["clip_rank", "rank_for_energy", "evbmf_rank", "Option", "allocate_budget"]


def clip_rank(rank: int, *dims: int) -> int:
    """``rank`` clipped to the smallest of ``dims``; a rank below 1 is a caller error."""
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if dims:
        rank = min(rank, *(int(d) for d in dims))
    return rank


def rank_for_energy(singular_values: npt.ArrayLike, energy: float) -> int:
    """Smallest r with sum(s[:r]**2) / sum(s**2) >= energy.

    ``energy`` is in (0, 1]; 1 means keep every singular value (full rank). An
    all-zero spectrum needs no components, but a factorization needs one: it gives 1.
    """
    energy = float(energy)
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64).ravel()))[::-1]
    if s.size == 0:
        return 1
    if energy == 1.0:
        return int(s.size)
    cum = np.cumsum(s * s)
    total = cum[-1]
    if total <= 0.0 or not np.isfinite(total):
        return 1
    # A relative slack of a few ulps so that e.g. energy=0.5 on [1, 1] gives 1, not 2.
    r = int(np.searchsorted(cum, energy * total * (1.0 - 1e-12), side="left")) + 1
    return max(1, min(r, int(s.size)))


# ---------------------------------------------------------------------------
# EVBMF (Nakajima, Sugiyama, Babacan, Tomioka 2013, JMLR 14, "Global analytic
# solution of fully-observed variational Bayesian matrix factorization").
# Notation of the paper: Y is L x M with L <= M, alpha = L/M, gamma_h the singular
# values, x_h = gamma_h^2 / (M sigma^2). The EVB estimator keeps component h iff
# gamma_h > sqrt(M sigma^2 xbar), xbar = (1 + taubar)(1 + alpha/taubar), with
# taubar = 2.5129 sqrt(alpha) (the paper's numerical constant). The noise variance
# minimizes the free energy
#   Omega(sigma^2) = sum_h psi0(x_h) + sum_{x_h > xbar} psi1(x_h),
#   psi0(x) = x - log x,  psi1(x) = log(tau + 1) + alpha log(tau/alpha + 1) - tau,
#   tau(x) = (x - (1 + alpha) + sqrt((x - (1 + alpha))^2 - 4 alpha)) / 2,
# over the paper's bounds [sigma2_lo, sigma2_hi] (its Eq. 31-32). Kim et al. 2016
# (ICLR, one-shot whole network compression) apply it to the mode-0 and mode-1
# unfoldings of a conv kernel to pick Tucker-2 ranks.
# ---------------------------------------------------------------------------

_TAUBAR_CONST = 2.5129


def _evb_tau(x: np.ndarray, alpha: float) -> np.ndarray:
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _evb_free_energy(log_sigma2: float, s2: np.ndarray, L: int, M: int, alpha: float, xbar: float) -> float:
    sigma2 = np.exp(log_sigma2)
    x = s2 / (M * sigma2)
    # psi0 summed over all L components; -log x_h = log(M sigma^2) - log(gamma_h^2), and the
    # second part does not depend on sigma^2 (dropping it avoids log 0 for zero gammas).
    obj = float(np.sum(x)) + L * log_sigma2
    big = x[x > xbar]
    if big.size:
        tau = _evb_tau(big, alpha)
        obj += float(np.sum(np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau))
    return obj


def evbmf_rank(matrix: npt.ArrayLike) -> int:
    """Rank picked by empirical variational Bayes matrix factorization (noise variance estimated).

    Returns at least 1, also for all-zero, rank-deficient and tiny matrices.
    """
    Y = np.asarray(matrix, dtype=np.float64)
    if Y.ndim != 2:
        raise ValueError(f"evbmf_rank needs a matrix, got shape {Y.shape}")
    if Y.size == 0:
        return 1
    if not np.all(np.isfinite(Y)):
        raise ValueError("evbmf_rank: matrix contains NaN or Inf")
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    s = np.linalg.svd(Y, compute_uv=False)  # descending, length L
    s2 = s * s
    total = float(np.sum(s2))
    if total <= 0.0:
        return 1
    s2 = s2 / total  # scale-free: the rank does not depend on the matrix's scale
    alpha = L / M
    taubar = _TAUBAR_CONST * np.sqrt(alpha)
    xbar = (1.0 + taubar) * (1.0 + alpha / taubar)

    # Bounds of the paper (Eq. 31-32), 0-based: H_bar = ceil(L/(1+alpha)) - 1 components at most.
    hbar = int(np.ceil(L / (1.0 + alpha))) - 1
    hbar = min(max(hbar, 0), L - 1)
    upper = float(np.sum(s2)) / (L * M)
    lower = max(s2[hbar] / (M * xbar), float(np.mean(s2[hbar:])) / M)
    lower = max(lower, upper * 1e-12)  # rank-deficient tails give 0; keep log finite
    if lower >= upper:
        sigma2 = upper
    else:
        res = minimize_scalar(
            _evb_free_energy,
            bounds=(np.log(lower), np.log(upper)),
            args=(s2, L, M, alpha, xbar),
            method="bounded",
            options={"xatol": 1e-10},
        )
        sigma2 = float(np.exp(res.x))
        # Brent on a bounded interval can miss an endpoint minimum; the endpoints are cheap to check.
        cands = [(res.fun, sigma2)]
        for t in (np.log(lower), np.log(upper)):
            cands.append((_evb_free_energy(t, s2, L, M, alpha, xbar), float(np.exp(t))))
        sigma2 = min(cands)[1]
    threshold2 = M * sigma2 * xbar
    return max(1, int(np.sum(s2 > threshold2)))


# ---------------------------------------------------------------------------
# Global budget
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One way to compress one layer: its parameter count and relative squared weight error."""

    params: int
    error2: float


def _pad(options: list[list[Option]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_layers = len(options)
    width = max(len(o) for o in options)
    P = np.full((n_layers, width), np.inf)
    E = np.full((n_layers, width), np.inf)
    for i, opts in enumerate(options):
        P[i, : len(opts)] = [float(o.params) for o in opts]
        E[i, : len(opts)] = [float(o.error2) for o in opts]
    valid = np.isfinite(P)
    return P, E, valid


def _pick(P: np.ndarray, E: np.ndarray, lam: float) -> np.ndarray:
    """Per layer argmin of E + lam*P; ties go to fewer params, then to the lower index."""
    with np.errstate(invalid="ignore"):
        cost = np.where(np.isfinite(P), E + lam * P, np.inf)
    best = np.min(cost, axis=1, keepdims=True)
    tie = cost <= best + 1e-15 * np.maximum(1.0, np.abs(best))
    # among the (near-)ties pick the fewest params; argmin returns the first on equal params
    picked: np.ndarray = np.argmin(np.where(tie, P, np.inf), axis=1)
    return picked


def allocate_budget(options: list[list[Option]], max_params: int) -> list[int]:
    """One option index per layer, minimizing sum(error2) with sum(params) <= max_params.

    Lagrangian relaxation (bisection on the price lambda of a parameter), then a greedy pass
    that spends what is left on the upgrades with the best error decrease per parameter, then
    pairwise exchanges (one layer down, another up) while they lower the sum. Optimal for
    convex error curves with equal-cost steps; on small random cases checked by brute force it
    is optimal in most and within a few percent in the rest. If even
    the smallest option of every layer exceeds the budget, every layer gets its smallest option.
    Deterministic: ties go to fewer parameters, then to the lower index.
    """
    if not options:
        return []
    for i, opts in enumerate(options):
        if len(opts) == 0:
            raise ValueError(f"layer {i} has no options")
    P, E, valid = _pad(options)
    if np.any(~np.isfinite(E[valid])) or np.any(P[valid] < 0):
        raise ValueError("options need finite error2 and params >= 0")
    rows = np.arange(P.shape[0])
    budget = float(max_params)

    # smallest-params choice (ties: lowest error, then lowest index)
    smallest = np.lexsort((np.broadcast_to(np.arange(P.shape[1]), P.shape), E, P), axis=1)[:, 0]
    if P[rows, smallest].sum() > budget:
        return [int(k) for k in smallest]

    choice = _pick(P, E, 0.0)
    if P[rows, choice].sum() > budget:
        # lambda_hi: a price at which every layer takes its smallest-params option
        dP = P - P[rows, smallest][:, None]
        dE = E[rows, smallest][:, None] - E
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(valid & (dP > 0), dE / dP, 0.0)
        hi = max(float(np.max(ratio)), 0.0) * 2.0 + 1e-300
        lo = 0.0
        choice = _pick(P, E, hi)
        if P[rows, choice].sum() > budget:  # only possible through ties; fall back to smallest
            choice = smallest.copy()
        # Plain halving: while lo is 0 this walks hi down geometrically (the breakpoints
        # can be many orders of magnitude below hi), then it bisects [lo, hi] linearly.
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if not lo < mid < hi:
                break
            c = _pick(P, E, mid)
            if P[rows, c].sum() <= budget:
                hi, choice = mid, c
            else:
                lo = mid
            if hi - lo <= 1e-13 * hi:
                break

    choice = _greedy_fill(P, E, valid, choice, budget)
    return [int(k) for k in _exchange(P, E, valid, choice, budget)]


def _greedy_fill(P: np.ndarray, E: np.ndarray, valid: np.ndarray, choice: np.ndarray, budget: float) -> np.ndarray:
    """Spend what is left of the budget on the best error decrease per extra parameter."""
    rows = np.arange(P.shape[0])
    for _ in range(P.size):
        left = budget - P[rows, choice].sum()
        dP = P - P[rows, choice][:, None]
        dE = E[rows, choice][:, None] - E
        ok = valid & (dE > 0) & (dP <= left)
        if not np.any(ok):
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(ok, np.where(dP > 0, dE / np.where(dP > 0, dP, 1.0), np.inf), -np.inf)
        layer, k = divmod(int(np.argmax(gain)), P.shape[1])  # first maximum: deterministic
        choice[layer] = k
    return choice


def _exchange(
    P: np.ndarray,
    E: np.ndarray,
    valid: np.ndarray,
    choice: np.ndarray,
    budget: float,
    max_rounds: int = 50,
    nearest: int = 16,
) -> np.ndarray:
    """Pairwise exchanges: step one layer down its Pareto front, spend the freed parameters on
    the best upgrade of another layer; repeat while the sum of errors drops.

    The Lagrangian solution is optimal only at the budgets its breakpoints hit, and the greedy
    fill is only optimal for equal-cost steps; on coarse option grids this closes most of the
    remaining gap. Downgrades are limited to the ``nearest`` Pareto options below the current one.
    """
    n_layers, width = P.shape
    if n_layers < 2:
        return choice
    rows = np.arange(n_layers)
    order = np.argsort(np.where(valid, P, np.inf), axis=1, kind="stable")
    ps = np.take_along_axis(P, order, axis=1)
    es = np.take_along_axis(E, order, axis=1)
    emin = np.minimum.accumulate(es, axis=1)
    shifted = np.concatenate([np.full((n_layers, 1), np.inf), emin[:, :-1]], axis=1)
    front = valid[rows[:, None], order] & (es < shifted)  # Pareto options, in params order
    arg_run = np.maximum.accumulate(np.where(front, np.arange(width), 0), axis=1)
    best_opt = np.take_along_axis(order, arg_run, axis=1)  # option giving emin at each position
    front_pos = [np.flatnonzero(front[b]) for b in range(n_layers)]

    for _ in range(max_rounds):
        cur_p = P[rows, choice]
        cur_e = E[rows, choice]
        left = budget - cur_p.sum()
        parts_a: list[np.ndarray] = []
        parts_i: list[np.ndarray] = []
        cand_allow: list[np.ndarray] = []
        cand_loss: list[np.ndarray] = []
        for a in range(n_layers):
            pos = front_pos[a]
            lower = pos[ps[a, pos] < cur_p[a]][-nearest:]
            if lower.size == 0:
                continue
            opts = order[a, lower]
            parts_a.append(np.full(lower.size, a))
            parts_i.append(opts)
            cand_allow.append(left + cur_p[a] - P[a, opts])
            cand_loss.append(E[a, opts] - cur_e[a])
        if not parts_a:
            break
        cand_a = np.concatenate(parts_a)
        cand_i = np.concatenate(parts_i)
        allow = np.concatenate(cand_allow)
        loss = np.concatenate(cand_loss)
        best_gain = np.full(allow.size, -np.inf)
        best_b = np.zeros(allow.size, dtype=np.int64)
        best_j = np.zeros(allow.size, dtype=np.int64)
        for b in range(n_layers):
            pos = np.searchsorted(ps[b], allow + cur_p[b], side="right") - 1
            ok = (pos >= 0) & (cand_a != b)
            posc = np.maximum(pos, 0)
            gain = np.where(ok, cur_e[b] - emin[b, posc], -np.inf)
            better = gain > best_gain
            best_gain = np.where(better, gain, best_gain)
            best_b = np.where(better, b, best_b)
            best_j = np.where(better, best_opt[b, posc], best_j)
        improvement = best_gain - loss
        k = int(np.argmax(improvement))
        if not improvement[k] > 1e-12 * max(1.0, float(cur_e.sum())):
            break
        choice[cand_a[k]] = cand_i[k]
        choice[best_b[k]] = best_j[k]
        choice = _greedy_fill(P, E, valid, choice, budget)
    return choice
