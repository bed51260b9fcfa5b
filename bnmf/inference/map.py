"""Maximum a posteriori (MAP) point estimates.

Which mode is found (a MAP depends on the parameterisation):

* ``poisson`` (gamma priors, shape ``a`` ≥ 1) and ``gaussian``: the mode of p(W, H | X) in the
  constrained space, by closed-form majorize–minimize updates that never increase the negative
  log joint: multiplicative updates with the gamma prior folded in for Poisson (Cemgil 2009;
  Févotte & Idier 2011), and ridge-penalised HALS with extrapolation of H (Ang & Gillis
  2019; masked multiplicative updates when entries are missing) with an exact noise update for
  Gaussian. The extrapolated sequence is not monotone itself: the best iterate is kept and
  returned, so the reported losses never rise. On fully observed counts (dense or sparse) the
  Poisson updates start from a least-squares warm-up (a few of the same HALS updates on ½‖X − WH‖²),
  which is near the KL optimum and which multiplicative updates alone approach slowly.
* ``poisson`` with shape ``a`` < 1: the gamma density is unbounded at 0, so no constrained mode
  exists. The mode is taken over log W and log H instead (the Jacobian adds 1 to the shape).
* every other model (``horseshoe``): the mode of the density of W and H in the constrained
  space jointly with the log of the model's scales (horseshoe τ, λ, c², noise σ), by Adam on
  log-parameterised sites. Taking the factors in the constrained space lets true zeros shrink to
  zero (a log-space mode of W ~ HalfNormal(s) sits at s, never at 0); taking the scales in log
  space keeps the joint density bounded (p(W=0 | λ) ∝ 1/λ is unbounded as λ → 0, the Jacobian
  λ cancels it).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.scipy.special import gammaln, xlogy

from ..models import GaussianHalfNormal, PoissonGamma
from ..models.gaussian import gaussian_log_likelihood, residual_sq_norm
from ..models.poisson import poisson_log_likelihood
from .common import (
    Problem,
    RawPosterior,
    floor_positive,
    layout_unravel,
    log_joint_unconstrained,
    run_chunks,
    shard_problem,
    site_layout,
    sparse_starting_point,
    starting_point,
    to_device,
    transposed,
)
from .counts import (
    DenseCounts,
    SparseCounts,
    mask_left,
    mask_right,
    poisson_data_constant,
    product_left,
    product_right,
    ratio_left,
    ratio_right,
    sum_kl,
    to_scipy,
)

__all__ = ["fit_map", "map_start"]


# ----------------------------------------------------------------------------- Poisson (MM)
def gamma_log_density(x, shape, rate, log_space: bool):
    """Sum of Gamma(shape, rate) log-densities of x; over log x when ``log_space``."""
    power = shape if log_space else shape - 1.0
    return jnp.sum(xlogy(power, x) - rate * x + shape * jnp.log(rate) - gammaln(shape))


def poisson_neg_log_joint(W, H, X, M, hyper, log_space: bool):
    """-log p(X, W, H) for the Poisson–gamma model (masked entries excluded)."""
    a, rate_W, rate_H = hyper
    ll = jnp.sum(jnp.where(M, poisson_log_likelihood(X, W, H), 0.0))
    return -(ll + gamma_log_density(W, a, rate_W, log_space)
             + gamma_log_density(H, a, rate_H, log_space))


def poisson_counts_neg_log_joint(W, H, counts, hyper, data_constant, log_space: bool):
    """:func:`poisson_neg_log_joint` through the dense-or-sparse operations of
    :mod:`~bnmf.inference.counts`; ``data_constant`` is Σ M (X log X − X − log X!)
    (:func:`~bnmf.inference.counts.poisson_data_constant`). The log-likelihood is taken as that
    constant minus the KL divergence, whose terms are small near a fit: summed directly, its
    own terms cancel in float32 by more than an update gains at large counts (at ~10⁴ counts
    per entry the MM trace then rose in 10 of 200 chunks)."""
    a, rate_W, rate_H = hyper
    ll = data_constant - sum_kl(counts, W, H)
    return -(ll + gamma_log_density(W, a, rate_W, log_space)
             + gamma_log_density(H, a, rate_H, log_space))


# Over-relaxation of the multiplicative updates, A ← A (A_mm / A)^ω with A_mm the MM update:
# the exponent-ω update is locally stable for 0 < ω < 2 (Badeau, Bertin & Vincent 2010, IEEE
# TNN 21:1869) and has the MM update's fixed points. Measured (ω = 1.7 against ω = 1, same
# start): the objective of 200 plain updates is reached after 110 at 2,000 × 10,000 and 150 at
# 96 × 2,000; ω = 2 oscillates. It is not monotone by construction, so :class:`RelaxedChunks`
# checks every chunk and falls back to ω = 1, which is.
RELAXATION = 1.7
# A step whose plain MM factor A_mm / A exceeds this is taken unrelaxed (keeps A^(1−ω) finite).
_RELAXATION_CAP = 1e3


def relaxed_update(A, A_mm, relaxation):
    """A (A_mm / A)^ω elementwise; A_mm itself where A is 0 or the factor is extreme."""
    factor = A_mm / jnp.maximum(A, jnp.finfo(A.dtype).tiny)
    ordinary = (A > 0) & (factor < _RELAXATION_CAP)
    # exp(ω log f), not f ** ω: XLA:CPU's pow with a traced exponent is a slow scalar path
    # (at 96 x 2,000 it made an update 1.7x slower than plain MM; exp-log: 1.15x)
    power = jnp.exp(relaxation * jnp.log(jnp.where(ordinary, factor, 1.0)))
    return jnp.where(ordinary, A * power, A_mm)


@partial(jax.jit, static_argnames=("update_W", "log_space"))
def _poisson_mm_counts_chunk(W, H, counts, hyper, data_constant, relaxation=1.0, *, n_steps,
                             update_W, log_space):
    """``n_steps`` multiplicative MM updates (over-relaxed by ``relaxation``; 1 = plain MM) on
    dense or sparse counts, then the loss. ``n_steps`` is traced: a shorter last chunk runs
    the same compiled program."""
    a, rate_W, rate_H = hyper
    power = a if log_space else a - 1.0

    def step(_, carry):
        W, H = carry
        if update_W:
            W_mm = (W * ratio_right(counts, W, H) + power) / (mask_right(counts, H) + rate_W)
            W = relaxed_update(W, W_mm, relaxation)
        H_mm = (H * ratio_left(counts, W, H) + power) / (mask_left(counts, W) + rate_H)
        return W, relaxed_update(H, H_mm, relaxation)

    W, H = lax.fori_loop(0, n_steps, step, (W, H))
    loss = poisson_counts_neg_log_joint(W, H, counts, hyper, data_constant, log_space)
    return W, H, loss[None]


@partial(jax.jit, static_argnames=("update_W", "full", "log_space"))
def _poisson_mm_chunk(W, H, X, M, hyper, *, n_steps, update_W, full, log_space,
                      data_constant=None, relaxation=1.0):
    """Dense entry point (kept for callers that vmap over masks, e.g. restarts).
    ``data_constant`` (Σ M (X log X − X − log X!), a constant of the fit) is computed here
    when not given."""
    Mf = M.astype(X.dtype)
    counts = DenseCounts(X, None if full else Mf)
    if data_constant is None:
        data_constant = masked_data_constant(X, M)
    return _poisson_mm_counts_chunk(W, H, counts, hyper, data_constant, relaxation,
                                    n_steps=n_steps, update_W=update_W, log_space=log_space)


def masked_data_constant(X, M):
    """Σ M (X log X − X − log X!) on the device (traceable; vmapped over masks by restarts)."""
    return jnp.sum(jnp.where(M, xlogy(X, X) - X - gammaln(X + 1.0), 0.0))


class RelaxedChunks:
    """``step_chunk`` for :func:`run_chunks`: over-relaxed chunks while the loss falls.

    ``chunk(W, H, relaxation=ω) -> (W, H, loss)``, for one fit (loss of shape (1,)) or a
    vmapped batch (``batch`` members: W, H, ω and loss with a leading member axis). A member's
    first chunk whose loss is above its previous chunk's (or not finite) is redone from its
    previous state with plain MM updates (ω = 1, monotone), and its later chunks are plain too;
    so a member's losses never rise, as with plain MM, and it runs the same steps alone or in
    a batch. ``fell_back`` says, per member, whether that happened.
    """

    def __init__(self, chunk, relaxation: float | None = None, batch: int | None = None):
        self.chunk = chunk
        value = RELAXATION if relaxation is None else float(relaxation)
        self.relaxation = np.full(() if batch is None else (batch,), value)
        self.fell_back = np.zeros(self.relaxation.shape, bool)
        self.previous_loss = None

    def __call__(self, state, steps: int | None = None):
        """One chunk from ``state = (W, H)``: ``steps`` updates, or the chunk's own number."""
        W, H = state
        plain = np.ones_like(self.relaxation)
        run = self.chunk if steps is None else partial(self.chunk, n_steps=steps)
        # a host-side cast: jnp.asarray(…, dtype) would compile an eager conversion
        W_new, H_new, loss = run(W, H, relaxation=np.asarray(self.relaxation, W.dtype))
        last = np.asarray(loss)[..., -1]
        rose = (self.relaxation != 1.0) & ~np.isfinite(last)
        if self.previous_loss is not None:
            rose |= (self.relaxation != 1.0) & (last > self.previous_loss)
        if rose.any():
            W_plain, H_plain, loss_plain = run(W, H, relaxation=np.asarray(plain, W.dtype))
            pick = lambda relaxed, redone: jnp.where(  # noqa: E731
                rose.reshape(rose.shape + (1,) * (relaxed.ndim - rose.ndim)), redone, relaxed)
            W_new, H_new, loss = pick(W_new, W_plain), pick(H_new, H_plain), pick(loss, loss_plain)
            self.relaxation = np.where(rose, plain, self.relaxation)
            self.fell_back = self.fell_back | rose
        self.previous_loss = np.asarray(loss)[..., -1]
        return (W_new, H_new), loss


