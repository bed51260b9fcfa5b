"""Activities of new samples with the parts, the priors and the noise scale held fixed.

Given W (and, for the Gaussian model, σ) the posterior of H factorizes over samples, so the
mode of each column of H is a problem of its own. These functions solve all columns at once but
iterate and stop each column on its own (a converged column is frozen), so a column's result
depends only on its own data: the activities of any subset of samples are the same rows of the
activities of all of them (what :meth:`bnmf.BayesianNMF.transform` needs). They are pure
functions of arrays; callers pick the dtype (``numerics``).

Also here: :func:`map_scales`, the per-component scale that a joint MAP fit puts between W and H
(the likelihood depends only on W H; the priors fix the split), which the normalized factors of a
:class:`~bnmf.Fit` no longer show.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..models.base import capability

__all__ = ["gaussian_activities", "map_scales", "poisson_activities"]


def _columnwise(update, H0, tol, max_iter):
    """Iterate ``H ← update(H)`` (rank, n) column by column until each column's largest change
    is at most ``tol`` times its largest entry (or ``max_iter`` updates); returns (H, updates
    per column)."""

    def cond(state):
        i, _, active, _ = state
        return (i < max_iter) & jnp.any(active)

    def body(state):
        i, H, active, count = state
        H_new = update(H)
        change = jnp.max(jnp.abs(H_new - H), axis=0)
        size = jnp.max(jnp.abs(H_new), axis=0)
        H = jnp.where(active[None, :], H_new, H)
        count = count + active
        active = active & ~(change <= tol * size)
        return i + 1, H, active, count

    n = H0.shape[1]
    state = (0, H0, jnp.ones(n, bool), jnp.zeros(n, jnp.int32))
    _, H, _, count = lax.while_loop(cond, body, state)
    return H, count


@partial(jax.jit, static_argnames=("log_space", "max_iter"))
def poisson_activities(X, M, W, a, rate_H, *, log_space: bool, tol=1e-9, max_iter: int = 20_000):
    r"""Mode of H (rank, n_samples) under the Poisson–gamma model with W fixed:
    :math:`\max_H \sum_{M} \log \mathrm{Poisson}(X \mid WH) + \sum \log \mathrm{Gamma}(H \mid a,
    b_H)` (over log H when ``log_space``, as the fit did for a < 1), by the multiplicative MM
    update of :func:`bnmf.inference.map.fit_map` with W held fixed.

    X, M: (n_features, n_samples) values and bool mask (True = observed); W (n_features, rank).
    Returns (H, updates per column)."""
    Mf = M.astype(X.dtype)
    X = jnp.where(M, X, 0.0)
    tiny = jnp.finfo(X.dtype).tiny
    power = a if log_space else a - 1.0
    exposure = W.T @ Mf + rate_H                          # (rank, n)
    # a start of the right size per column: the observed total spread evenly over components
    total = jnp.sum(X, axis=0) / jnp.maximum(jnp.sum(Mf * jnp.sum(W, axis=1)[:, None], axis=0),
                                              tiny)
    H0 = jnp.broadcast_to(jnp.maximum(total, tiny), (W.shape[1], X.shape[1]))

    def update(H):
        rate = jnp.maximum(W @ H, tiny)
        return (H * (W.T @ (X / rate)) + power) / exposure

    return _columnwise(update, H0, tol, max_iter)


@partial(jax.jit, static_argnames=("max_iter",))
def gaussian_activities(X, M, W, sigma, scale_H, *, tol=1e-9, max_iter: int = 20_000):
    r"""Mode of H (rank, n_samples) under the Gaussian half-normal model with W and σ fixed:
    for each sample j, :math:`\min_{h \ge 0} \tfrac12 \lVert m_j \circ (x_j - W h)\rVert^2 +
    \tfrac12 (\sigma / s_H)^2 \lVert h \rVert^2`, a strictly convex problem solved by exact
    coordinate descent (one sweep over the components per update) on each sample's own Gram
    matrix :math:`W^\top \mathrm{diag}(m_j) W`.

    X, M: (n_features, n_samples) values and bool mask; W (n_features, rank).
    Returns (H, updates per column)."""
    Mf = M.astype(X.dtype)
    P = W.T @ jnp.where(M, X, 0.0)                        # (rank, n)
    Q = jnp.einsum("ik,il,ij->jkl", W, W, Mf)             # (n, rank, rank)
    ridge = (sigma / scale_H) ** 2

    def update(H):
        def coordinate(k, H):
            numer = P[k] - jnp.einsum("jl,lj->j", Q[:, k, :], H) + Q[:, k, k] * H[k]
            return H.at[k].set(jnp.maximum(numer / (Q[:, k, k] + ridge), 0.0))

        return lax.fori_loop(0, H.shape[0], coordinate, H)

    return _columnwise(update, jnp.zeros((W.shape[1], X.shape[1]), X.dtype), tol, max_iter)


def map_scales(model, W, H, log_space: bool = False) -> np.ndarray:
    """Per-component scale c (rank,) of a joint MAP fit given its normalized factors: the raw
    factors were W c and H / c, and c maximizes the priors' density (the likelihood does not
    depend on it).

    W (n_features, rank) with columns summing to 1, H (rank, n_samples); ``model`` resolved.
    Poisson–gamma (shape a, rates b_W, b_H, p = a − 1, or a in log space):
    b_W c² + p (n − m) c − b_H Σ_j H_kj = 0. Gaussian half-normal (scales s_W, s_H):
    c⁴ = s_W² Σ_j H_kj² / (s_H² Σ_i W_ik²).
    """
    W, H = np.asarray(W, np.float64), np.asarray(H, np.float64)
    c = capability(model, "map_scales")(model, W, H, log_space)
    # a component whose part is all zero carries nothing: any scale will do
    return np.where(W.sum(axis=0) > 0, c, 1.0)
