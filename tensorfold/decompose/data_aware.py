"""Factors fitted to what a layer does on real inputs, not to its weights.

A layer computes y = W x, with x the vectors it multiplies (a conv's im2col patches ordered
(C, *k), a matrix layer's features). With the uncentred second moment Sigma = sum x x^T of those
vectors on calibration data, the output error of any replacement W' is exactly

    sum ||W x - W' x||^2 = tr((W - W') Sigma (W - W')^T),

so the factors that minimize it are computable from Sigma alone; no activation is kept.

- Matrices and 1x1 convs: the whitened SVD of SVD-LLM (Wang et al. 2024; ASVD, Yuan et al. 2023,
  scales by activation statistics in the same spirit). With Sigma = R^T R, the best rank-r W' in
  the data norm is R^-1 [R W]_r, and the squared singular values of R W are the layer's output
  error curve.
- kxk convs, Tucker-2: for an input channel basis A (I x r_in), the reduced patches z = (A^T x I_k) x
  are regressed onto y (the core and output factor together are the least-squares map from z to
  y, Zhang et al. 2016, TPAMI, "Accelerating very deep convolutional networks for classification
  and detection", who fit the output-side factor to the layer's responses), then that map is
  truncated to r_out in the data norm of z. Ordering the reduced patch by (channel, offset), the
  Gram of z for r_in channels is the leading block of the one for all channels, so one Cholesky
  factor gives the exact output error of every (r_out, r_in) pair.
  The nested input bases tried: the channel-whitened HOSVD basis (Sigma_c^-1/2 times the leading
  eigenvectors of Sigma_c^1/2 W_(1) W_(1)^T Sigma_c^1/2, Sigma_c the channels' second moment) and
  the plain HOSVD basis; per (r_out, r_in) the one with less output error is used.
- CP and TT convs: their inner factors have no closed form in the data norm; they are fitted to
  the weight as before and the last 1x1 factor (what maps the chain's R channels to the O
  outputs) is re-solved by least squares on the calibration statistics (Zhang et al.'s
  reconstruction of the responses, applied to the last factor only).
- TT matrices (Gemm/MatMul): no data-aware form here: whitening would need a dense K x K factor
  in front of the TT cores, which costs more than the layer. They keep weight-fitted cores; their
  output error is still measured exactly with Sigma.

`damping` adds damping * mean(diag Sigma) to the diagonal: with few calibration samples Sigma is
rank-deficient and an undamped fit would chase directions the data never excites.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

from tensorfold.decompose.ranks import clip_rank

__all__ = [
    "InputGram",
    "DEFAULT_DAMPING",
    "damped",
    "output_energies",
    "output_error2",
    "refit_output",
    "WhitenedSVD",
    "Tucker2DataFit",
]

DEFAULT_DAMPING = 1e-2


@dataclass
class InputGram:
    """sum x x^T of the vectors a layer multiplies, one (D, D) block per conv group, over `count` vectors."""

    grams: np.ndarray  # (groups, D, D), float64
    count: int = 0
    # rank-independent fits of this layer (WhitenedSVD, Tucker2DataFit per group), made once: a
    # budget search builds many ranks of the same layer
    fits: dict[object, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.grams.shape[-1])

    def group(self, g: int = 0) -> np.ndarray:
        block: np.ndarray = self.grams[g]
        return block

    def fitted(self, key: object, make: Callable[[], object]) -> Any:
        """make(), remembered under `key` for as long as these statistics live."""
        if key not in self.fits:
            self.fits[key] = make()
        return self.fits[key]


def damped(gram: np.ndarray, damping: float | None = None) -> np.ndarray:
    """gram + damping * mean(diag) * I (symmetrized), so it is positive definite (damping None:
    DEFAULT_DAMPING)."""
    damping = DEFAULT_DAMPING if damping is None else damping
    g = 0.5 * (gram + gram.T)
    scale = float(np.mean(np.diag(g))) if g.size else 0.0
    out: np.ndarray = g + (damping * scale if scale > 0 else 1e-12) * np.eye(g.shape[0])
    return out


def output_energies(w2d: np.ndarray, approx2d: np.ndarray, gram: np.ndarray) -> tuple[float, float]:
    """(tr(D S D^T), tr(W S W^T)), D = W - approx, rows of W (O, D) acting on x: the squared output
    error and the output energy, summable over groups."""
    diff = w2d - approx2d
    return max(float(np.einsum("od,od->", diff @ gram, diff)), 0.0), float(np.einsum("od,od->", w2d @ gram, w2d))


def output_error2(w2d: np.ndarray, approx2d: np.ndarray, gram: np.ndarray) -> float:
    """Relative squared output error tr(D S D^T) / tr(W S W^T)."""
    num, den = output_energies(w2d, approx2d, gram)
    return num / den if den > 0 else num


def _root(gram: np.ndarray, damping: float | None) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """R with damped(gram) = R^T R, and x -> R^-1 x. Any such root gives the same truncation (two
    differ by an orthogonal factor on the left, which the SVD of R M absorbs), so it is the upper
    Cholesky factor, applied by triangular solves: on a ViT-S the eigendecomposition and inverse
    this replaced were 8.3 of a calibrated run's 22 s (the 1536-wide FFN inputs). A Gram the
    damping leaves singular (all zeros) falls back to the eigendecomposition, clipped."""
    g = damped(gram, damping)
    try:
        lower = np.linalg.cholesky(g)
    except np.linalg.LinAlgError:
        lam, q = np.linalg.eigh(g)
        lam = np.maximum(lam, lam.max() * 1e-12)
        root = np.sqrt(lam)
        inv = q / root[None, :]
        return root[:, None] * q.T, lambda x: inv @ x
    return lower.T, lambda x: scipy.linalg.solve_triangular(lower, x, lower=True, trans="T")


class WhitenedSVD:
    """The full SVD of R M for y = x @ M (M is K x N, gram K x K, damped(gram) = R^T R), done once:
    every rank's factors and output error are slices of it (SVD-LLM's truncation-aware whitening)."""

    def __init__(self, matrix: np.ndarray, gram: np.ndarray, damping: float | None = None):
        root, unwhiten = _root(gram, damping)
        u, self.s, self.vt = np.linalg.svd(root @ matrix.astype(np.float64), full_matrices=False)
        # R^-1 U once, not the (K x K) root: a rank's left factor is then a slice of it. The search
        # keeps this fit per layer for as long as the statistics live, and on a ViT-S the roots of
        # the 1536-wide FFN inputs were 283 MB of an `optimize --recover` run's memory
        self.left = unwhiten(u)

    @property
    def spectrum(self) -> np.ndarray:
        """Squared singular values, descending: the output energy each rank keeps."""
        return self.s**2

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """left (K, r), right (r, N) minimizing sum ||x M - x left right||^2 over the data; the
        singular values split as sqrt onto both sides."""
        r = clip_rank(rank, len(self.s))
        half = np.sqrt(self.s[:r])
        return self.left[:, :r] * half, half[:, None] * self.vt[:r]


def refit_output(
    w2d: np.ndarray, maps: np.ndarray, gram: np.ndarray, damping: float | None = None
) -> tuple[np.ndarray, float]:
    """The (O, R) matrix B minimizing sum ||W x - B F x||^2, for a chain whose first stages map a
    vector x to F x (F is R x D), and the relative squared output error it leaves."""
    g = damped(gram, damping)
    cross = w2d @ g @ maps.T  # (O, R): sum y (F x)^T
    inner = maps @ g @ maps.T  # (R, R): sum (F x)(F x)^T
    inner = inner + 1e-10 * max(float(np.trace(inner)) / max(len(inner), 1), 1e-300) * np.eye(len(inner))
    b = scipy.linalg.solve(inner, cross.T, assume_a="pos").T
    total = float(np.einsum("od,od->", w2d @ g, w2d))
    kept = float(np.einsum("or,or->", b, cross))
    return b, (max(total - kept, 0.0) / total if total > 0 else 0.0)


# --- Tucker-2 ------------------------------------------------------------------------------


def _sym_sqrt(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lam, q = np.linalg.eigh(m)
    lam = np.maximum(lam, lam.max() * 1e-12 if lam.size and lam.max() > 0 else 1e-300)
    return (q * np.sqrt(lam)) @ q.T, (q / np.sqrt(lam)) @ q.T


def _input_bases(w3: np.ndarray, g: np.ndarray) -> list[np.ndarray]:
    """Nested input-channel bases (I x I, leading columns first): whitened HOSVD and plain HOSVD."""
    o, i, kk = w3.shape
    m1 = np.einsum("oik,ojk->ij", w3, w3)  # W_(1) W_(1)^T
    channel = np.einsum("ikjk->ij", g.reshape(i, kk, i, kk)) / kk
    half, inv_half = _sym_sqrt(channel)
    _, b = np.linalg.eigh(half @ m1 @ half)
    whitened = inv_half @ b[:, ::-1]
    _, v = np.linalg.eigh(m1)
    return [whitened, v[:, ::-1]]


@dataclass
class _Fit:
    """What one input basis A gives: the Cholesky factor L of the reduced-patch Gram
    T = (A x I_k)^T Sigma (A x I_k) and the whitened cross map X = C L^-T, C = W Sigma (A x I_k)."""

    basis: np.ndarray
    x: np.ndarray
    chol: np.ndarray


def _fit(w3: np.ndarray, g: np.ndarray, basis: np.ndarray) -> _Fit:
    o, i, kk = w3.shape
    g4 = g.reshape(i, kk, i, kk)
    # T = (A x I_k)^T G (A x I_k), z ordered (channel, offset): leading blocks are the smaller r_in
    t = np.einsum("ca,ckdl,db->akbl", basis, g4, basis, optimize=True).reshape(i * kk, i * kk)
    wg = (w3.reshape(o, i * kk) @ g).reshape(o, i, kk)
    cross = np.einsum("ock,ca->oak", wg, basis, optimize=True).reshape(o, i * kk)  # sum y z^T
    t = 0.5 * (t + t.T)
    t += 1e-10 * float(np.trace(t)) / len(t) * np.eye(len(t))
    chol = np.linalg.cholesky(t)
    x = scipy.linalg.solve_triangular(chol, cross.T, lower=True).T  # C L^-T
    return _Fit(basis, x, chol)


class Tucker2DataFit:
    """The rank-independent work of the data-fitted Tucker-2 of one kernel, done once: both input
    bases and their Cholesky-whitened cross maps. table() gives the exact output error of every
    (r_out, r_in) pair, factors() the factors of one pair."""

    def __init__(self, kernel: np.ndarray, gram: np.ndarray, damping: float | None = None):
        self.spatial = tuple(kernel.shape[2:])
        self.w3 = kernel.astype(np.float64).reshape(kernel.shape[0], kernel.shape[1], -1)
        o = self.w3.shape[0]
        g = damped(gram, damping)
        self.total = float(np.einsum("od,od->", self.w3.reshape(o, -1) @ g, self.w3.reshape(o, -1)))
        self.fits = [_fit(self.w3, g, basis) for basis in _input_bases(self.w3, g)] if self.total > 0 else []

    def table(self, r_in_values: Iterable[int]) -> np.ndarray:
        """Relative squared output error for every r_out (rows 0..O) and each r_in of `r_in_values`
        (columns); per entry the better of the two input bases counts."""
        o, i, kk = self.w3.shape
        r_in_values = [clip_rank(r, i) for r in r_in_values]
        best = np.ones((o + 1, len(r_in_values)))
        if self.total <= 0:
            best[1:] = 0.0
            return best
        for fit in self.fits:
            gx = np.zeros((o, o))
            done = 0
            for col, r in sorted(enumerate(r_in_values), key=lambda t: t[1]):
                block = fit.x[:, done * kk : r * kk]
                gx += block @ block.T
                done = r
                eig = np.clip(np.linalg.eigvalsh(gx)[::-1], 0.0, None)
                err = np.clip((self.total - np.concatenate([[0.0], np.cumsum(eig)])) / self.total, 0.0, 1.0)
                best[:, col] = np.minimum(err, best[:, col])
        return best

    def factors(self, ranks: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """core (r_out, r_in, *k), out_factor (O, r_out), in_factor (I, r_in) and the relative
        squared output error, from the input basis that gives less error."""
        o, i, kk = self.w3.shape
        ro, ri = clip_rank(ranks[0], o), clip_rank(ranks[1], i)
        if self.total <= 0:
            return (np.zeros((ro, ri) + self.spatial), np.eye(o)[:, :ro], np.eye(i)[:, :ri], 0.0)
        best: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        for fit in self.fits:
            x = fit.x[:, : ri * kk]
            lam, vec = np.linalg.eigh(x @ x.T)
            u = vec[:, ::-1][:, :ro]
            err = max((self.total - float(np.clip(lam[::-1][:ro], 0, None).sum())) / self.total, 0.0)
            if best is None or err < best[3]:
                # core = U^T C_r T_r^-1 = U^T X_r L_r^-1
                core = scipy.linalg.solve_triangular(
                    fit.chol[: ri * kk, : ri * kk], (u.T @ x).T, lower=True, trans="T"
                ).T
                best = (core.reshape((ro, ri) + self.spatial), u, fit.basis[:, :ri], err)
        assert best is not None  # total > 0: there is at least one fit
        return best