# ---------------------------------------------------------------------------- Gaussian (MM)
def half_normal_log_density(x, scale):
    return jnp.sum(0.5 * jnp.log(2.0 / jnp.pi) - jnp.log(scale) - 0.5 * (x / scale) ** 2)


def _gaussian_neg_log_joint(ll, W, H, sigma, hyper):
    """-log p(X, W, H, sigma) of the Gaussian half-normal model from its log-likelihood ``ll``."""
    scale_W, scale_H, scale_sigma = hyper
    return -(ll + half_normal_log_density(W, scale_W) + half_normal_log_density(H, scale_H)
             + half_normal_log_density(sigma, scale_sigma))


def _gaussian_log_likelihood_from_rss(rss, n_observed, sigma):
    """Σ log N(X_ij | (WH)_ij, sigma) over ``n_observed`` entries from ‖X − WH‖² (``rss``)."""
    return (-0.5 * n_observed * jnp.log(2.0 * jnp.pi) - n_observed * jnp.log(sigma)
            - 0.5 * rss / sigma**2)


def gaussian_neg_log_joint(W, H, sigma, X, M, hyper):
    """-log p(X, W, H, sigma) for the Gaussian half-normal model (masked entries excluded).

    ``M=None`` means fully observed: then the likelihood comes from ‖X − WH‖² in one fused pass
    over X (no mask, no per-entry log-density; 4x faster on 5,000 × 5,000)."""
    if M is None:
        ll = _gaussian_log_likelihood_from_rss(jnp.sum((X - W @ H) ** 2), X.size, sigma)
    else:
        ll = jnp.sum(jnp.where(M, gaussian_log_likelihood(X, W, H, sigma), 0.0))
    return _gaussian_neg_log_joint(ll, W, H, sigma, hyper)


