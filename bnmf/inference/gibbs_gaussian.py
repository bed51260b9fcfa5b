"""Exact Gibbs sampling of Gaussian NMF with half-normal priors (:class:`GaussianHalfNormal`).

Column-wise conditionals (Schmidt, Winther & Hansen 2009, "Bayesian non-negative matrix
factorization"): given H, σ and the other columns of W, the entries of column k of W are
independent normals truncated to [0, ∞), of precision τ_ik = Σ_j M_ij H_kj² / σ² + 1 / s_W²
and mean τ_ik⁻¹ Σ_j M_ij H_kj (X_ij − Σ_{l≠k} W_il H_lj) / σ² (the half-normal prior is a
normal truncated at 0, so it stays conjugate); the same for the rows of H. With every entry
observed the sweep reads X only through X Hᵀ and Xᵀ W, as HALS does (O(F N K) a sweep); with a
mask it carries the masked residual M ∘ (X − W H), updated after each column.

The noise scale's prior, σ ~ HalfNormal(s_σ), is not conjugate: σ² | rest has density
∝ v^{−(n+1)/2} exp(−rss / 2v − v / 2s_σ²), which an independence Metropolis–Hastings step
with the inverse-gamma proposal InvGamma((n − 1)/2, rss/2) (the likelihood part exactly)
samples with acceptance min(1, exp(−(v' − v) / 2s_σ²)): exact, and nearly always accepted.

Chains start at MAP fits of the same model (its ``"map_update"`` capability: the first from
``init``, the others from seeded random starts) and run together in compiled chunks of
:data:`~bnmf.inference.gibbs.CHUNK` sweeps (:func:`~bnmf.inference.gibbs.over_chains`).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

from ..data import transposed
from ..models.base import register_capability
from ..models.gaussian import GaussianHalfNormal, residual_sq_norm
from .common import Problem, RawPosterior, key_from_seed, progress_bar
from .gibbs import (
    CHUNK,
    _check_count,
    check_chain_counts,
    map_starts,
    sample_in_chunks,
    thinned_draws,
)

__all__ = ["GaussianGibbsData", "GaussianGibbsState", "fit_gaussian_gibbs", "gaussian_sweep",
           "interval_normal", "positive_normal", "scale_moves", "shear_moves",
           "sigma_log_conditional", "sigma_step"]

# Standardized lower bounds a = −mean/sd from which positive_normal inverts the tail through
# the Mills ratio (below it: the normal CDF's inverse); Laplace's continued fraction of the
# Mills ratio with _MILLS_TERMS terms is exact to float64 rounding from a = 5 on (checked
# against 4,000 terms), and _TAIL_NEWTON Newton steps converge from any uniform draw.
_TAIL_FROM = 5.0
_MILLS_TERMS = 24
_TAIL_NEWTON = 8
# Independence Metropolis–Hastings steps on σ² per sweep (each is scalar work).
SIGMA_STEPS = 2
# Below this share of ‖X‖² (float32), ‖X − WH‖² is summed entry by entry instead of from the
# rank-sized products ‖X‖² − 2⟨X, WH⟩ + ⟨WᵀW, HHᵀ⟩, whose cancellation would bias σ.
_RSS_EXPANSION_FLOOR = 1e-2


# ----------------------------------------------------------------- truncated normal draws
def _log_mills(x):
    """log of the Mills ratio R(x) = Φ(−x) / φ(x) for x ≥ _TAIL_FROM (continued fraction)."""
    t = x
    for k in range(_MILLS_TERMS, 0, -1):
        t = x + k / t
    return -jnp.log(t)


def positive_normal(key, mean, sd):
    """Draws of N(mean, sd²) truncated to [0, ∞), elementwise (same shape as ``mean``).

    By inversion of one uniform per entry: with a = −mean/sd the standardized bound and q =
    Φ(−a), z solves Φ(−z) = q·u through ``ndtri`` for a < 5 (from whichever side of 1/2 is
    precise), and for a ≥ 5 the excess δ = z − a solves log Φ(−(a + δ)) − log Φ(−a) = log u,
    written −aδ − δ²/2 + log R(a + δ) − log R(a) with the Mills ratio R, by Newton steps from
    the exponential tail's −log(u)/a (above the root; the target is concave, so the steps fall
    monotonically onto it). The draw is sd · (z − a) ≥ 0: no NaN or inf at any depth of the
    tail (a mean of −10⁶ sd gives draws of about sd/10⁶), in float32 and float64."""
    dtype = mean.dtype
    u = jax.random.uniform(key, mean.shape, dtype, minval=jnp.finfo(dtype).tiny)
    a = -mean / jnp.maximum(sd, jnp.finfo(dtype).tiny)
    # body: a < _TAIL_FROM
    a_body = jnp.minimum(a, _TAIL_FROM)
    q = ndtr(-a_body)
    p = q * u
    # Φ(z) = 1 − q·u = Φ(a) + q·(1 − u): the side of 1/2 where ndtri's argument is precise
    z = jnp.where(p < 0.5, -ndtri(p), ndtri(ndtr(a_body) + q * (1.0 - u)))
    body = jnp.maximum(z - a_body, 0.0)
    delta = _tail_excess(jnp.maximum(a, _TAIL_FROM), jnp.log(u))
    return sd * jnp.where(a < _TAIL_FROM, body, delta)


def _tail_excess(a, log_v):
    """δ ≥ 0 with log Φ(−(a + δ)) − log Φ(−a) = log_v (≤ 0), for a ≥ _TAIL_FROM: Newton
    steps on h(δ) = −aδ − δ²/2 + log R(a + δ) − log R(a) − log_v (h' = −1/R(a + δ)) from
    −log_v / a, which lies above the root (the normal's hazard exceeds a there); h is concave,
    so the steps fall monotonically onto the root."""
    log_r = _log_mills(a)
    delta = -log_v / a
    for _ in range(_TAIL_NEWTON):
        log_r_x = _log_mills(a + delta)
        h = -a * delta - 0.5 * delta * delta + log_r_x - log_r - log_v
        delta = jnp.maximum(delta + h * jnp.exp(log_r_x), 0.0)
    return delta


def interval_normal(key, mean, sd, lo, hi):
    """Draws of N(mean, sd²) truncated to [lo, hi] (lo ≤ hi, either may be infinite),
    elementwise, by inversion of one uniform: reflected so that the interval's upper end lies
    above the mean, then as :func:`positive_normal`, the interval's far end entering the
    survival fraction Φ(−z) / Φ(−α) = (1 − u) + u Φ(−β) / Φ(−α)."""
    dtype = mean.dtype
    u = jax.random.uniform(key, mean.shape, dtype, minval=jnp.finfo(dtype).tiny)
    sd = jnp.maximum(sd, jnp.finfo(dtype).tiny)
    alpha, beta = (lo - mean) / sd, (hi - mean) / sd
    flip = alpha + beta < 0
    alpha, beta = jnp.where(flip, -beta, alpha), jnp.where(flip, -alpha, beta)
    # body: α < _TAIL_FROM; survival p = (1 − u) S(α) + u S(β), S(x) = Φ(−x)
    a_body = jnp.minimum(alpha, _TAIL_FROM)
    p = (1.0 - u) * ndtr(-a_body) + u * ndtr(-beta)
    z_body = jnp.where(p < 0.5, -ndtri(p), ndtri((1.0 - u) * ndtr(a_body) + u * ndtr(beta)))
    # tail: α ≥ _TAIL_FROM
    a_tail = jnp.maximum(alpha, _TAIL_FROM)
    b_tail = jnp.maximum(beta, a_tail)
    log_ratio = (-0.5 * (b_tail - a_tail) * (b_tail + a_tail) + _log_mills(b_tail)
                 - _log_mills(a_tail))
    z_tail = a_tail + _tail_excess(a_tail, jnp.log((1.0 - u) + u * jnp.exp(log_ratio)))
    z = jnp.clip(jnp.where(alpha < _TAIL_FROM, z_body, z_tail), alpha, beta)
    return jnp.clip(mean + sd * jnp.where(flip, -z, z), lo, hi)


def truncated_normal_log_density(x, mean, sd):
    """log density of N(mean, sd²) truncated to [0, ∞) at x ≥ 0 (for tests and diagnostics)."""
    from jax.scipy.special import log_ndtr
    from jax.scipy.stats import norm
    return norm.logpdf(x, mean, sd) - log_ndtr(mean / sd)


# ------------------------------------------------------------------- factor conditionals
def dense_row_params(F, P, Q, k, var, prior_precision):
    """(mean, sd) of row k of a factor F (rank, n) given its other rows, every entry of X
    observed: P = the other factor's product with X ((rank, n): Wᵀ X for F = H, (X Hᵀ)ᵀ for
    F = Wᵀ), Q its Gram matrix (rank, rank), ``var`` = σ², ``prior_precision`` = 1/s²."""
    numer = P[k] - Q[k] @ F + F[k] * Q[k, k]
    denom = Q[k, k] + var * prior_precision
    return numer / denom, jnp.broadcast_to(jnp.sqrt(var / denom), numer.shape)


def masked_row_params(F, G, R, M, k, var, prior_precision):
    """(mean, sd) of row k of a factor F (rank, n) given its other rows, with a mask: G
    (rank, m) the other factor, M the float mask (n, m) and R the masked residual
    M ∘ (X − Fᵀ G) (n, m), both oriented with F's axis first (X for F = Wᵀ, Xᵀ for F = H)."""
    g = G[k]
    mg2 = M @ (g * g)
    numer = R @ g + F[k] * mg2
    denom = mg2 + var * prior_precision
    return numer / denom, jnp.sqrt(var / denom)


def _dense_rows(key, F, P, Q, var, prior_precision):
    """Every row of F (rank, n) in turn from its conditional (:func:`dense_row_params`)."""
    keys = jax.random.split(key, F.shape[0])

    def update(k, F):
        mean, sd = dense_row_params(F, P, Q, k, var, prior_precision)
        return F.at[k].set(positive_normal(keys[k], mean, sd))

    return jax.lax.fori_loop(0, F.shape[0], update, F)


def _masked_rows(key, F, G, R, M, var, prior_precision):
    """Every row of F in turn from its masked conditional (:func:`masked_row_params`),
    keeping the residual R = M ∘ (X − Fᵀ G) current; returns (F, R)."""
    keys = jax.random.split(key, F.shape[0])

    def update(k, carry):
        F, R = carry
        mean, sd = masked_row_params(F, G, R, M, k, var, prior_precision)
        row = positive_normal(keys[k], mean, sd)
        R = R - M * jnp.outer(row - F[k], G[k])
        return F.at[k].set(row), R

    return jax.lax.fori_loop(0, F.shape[0], update, (F, R))


# ------------------------------------------------------------------------- orbit moves
# Moves along the orbits of W H (which leave the likelihood unchanged, masked or not): without
# them the column-wise sweep crawls along the near-flat ridge of equal W H that well-fitted
# data make (measured at 30 × 40 rank 3: bulk ESS of the normalized W about 5 in 2,000 draws).
# Proposal sd of the rescaling's independence Metropolis–Hastings step, in units of its target's
# Laplace sd (the target in log-scale is log-concave and near-Gaussian).
SCALE_WIDTH = 1.2


def scale_log_density(t, alpha, beta, c):
    """log π(t) + const of rescaling a component, W_k e^t, H_k e^−t: its half-normal priors
    (α = ‖W_k‖² / 2s_W², β = ‖H_k‖² / 2s_H²) and the Jacobian e^{(F − N) t} (c = F − N)."""
    return -alpha * jnp.exp(2.0 * t) - beta * jnp.exp(-2.0 * t) + c * t


def scale_moves(key, WT, H, prior_W, prior_H):
    """Rescale every component k by an exact independence Metropolis–Hastings step on t from
    N(t*, (SCALE_WIDTH / κ^½)²) at the mode t* and curvature κ of :func:`scale_log_density`;
    WT (rank, n_features), H (rank, n_samples), ``prior_*`` = 1/(2s²). Returns (WT, H)."""
    dtype = WT.dtype
    alpha = jnp.sum(WT * WT, axis=1) * prior_W
    beta = jnp.sum(H * H, axis=1) * prior_H
    c = jnp.asarray(WT.shape[1] - H.shape[1], dtype)
    tiny = jnp.finfo(dtype).tiny
    movable = (alpha > tiny) & (beta > tiny)
    alpha_s, beta_s = jnp.where(movable, alpha, 1.0), jnp.where(movable, beta, 1.0)
    root = jnp.sqrt(c * c + 16.0 * alpha_s * beta_s)
    # u* = e^{2t*} solves 2α u² − c u − 2β = 0 (the form without cancellation for each sign)
    u_mode = jnp.where(c >= 0, (c + root) / (4.0 * alpha_s), 4.0 * beta_s / (root - c))
    t_mode = 0.5 * jnp.log(u_mode)
    width = SCALE_WIDTH / jnp.sqrt(4.0 * alpha_s * u_mode + 4.0 * beta_s / u_mode)
    k_move, k_accept = jax.random.split(key)
    t_new = t_mode + width * jax.random.normal(k_move, alpha.shape, dtype)
    log_q = lambda t: -0.5 * ((t - t_mode) / width) ** 2
    log_ratio = (scale_log_density(t_new, alpha_s, beta_s, c) - log_q(t_new)
                 - scale_log_density(jnp.zeros_like(t_new), alpha_s, beta_s, c)
                 + log_q(jnp.zeros_like(t_new)))
    log_u = jnp.log(jax.random.uniform(k_accept, alpha.shape, dtype, minval=tiny))
    t = jnp.where(movable & (log_u < log_ratio), t_new, 0.0)
    return WT * jnp.exp(t)[:, None], H * jnp.exp(-t)[:, None]


def shear_params(WT, H, k, l, prior_W, prior_H):
    """The exact conditional of ε in the shear W_l + εW_k, H_k − εH_l (k ≠ l), which keeps
    W H: N(mean, sd²) truncated to [lo, hi], the ε keeping W_l and H_k non-negative (the
    half-normal priors are Gaussian in ε; the shear's Jacobian is 1). ``prior_*`` = 1/(2s²)."""
    w_k, w_l, h_k, h_l = WT[k], WT[l], H[k], H[l]
    precision = 2.0 * (prior_W * (w_k @ w_k) + prior_H * (h_l @ h_l))
    linear = 2.0 * (prior_H * (h_k @ h_l) - prior_W * (w_l @ w_k))
    inf = jnp.asarray(jnp.inf, WT.dtype)
    lo = jnp.max(jnp.where(w_k > 0, -w_l / jnp.where(w_k > 0, w_k, 1.0), -inf))
    hi = jnp.min(jnp.where(h_l > 0, h_k / jnp.where(h_l > 0, h_l, 1.0), inf))
    return linear / precision, 1.0 / jnp.sqrt(precision), jnp.minimum(lo, 0.0), \
        jnp.maximum(hi, 0.0)


def shear_moves(key, WT, H, prior_W, prior_H):
    """A shear of every ordered pair of components in turn, each ε drawn exactly from
    :func:`shear_params`; returns (WT, H)."""
    rank = WT.shape[0]
    pairs = np.array([(k, l) for k in range(rank) for l in range(rank) if k != l], np.int32)
    if pairs.size == 0:
        return WT, H
    keys = jax.random.split(key, pairs.shape[0])

    def move(p, carry):
        WT, H = carry
        k, l = jnp.asarray(pairs)[p, 0], jnp.asarray(pairs)[p, 1]
        mean, sd, lo, hi = shear_params(WT, H, k, l, prior_W, prior_H)
        eps = interval_normal(keys[p], mean, sd, lo, hi)
        WT = WT.at[l].set(jnp.maximum(WT[l] + eps * WT[k], 0.0))
        H = H.at[k].set(jnp.maximum(H[k] - eps * H[l], 0.0))
        return WT, H

    return jax.lax.fori_loop(0, pairs.shape[0], move, (WT, H))


# --------------------------------------------------------------------------- noise scale
def sigma_log_conditional(sigma, rss, n_observed, scale_sigma):
    """log p(σ | X, W, H) + const: −n log σ − rss / 2σ² − σ² / 2s_σ² on σ > 0."""
    return (-n_observed * jnp.log(sigma) - 0.5 * rss / sigma**2
            - 0.5 * sigma**2 / scale_sigma**2)


def sigma_step(key, sigma, rss, n_observed, scale_sigma, steps: int = SIGMA_STEPS):
    """``steps`` independence Metropolis–Hastings steps on v = σ² from InvGamma((n − 1)/2,
    rss/2), exact for :func:`sigma_log_conditional`; returns (σ, moves accepted)."""
    dtype = sigma.dtype
    shape = 0.5 * (n_observed - 1.0)
    half_rss = 0.5 * jnp.maximum(rss, jnp.finfo(dtype).tiny)
    v = sigma * sigma
    accepted = jnp.zeros((), dtype)
    for k in jax.random.split(key, steps):
        k_gamma, k_accept = jax.random.split(k)
        proposal = half_rss / jax.random.gamma(k_gamma, shape, (), dtype)
        log_u = jnp.log(jax.random.uniform(k_accept, (), dtype, minval=jnp.finfo(dtype).tiny))
        accept = log_u < -(proposal - v) / (2.0 * scale_sigma**2)
        v = jnp.where(accept, proposal, v)
        accepted = accepted + accept
    return jnp.sqrt(v), accepted


# ------------------------------------------------------------------------------- a sweep
class GaussianGibbsState(NamedTuple):
    """One chain: W (n_features, rank), H (rank, n_samples), σ, the σ moves accepted so far,
    its key."""

    W: jax.Array
    H: jax.Array
    sigma: jax.Array
    accepted: jax.Array
    key: jax.Array


class GaussianGibbsData(NamedTuple):
    """What a sweep reads: X (0 where unobserved), and either its transpose ``XT`` (every
    entry observed) or the float mask ``M`` and its transpose ``MT``; ‖X‖² of the observed
    entries and their number."""

    X: jax.Array
    XT: jax.Array | None
    M: jax.Array | None
    MT: jax.Array | None
    sq_norm: jax.Array
    n_observed: jax.Array


def gaussian_data(X, mask) -> GaussianGibbsData:
    """The sweep's data from dense X and its bool mask."""
    X = jnp.asarray(X)
    n_observed = jnp.asarray(np.asarray(mask).sum(), X.dtype)
    if bool(np.asarray(mask).all()):
        return GaussianGibbsData(X, transposed(X), None, None, jnp.sum(X * X), n_observed)
    M = jnp.asarray(mask, X.dtype)
    X = X * M
    return GaussianGibbsData(X, None, M, transposed(M), jnp.sum(X * X), n_observed)


def _dense_rss(X, W, H, sq_norm, XtW, WtW):
    """‖X − WH‖² from the products at hand; summed entry by entry where (float32) the
    expansion's cancellation would matter."""
    expansion = residual_sq_norm(sq_norm, jnp.sum(H * XtW.T), WtW, H @ H.T)
    if X.dtype == jnp.float64:
        return expansion
    return jax.lax.cond(expansion < _RSS_EXPANSION_FLOOR * sq_norm,
                        lambda: jnp.sum((X - W @ H) ** 2), lambda: expansion)


def gaussian_sweep(state: GaussianGibbsState, data: GaussianGibbsData,
                   model: GaussianHalfNormal, *, sample_W: bool = True,
                   orbit: bool = True) -> GaussianGibbsState:
    """One sweep: the columns of W | H, σ (unless W is fixed); the rows of H | W, σ; σ | W, H;
    with ``orbit`` (and W sampled), rescalings and shears of the components, which keep W H.

    Random numbers from the non-partitionable threefry, as
    :func:`bnmf.inference.gibbs.gibbs_step` explains."""
    with jax.threefry_partitionable(False):
        return _sweep(state, data, model, sample_W, orbit)


def _sweep(state, data, model, sample_W, orbit):
    key, k_W, k_H, k_sigma, k_scale, k_shear = jax.random.split(state.key, 6)
    W, H, sigma = state.W, state.H, state.sigma
    var = sigma * sigma
    prec_W, prec_H = 1.0 / model.scale_W**2, 1.0 / model.scale_H**2
    if data.M is None:
        if sample_W:
            W = _dense_rows(k_W, W.T, (data.X @ H.T).T, H @ H.T, var, prec_W).T
        XtW, WtW = data.XT @ W, W.T @ W
        H = _dense_rows(k_H, H, XtW.T, WtW, var, prec_H)
        rss = _dense_rss(data.X, W, H, data.sq_norm, XtW, WtW)
    else:
        R = data.M * (data.X - W @ H)
        if sample_W:
            WT, R = _masked_rows(k_W, W.T, H, R, data.M, var, prec_W)
            W = WT.T
        H, RT = _masked_rows(k_H, H, W.T, R.T, data.MT, var, prec_H)
        rss = jnp.sum(RT * RT)
    if sample_W and orbit:  # after σ's rss: the moves keep W H
        WT, H = scale_moves(k_scale, W.T, H, 0.5 * prec_W, 0.5 * prec_H)
        WT, H = shear_moves(k_shear, WT, H, 0.5 * prec_W, 0.5 * prec_H)
        W = WT.T
    sigma, accepted = sigma_step(k_sigma, sigma, rss, data.n_observed, model.scale_sigma)
    return GaussianGibbsState(W, H, sigma, state.accepted + accepted, key)


@partial(jax.jit, static_argnames=("sample_W", "orbit"))
def _chunk(states, data, model, thin, *, sample_W, orbit):
    """:data:`CHUNK` draws of every chain, ``thin`` (traced) sweeps apart: (states, draws),
    keys left out of the draws."""
    return thinned_draws(partial(gaussian_sweep, data=data, model=model, sample_W=sample_W,
                                 orbit=orbit), states, thin)


# ------------------------------------------------------------------------------ the driver
def fit_gaussian_gibbs(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    thin: int = 1,
    map_iter: int = 500,
    orbit_moves: bool = True,
    progress: bool | None = None,
) -> RawPosterior:
    """Sample the posterior of the ``gaussian`` model (W, H, σ) exactly by column-wise Gibbs
    sweeps (truncated-normal conditionals; σ by exact independence Metropolis–Hastings).

    Parameters
    ----------
    problem : Problem
        Dense X with its mask (SciPy sparse input: ValueError); W may be fixed (``W_fixed``).
    init : {"nndsvda", "random"}
        Start of the first chain's MAP; the other chains start from MAP fits of seeded random
        starts (label switching between chains is undone by alignment).
    num_warmup, num_samples, thin : int
        Burn-in sweeps (rounded up to a multiple of 50: ``info["num_warmup"]`` says how many
        ran), then ``num_samples`` draws kept ``thin`` sweeps apart, per chain.
    num_chains : int
        Chains, run together in one compiled program.
    map_iter : int
        Most updates of each starting MAP fit.
    orbit_moves : bool
        In each sweep, rescale every component and shear components into one another along
        the orbits of W H (exact moves; the likelihood is constant on them): without them
        the column-wise sweep mixes slowly on well-fitted data. None when W is fixed.

    Returns
    -------
    RawPosterior with draws (num_chains, num_samples, ...) of W, H and ``sigma``; ``losses``
    is empty.
    """
    if not isinstance(problem.model, GaussianHalfNormal):
        raise TypeError(f"the Gaussian Gibbs sampler needs model 'gaussian', got "
                        f"{getattr(problem.model, 'name', problem.model)!r}.")
    if problem.sparse:
        raise ValueError("method='gibbs' of model 'gaussian' needs dense X: pass a dense array "
                         "(e.g. X.toarray()), or use method='map'/'svi' for sparse input.")
    num_warmup, num_samples, num_chains, thin = check_chain_counts(num_warmup, num_samples,
                                                                   num_chains, thin)
    map_iter = _check_count("map_iter", map_iter, 1)
    model, dtype = problem.model, problem.X.dtype
    data = gaussian_data(problem.X, problem.mask)
    if float(data.n_observed) < 2:
        raise ValueError("method='gibbs' of model 'gaussian' needs at least 2 observed entries.")
    sample_W = problem.W_fixed is None
    if not isinstance(orbit_moves, bool):
        raise ValueError(f"orbit_moves must be True or False, got {orbit_moves!r}.")  # noqa: TRY004
    flags = {"sample_W": sample_W, "orbit": orbit_moves and sample_W}

    starts, map_iterations = map_starts(problem, num_chains, init, seed, map_iter,
                                        ("W", "H", "sigma"))
    keys = jax.random.split(key_from_seed(seed), num_chains)
    tiny = np.finfo(np.dtype(dtype)).tiny
    states = GaussianGibbsState(
        W=jnp.asarray(np.stack([s["W"] for s in starts]), dtype),
        H=jnp.asarray(np.stack([s["H"] for s in starts]), dtype),
        sigma=jnp.asarray(np.maximum([s["sigma"] for s in starts], tiny), dtype),
        accepted=jnp.zeros(num_chains, dtype), key=keys)
    if not sample_W:
        W = jnp.asarray(problem.W_fixed, dtype)
        states = states._replace(W=jnp.broadcast_to(W, states.W.shape))

    bar = progress_bar(num_warmup + num_samples * thin, "Gibbs sweeps (gaussian)", progress)
    states, done, draws = sample_in_chunks(
        lambda states, thin: _chunk(states, data, model, thin, **flags), states, num_warmup,
        num_samples, thin, bar, ("W", "H", "sigma"))
    if not sample_W:
        W = np.asarray(problem.W_fixed)
        draws["W"] = np.broadcast_to(W, draws["H"].shape[:2] + W.shape).copy()
    # σ's acceptance over every sweep run, burn-in included (the state counts from 0)
    sweeps = done + -(-num_samples // CHUNK) * CHUNK * thin
    acceptance = np.asarray(states.accepted) / (sweeps * SIGMA_STEPS)
    info = {"algorithm": "gibbs", "sampler": "gaussian-truncated-normal",
            "num_chains": num_chains, "num_warmup": done, "num_samples": num_samples,
            "thin": thin, "masked": data.M is not None, "sample_W": sample_W,
            "orbit_moves": orbit_moves and sample_W,
            "sigma_acceptance": float(acceptance.mean()), "map_iterations": map_iterations}
    return RawPosterior(draws=draws, losses=np.zeros(0), elbo=None, info=info)


# method="gibbs" of the gaussian model (METHOD_CAPABILITY["gibbs"] of bnmf.models.base)
register_capability(GaussianHalfNormal, "gibbs_sweep", fit_gaussian_gibbs)