def _hals_rows(F, P, Q, ridge):
    """One HALS sweep over the rows of a factor F (rank, n) for ½ tr(Fᵀ Q F) − tr(Pᵀ F) +
    ½ ridge ‖F‖², i.e. ½‖X − W H‖² + ½ ridge ‖H‖² over F = H with P = Wᵀ X (rank, n) and
    Q = Wᵀ W (rank, rank). In this layout each update reads and writes one contiguous row
    (measured: 3 sweeps over a 20 × 5,000 factor in 0.5 ms, against 1.9 ms column-wise on the
    5,000 × 20 transpose)."""

    def update(k, F):
        numer = P[k] - Q[k] @ F + F[k] * Q[k, k]
        return F.at[k].set(jnp.maximum(numer / (Q[k, k] + ridge), 0.0))

    return lax.fori_loop(0, F.shape[0], update, F)


# HALS sweeps per factor and update, from the same products (Gillis & Glineur 2012,
# "accelerated HALS"): a sweep costs O(n k²) against O(n m k) for the products (measured: 3
# sweeps cost the same per update as 2 at 5,000 × 5,000, 1,000 × 3,000 and 96 × 2,000). Updates
# to scikit-learn's final CD objective from NNDSVDa at 5,000 × 5,000 (rank 20), 1,000 × 3,000
# (10), 96 × 2,000 (10), 500 × 500 (8) and 2,000 × 1,000 (15), with the extrapolation below:
# 19 / 20 / 23 / 25 / 18 with 3 sweeps, 26 / 25 / 32 / 24 / 26 with 2, 55–67 with 1; 4 to 6
# sweeps gain nothing more. Without extrapolation: 28 / 34 / 46 / 60 / 26 with 3 sweeps,
# 36 / 43 / 46 / 47 / 38 with 2.
INNER_SWEEPS = 3


def _hals_sweeps(F, P, Q, ridge, n_sweeps: int):
    """``n_sweeps`` HALS sweeps (:func:`_hals_rows`) on one factor F (rank, n) from the same
    products P (rank, n) and Q (rank, rank)."""
    return lax.fori_loop(0, n_sweeps, lambda _, F: _hals_rows(F, P, Q, ridge), F)


def _noise_mode(rss, n_observed, scale_sigma):
    """argmax over sigma of N(residuals | 0, sigma) · HalfNormal(sigma | scale): a quadratic in σ²."""
    return jnp.sqrt(2.0 * rss / (n_observed + jnp.sqrt(n_observed**2 + 4.0 * rss / scale_sigma**2)))


@partial(jax.jit, static_argnames=("update_W",))
def _gaussian_mm_chunk(W, H, sigma, X, M, hyper, *, n_steps, update_W):
    """``n_steps`` (traced) multiplicative updates of the masked, ridge-penalised objective,
    each followed by the noise scale's mode; then the loss. (Every entry observed:
    :func:`_gaussian_hals_chunk`.)"""
    scale_W, scale_H, scale_sigma = hyper
    tiny = jnp.finfo(X.dtype).tiny
    Mf = M.astype(X.dtype)
    n_observed = Mf.sum()

    def step(_, carry):
        W, H, sigma = carry
        var = sigma**2
        if update_W:
            W = W * ((Mf * X) @ H.T) / ((Mf * (W @ H)) @ H.T + var / scale_W**2 * W + tiny)
        H = H * (W.T @ (Mf * X)) / (W.T @ (Mf * (W @ H)) + var / scale_H**2 * H + tiny)
        rss = jnp.sum(Mf * (X - W @ H) ** 2)
        sigma = jnp.maximum(_noise_mode(rss, n_observed, scale_sigma), tiny)
        return W, H, sigma

    W, H, sigma = lax.fori_loop(0, n_steps, step, (W, H, sigma))
    loss = gaussian_neg_log_joint(W, H, sigma, X, M, hyper)
    return W, H, sigma, loss[None]


# Extrapolation of H between HALS updates, with restarts (Ang & Gillis 2019, Neural Computation
# 31:417, "Accelerating nonnegative matrix factorization algorithms using extrapolation"): the W
# update starts from, and is fitted to, H_y = H + β (H − H_previous); β grows by _GROW while the
# objective falls, and on a rise H_y restarts at H and β shrinks by _SHRINK, capped by the β
# that last failed (the cap itself grows by _CAP_GROW). Updates needed: see INNER_SWEEPS; with
# 2 sweeps, extrapolating W too or starting from β = 0.1 or 0.5 needed more.
_EXTRAPOLATION_START, _SHRINK, _GROW, _CAP_GROW = 0.25, 2.0, 1.05, 1.01


class HalsState(NamedTuple):
    """State of the extrapolated HALS iteration: the current iterate (W, H, sigma, its
    ``loss``), the extrapolated ``H_y``, the step ``beta`` and its cap ``beta_max``, and the
    best iterate so far (``best``: W, H, sigma, loss), which is what a fit returns: the
    extrapolated sequence is not monotone, its best iterate is."""

    W: jax.Array
    H: jax.Array
    sigma: jax.Array
    loss: jax.Array
    H_y: jax.Array
    beta: jax.Array
    beta_max: jax.Array
    best: tuple


def hals_state(W, H, sigma) -> HalsState:
    """The extrapolated HALS iteration's state at a start (W, H, sigma)."""
    W, H = jnp.asarray(W), jnp.asarray(H)
    dtype = W.dtype
    sigma, inf = jnp.asarray(sigma, dtype), jnp.asarray(jnp.inf, dtype)
    return HalsState(W, H, sigma, inf, H, jnp.asarray(_EXTRAPOLATION_START, dtype),
                     jnp.asarray(1.0, dtype), (W, H, sigma, inf))


def _hals_iterations(state: HalsState, right, left, sq_norm, n_observed, hyper, *, n_steps,
                     update_W, inner_sweeps):
    """``n_steps`` (traced) extrapolated HALS updates (every entry observed; exact block
    coordinate descent on W and H with the ridge of their half-normal priors), each followed
    by the noise scale's mode. X enters only through ``right(H) = X Hᵀ`` (n_features, rank),
    ``left(W) = Xᵀ W`` (n_samples, rank), ``sq_norm = ‖X‖²`` and ``n_observed``, so dense and
    sparse X share the iteration."""
    scale_W, scale_H, scale_sigma = hyper
    tiny = jnp.finfo(sq_norm.dtype).tiny

    def step(_, state):
        W, H, sigma, loss, H_y, beta, beta_max, best = state
        var = sigma**2
        if update_W:
            W = _hals_sweeps(W.T, right(H_y).T, H_y @ H_y.T, var / scale_W**2,
                             inner_sweeps).T
        XtW, WtW = left(W), W.T @ W
        H_new = _hals_sweeps(H_y, XtW.T, WtW, var / scale_H**2, inner_sweeps)
        # ‖X − WH‖² from products already at hand, O((n + m) k²) instead of a pass over X
        rss = residual_sq_norm(sq_norm, jnp.sum(H_new * XtW.T), WtW, H_new @ H_new.T)
        sigma = jnp.maximum(_noise_mode(rss, n_observed, scale_sigma), tiny)
        new_loss = _gaussian_neg_log_joint(
            _gaussian_log_likelihood_from_rss(rss, n_observed, sigma), W, H_new, sigma, hyper)
        rose = ~(new_loss <= loss)
        H_y = jnp.where(rose, H_new, H_new + beta * (H_new - H))
        beta, beta_max = (jnp.where(rose, beta / _SHRINK, jnp.minimum(beta_max, _GROW * beta)),
                          jnp.where(rose, beta, jnp.minimum(1.0, _CAP_GROW * beta_max)))
        better = new_loss < best[3]
        best = tuple(jnp.where(better, new, old)
                     for new, old in zip((W, H_new, sigma, new_loss), best))
        return HalsState(W, H_new, sigma, new_loss, H_y, beta, beta_max, best)

    return lax.fori_loop(0, n_steps, step, state)


@partial(jax.jit, static_argnames=("update_W", "inner_sweeps"))
def _gaussian_hals_chunk(state: HalsState, X, XT, hyper, *, n_steps, update_W,
                         inner_sweeps=INNER_SWEEPS):
    """:func:`_hals_iterations` on dense X, then the exact loss of the best iterate. ``XT``
    is X transposed in memory: Xᵀ W from a row-major Xᵀ is about 2x faster than from X on
    CPU."""
    state = _hals_iterations(
        state, lambda H: X @ H.T, lambda W: XT @ W, jnp.sum(X * X),
        jnp.asarray(X.size, X.dtype), hyper, n_steps=n_steps, update_W=update_W,
        inner_sweeps=inner_sweeps)
    W, H, sigma, _ = state.best
    return state, gaussian_neg_log_joint(W, H, sigma, X, None, hyper)[None]


# -------------------------------------------------------------- least-squares warm-up (Poisson)
# HALS updates of the least-squares objective before the Poisson MM updates. For counts the
# least-squares NMF lies near the KL one, and extrapolated HALS gets there in a few updates
# where multiplicative updates crawl: from NNDSVDa, scikit-learn's final KL objective (MU, 200
# iterations) is reached after 109 over-relaxed MM updates at 96 × 2,000 (rank 10) and 110 at
# 2,000 × 10,000 (rank 12), but after 10 HALS + 8 MM and 10 HALS + 0 MM updates (20 HALS: 0 MM
# at both); with low counts (500 × 2,000, mean 0.36, 73% zeros) after 10 or 20 HALS + 52 MM
# instead of 76 MM. A HALS update costs about two thirds of an MM update (two products instead
# of four, plus the sweeps): 20 take 0.30 s at 2,000 × 10,000, where an MM update takes 23 ms.
LEAST_SQUARES_WARMUP = 20
# HALS sets entries to exactly 0, where multiplicative updates would hold them (and log-space
# updates cannot start): they are raised to this fraction of their factor's mean.
_WARMUP_FLOOR = 1e-6
_FLAT_SCALE = 1e10  # half-normal scales of the warm-up: a negligible ridge, plain least squares


@partial(jax.jit, static_argnames=("update_W",))
def _least_squares_chunk(state: HalsState, X, XT, hyper, *, n_steps, update_W):
    """The best (W, H) of :func:`_hals_iterations` for the least-squares warm-up, floored
    (see ``_WARMUP_FLOOR``; W as it was without ``update_W``): on dense X (with its transpose
    ``XT``) or on :class:`~bnmf.inference.counts.SparseCounts` (``XT`` None), whose products
    cost O(nnz · rank). One compiled program, floor included (eager floors compile each op)."""
    if isinstance(X, SparseCounts):
        right, left = (lambda H: product_right(X, H)), (lambda W: product_left(X, W))
        sq_norm = jnp.sum(X.values * X.values)
    else:
        right, left, sq_norm = (lambda H: X @ H.T), (lambda W: XT @ W), jnp.sum(X * X)
    n_observed = jnp.asarray(X.shape[0] * X.shape[1], sq_norm.dtype)
    W, H = _hals_iterations(state, right, left, sq_norm, n_observed, hyper, n_steps=n_steps,
                            update_W=update_W, inner_sweeps=INNER_SWEEPS).best[:2]
    return (floor_positive(W, _WARMUP_FLOOR) if update_W else state.W,
            floor_positive(H, _WARMUP_FLOOR))


def least_squares_warmup(X, W, H, n_updates: int, update_W: bool = True):
    """W (n_features, rank), H (rank, n_samples) after ``n_updates`` extrapolated HALS updates
    of ½‖X − W H‖² (every entry of X observed; X dense or
    :class:`~bnmf.inference.counts.SparseCounts`) from W, H; entries floored at
    ``_WARMUP_FLOOR`` × their factor's mean so that multiplicative updates can move them. With
    ``update_W`` False only H moves. The start of the Poisson MM updates (see
    ``LEAST_SQUARES_WARMUP``)."""
    if n_updates <= 0:
        return W, H
    sparse = isinstance(X, SparseCounts)
    hyper = to_device([_FLAT_SCALE] * 3, X.dtype)
    state = hals_state(W, H, 1.0)  # σ only scales the negligible ridge; each update sets it
    return _least_squares_chunk(state, X, None if sparse else transposed(X), hyper,
                                n_steps=n_updates, update_W=update_W)


def check_warmup(warmup) -> int:
    """``warmup`` as an int, or a ValueError naming it."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}.")
    return int(warmup)


def warmed_start(problem: Problem, W, H, warmup: int):
    """(W, H, updates run): :func:`least_squares_warmup` of the start W, H where it applies,
    the Poisson–gamma model on fully observed X, dense or sparse (masked X keeps the plain
    start: HALS needs every entry); elsewhere W, H unchanged and 0."""
    if not (isinstance(problem.model, PoissonGamma) and problem.fully_observed):
        return W, H, 0
    W, H = least_squares_warmup(problem.X, W, H, warmup, problem.W_fixed is None)
    return W, H, warmup


# ------------------------------------------------------------------------ generic (log space)
FACTOR_SITES = ("W", "H")  # sites whose mode the generic MAP takes in the constrained space


@lru_cache(maxsize=16)
def _adam_map_programs(model_structure, rank: int, layout: tuple, learning_rate: float,
                       chunk: int):
    """(optimizer, unravel, compiled ``step_chunk(carry, X, mask, W_fixed, model)``) of
    :func:`_generic_map` for one kind of model (``jax.tree.structure`` of the resolved model),
    site layout and step size. The data and the model's hyperparameters are arguments, not
    constants of a closure, so a later fit with the same kind of model and shapes (other data
    too) reuses the compiled chunk."""
    del model_structure  # the cache key: the chunk is traced for one model structure
    unravel = layout_unravel(layout)
    optimizer = optax.adam(learning_rate)
    dtype = jnp.dtype(layout[0][2])
    u_bound = -0.45 * float(np.log(np.finfo(dtype).tiny))

    @jax.jit
    def step_chunk(carry, X, mask, W_fixed, model):
        problem = Problem(X, mask, rank, model, W_fixed)
        loss_fn = lambda u: -log_joint_unconstrained(  # noqa: E731
            problem, unravel, u, constrained_sites=FACTOR_SITES)

        def step(carry, _):
            u, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(u)
            updates, opt_state = optimizer.update(grads, opt_state, u)
            # Shrunk sites drift towards 0, and the horseshoe's τ and λ along their ridge (only
            # τλ is well determined) towards 0 and ∞: keep exp(u) and its square finite normal
            # floats (else HalfNormal(0) or Cauchy(∞) gives NaN). At ±u_bound they are 0 or ∞
            # in effect (e^-39 ≈ 1e-17 in float32).
            u = jnp.clip(optax.apply_updates(u, updates), -u_bound, u_bound)
            return (u, opt_state), loss

        return lax.scan(step, carry, None, length=chunk)

    return optimizer, unravel, step_chunk


def _generic_map(problem: Problem, init_values: dict, max_iter, tol, progress, learning_rate):
    """Adam over u = log(sites) on -log p(X, W, H, scales) - Σ log(scales) (see module doc)."""
    u0 = ravel_pytree(jax.tree.map(jnp.log, init_values))[0]
    chunk = 50
    optimizer, unravel, step_chunk = _adam_map_programs(
        jax.tree.structure(problem.model), problem.rank, site_layout(init_values),
        float(learning_rate), chunk)
    data = (problem.X, problem.mask, problem.W_fixed, problem.model)
    (u, _), losses, iterations, converged = run_chunks(
        lambda carry: step_chunk(carry, *data), (u0, optimizer.init(u0)), max_iter, chunk, tol,
        progress, "MAP (Adam)"
    )
    return jax.tree.map(jnp.exp, unravel(u)), losses, iterations, converged


# ------------------------------------------------------------------------------- public
def map_start(problem: Problem, init: str, seed: int):
    """Starting W (n_features, rank) and H (rank, n_samples) as arrays of X's dtype."""
    if problem.sparse:
        X = to_scipy(problem.X)
        hidden = (np.asarray(problem.X.hidden_rows), np.asarray(problem.X.hidden_cols))
        W, H = sparse_starting_point(X, hidden, problem.rank, init, seed)
        observed_mean = X.sum() / (X.shape[0] * X.shape[1] - hidden[0].size)
    else:
        # in the fit's precision (float32 by default): a float64 copy of a large X costs more
        # than the start itself
        X, M = np.asarray(problem.X), np.asarray(problem.mask)
        W, H = starting_point(X, M, problem.rank, init, seed)
        observed_mean = X.mean() if M.all() else X[M].mean()  # no boolean copy of X
    if problem.W_fixed is not None:
        W = np.asarray(problem.W_fixed, dtype=np.float64)
        H = np.full_like(H, observed_mean / max(W.sum(axis=0).mean(), 1e-300))
    dtype = problem.X.dtype
    return to_device(W, dtype), to_device(H, dtype)


def poisson_counts(problem: Problem):
    """The problem's data for the Poisson updates: its SparseCounts, or X with the mask as
    floats (None when every entry is observed, which saves a product per update)."""
    if problem.sparse:
        return problem.X
    X = problem.X
    return DenseCounts(X, None if problem.fully_observed else problem.mask.astype(X.dtype))


def _likelihood_model(model):
    """The plain model with the same likelihood, used to start models without MM updates."""
    if getattr(model, "likelihood", None) == "gaussian":
        return GaussianHalfNormal(scale_W=1e15, scale_H=1e15, scale_sigma=1e15)
    return PoissonGamma(a=1.0, rate_W=1e-15, rate_H=1e-15)


def fit_map(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    max_iter: int = 2000,
    tol: float = 1e-6,
    progress: bool | None = None,
    learning_rate: float = 0.02,
    W_start=None,
    H_start=None,
    devices: int | None = None,
    warmup: int = LEAST_SQUARES_WARMUP,
) -> RawPosterior:
    """MAP estimate of W and H (and the model's other sites).

    Parameters
    ----------
    problem : Problem
    init : {"nndsvda", "random"}
        Starting point (ignored when ``W_start``/``H_start`` are given).
    max_iter : int
        Maximum number of updates: exactly that many closed-form updates (the loss is
        checked every 10), or Adam steps rounded up to a whole chunk of 50 for models without
        closed-form updates; ``info["iterations"]`` says how many ran.
    tol : float
        Stop when the negative log joint changes by less than ``tol`` relative over a chunk.
    learning_rate : float
        Adam step size for models without closed-form updates.
    devices : int, optional
        Shard the sample axis over this many of ``jax.devices()`` (dense X; it must divide
        the number of samples). Same result as one device, to float rounding.
    warmup : int
        ``poisson`` with fully observed X (dense or sparse): the MM updates start after this many
        extrapolated HALS updates of the least-squares objective from the starting point
        (:func:`least_squares_warmup`; not for ``W_start``/``H_start`` given, nor for masked
        X); 0 turns it off. ``info["least_squares_warmup"]`` says how many ran.

    Returns
    -------
    RawPosterior with one chain of one draw; ``info`` says which algorithm and mode space ran.
    """
    model = problem.model
    extra_info = {}
    warmup = check_warmup(warmup)
    started_here = W_start is None or H_start is None
    if started_here:
        W_start, H_start = map_start(problem, init, seed)
    problem, W_start, H_start = shard_problem(problem, W_start, H_start, devices)
    X, M = problem.X, problem.mask
    full, update_W = problem.fully_observed, problem.W_fixed is None
    if problem.sparse and not isinstance(model, PoissonGamma):
        raise ValueError(
            f"sparse input is fitted in O(nnz) only for model='poisson' (got "
            f"{getattr(model, 'name', model)!r}); pass X.toarray() for this model."
        )
    if isinstance(model, PoissonGamma):
        log_space = model.a < 1.0
        hyper = to_device([model.a, model.rate_W, model.rate_H], X.dtype)
        counts = poisson_counts(problem)
        data_constant = to_device(poisson_data_constant(counts), X.dtype)
        chunk = 10
        W_start, H_start, warmup = warmed_start(problem, W_start, H_start,
                                                warmup if started_here else 0)

        step_chunk = RelaxedChunks(partial(
            _poisson_mm_counts_chunk, counts=counts, hyper=hyper, data_constant=data_constant,
            n_steps=chunk, update_W=update_W, log_space=log_space))

        (W, H), losses, iterations, converged = run_chunks(
            step_chunk, (W_start, H_start), max_iter, chunk, tol, progress, "MAP",
            exact_steps=True,
        )
        values = {"W": W, "H": H}
        algorithm, space = "multiplicative-mm", "log" if log_space else "constrained"
        extra_info = {"relaxation": RELAXATION,
                      "relaxation_fell_back": bool(step_chunk.fell_back),
                      "least_squares_warmup": warmup}
    elif isinstance(model, GaussianHalfNormal):
        hyper = to_device([model.scale_W, model.scale_H, model.scale_sigma], X.dtype)
        sigma = model.init_extras(W_start, H_start, X, M)["sigma"]
        chunk = 10

        if full:
            # One transposed copy of X (same size as X) makes every Xᵀ W a row-major product.
            XT = transposed(X)

            def step_chunk(state, steps):
                return _gaussian_hals_chunk(state, X, XT, hyper, n_steps=steps,
                                            update_W=update_W)

            state = hals_state(W_start, H_start, sigma)
        else:
            def step_chunk(state, steps):
                W, H, sigma, loss = _gaussian_mm_chunk(*state, X, M, hyper, n_steps=steps,
                                                       update_W=update_W)
                return (W, H, sigma), loss

            state = (W_start, H_start, sigma)

        state, losses, iterations, converged = run_chunks(
            step_chunk, state, max_iter, chunk, tol, progress, "MAP", exact_steps=True)
        W, H, sigma = state.best[:3] if full else state
        values = {"W": W, "H": H, "sigma": sigma}
        algorithm, space = ("extrapolated-hals" if full else "masked-multiplicative-mm"), "constrained"
    else:
        base = Problem(X, M, problem.rank, _likelihood_model(model), problem.W_fixed)
        start = fit_map(base, init=init, seed=seed, max_iter=200, tol=1e-4, progress=False,
                        W_start=W_start, H_start=H_start).draws
        W0 = floor_positive(start["W"][0, 0])
        H0 = floor_positive(start["H"][0, 0])
        init_values = {"H": H0.T, **model.init_extras(W0, H0, X, M)}
        if update_W:
            init_values["W"] = W0
        values, losses, iterations, converged = _generic_map(
            problem, init_values, max_iter, tol, progress, learning_rate
        )
        values = dict(values)
        values["H"] = values["H"].T
        if not update_W:
            values["W"] = problem.W_fixed
        algorithm, space = "adam", "constrained factors, log scales"
    draws = {name: np.asarray(value)[None, None] for name, value in values.items()}
    info = {"algorithm": algorithm, "mode_space": space, "iterations": iterations,
            "converged": converged, **extra_info}
    return RawPosterior(draws=draws, losses=losses, elbo=None, info=info)


def posterior_start(problem: Problem, init: str, seed: int, max_iter: int = 500) -> dict:
    """Starting values of every NumPyro site, from a MAP fit, for SVI and NUTS.

    Values are in NumPyro's layout (``H`` as (n_samples, rank)) and floored away from 0, since
    both samplers work in log space.
    """
    if problem.sparse:
        raise ValueError(
            "sparse input is fitted in O(nnz) by method='map' and method='cavi' only; pass "
            "X.toarray() for SVI or NUTS."
        )
    start = fit_map(problem, init=init, seed=seed, max_iter=max_iter, tol=1e-5, progress=False)
    values = {name: jnp.asarray(draw[0, 0]) for name, draw in start.draws.items()}
    W = floor_positive(values.pop("W"))
    H = floor_positive(values.pop("H"))
    extras = problem.model.init_extras(W, H, problem.X, problem.mask)
    extras.update({k: v for k, v in values.items() if k in extras})
    init_values = {"H": H.T, **extras}
    if problem.W_fixed is None:
        init_values["W"] = W
    return init_values
