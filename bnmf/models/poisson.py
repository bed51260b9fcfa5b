"""Poisson likelihood with gamma priors on both factors (Cemgil 2009), and its fast paths.

Capabilities registered here (see :mod:`bnmf.models.base`):

* ``"map_update"``: multiplicative majorize–minimize updates with the gamma prior folded in
  (Cemgil 2009; Févotte & Idier 2011), over-relaxed (Badeau et al. 2010) with a monotone
  fallback, started from a least-squares warm-up on fully observed counts;
* ``"cavi"``: coordinate-ascent VI with gamma factors (the model is conditionally conjugate
  once each count is split into latent sources), full sweeps and minibatch steps;
* ``"sparse_counts"``: SciPy sparse counts fitted in O(nnz) by both
  (:mod:`bnmf.models.counts`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import lax
from jax.scipy.special import digamma, gammaln, xlogy

from ..data import Data, floor_positive, to_device, transposed
from .base import (
    H_SITE,
    W_SITE,
    CaviFamily,
    GibbsPrior,
    MapUpdate,
    balanced_mean,
    hyperparameter_pytree,
    observe,
    register_capability,
    sample_H,
    sample_W,
)
from .counts import (
    DenseCounts,
    SparseCounts,
    log_factorial_sum,
    mask_left,
    mask_right,
    poisson_data_constant,
    product_left,
    product_right,
    ratio_left,
    ratio_right,
    sparse_counts,
    sum_kl,
    sum_rate,
    sum_x_log_rate,
)
from .gaussian import INNER_SWEEPS, HalsState, _hals_iterations, hals_state


def poisson_rate(W, H):
    """Poisson rate W @ H kept strictly positive so that log(rate) is finite."""
    rate = W @ H
    return jnp.maximum(rate, jnp.finfo(rate.dtype).tiny)


def poisson_log_likelihood(X, W, H):
    """Per-entry Poisson log-likelihood, shape (n_features, n_samples)."""
    rate = poisson_rate(W, H)
    return X * jnp.log(rate) - rate - gammaln(X + 1.0)


@hyperparameter_pytree
@dataclass(frozen=True)
class PoissonGamma:
    r"""Poisson–gamma NMF for counts.

    .. math::

        W_{ik} \sim \mathrm{Gamma}(a, b_W), \quad H_{kj} \sim \mathrm{Gamma}(a, b_H), \quad
        X_{ij} \sim \mathrm{Poisson}\big((WH)_{ij}\big)

    with shape ``a`` and rates ``b_W``, ``b_H``. Left as ``None``, the rates are set from the data
    (empirical Bayes) so that both factors have prior mean :math:`\sqrt{\bar X / K}` and so
    :math:`E[(WH)_{ij}] = \bar X`, the mean observed count: the same call works on counts of any
    size.

    Parameters
    ----------
    a : float
        Gamma shape of both priors (1 = exponential). Shapes below 1 favour sparse factors; the
        MAP of such a prior is taken in log space (see :func:`bnmf.inference.map.fit_map`).
    rate_W, rate_H : float, optional
        Gamma rates; None sets them from the data.
    """

    a: float = 1.0
    rate_W: float | None = None
    rate_H: float | None = None

    name = "poisson"
    likelihood = "poisson"
    needs_counts = True
    nuts_calibrated = True
    extra_sites = ()

    def sites(self, rank=None) -> tuple:
        """W and H only."""
        return (W_SITE, H_SITE)

    def hyper(self):
        """(a, rate_W, rate_H), the numbers the MAP and CAVI updates use."""
        return self.a, self.rate_W, self.rate_H

    def __post_init__(self):
        for field in ("a", "rate_W", "rate_H"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"PoissonGamma.{field} must be positive, got {value!r}.")

    def resolve(self, data: Data, rank: int) -> PoissonGamma:
        """Fill unset rates from the data (prior mean of each factor = sqrt(mean(X)/rank))."""
        rate = self.a / balanced_mean(data, rank)
        return dataclasses.replace(
            self,
            rate_W=self.rate_W if self.rate_W is not None else rate,
            rate_H=self.rate_H if self.rate_H is not None else rate,
        )

    def numpyro_model(self, X, mask, rank: int, W=None):
        """NumPyro model of X (n_features, n_samples); pass ``W`` to keep it fixed."""
        n_features, n_samples = X.shape
        W = sample_W(dist.Gamma(self.a, self.rate_W), n_features, rank, W)
        H_T = sample_H(dist.Gamma(self.a, self.rate_H), n_samples, rank)
        observe(dist.Poisson(poisson_rate(W, H_T.T).T), X, mask)

    def log_likelihood(self, X, W, H, extras=None):
        """Per-entry log p(X_ij | W, H), shape (n_features, n_samples)."""
        return poisson_log_likelihood(X, W, H)

    def init_extras(self, W, H, X, mask) -> dict:
        """Initial values of sites other than W and H (none for this model)."""
        return {}


# ------------------------------------------------------------------- MAP (closed form)
def gamma_log_density(x, shape, rate, log_space: bool):
    """Sum of Gamma(shape, rate) log-densities of x; over log x when ``log_space``."""
    power = jnp.where(log_space, shape, shape - 1.0)  # log_space may be traced (a < 1)
    return jnp.sum(xlogy(power, x) - rate * x + shape * jnp.log(rate) - gammaln(shape))


def poisson_neg_log_joint(W, H, X, M, hyper, log_space: bool):
    """-log p(X, W, H) for the Poisson–gamma model (masked entries excluded)."""
    a, rate_W, rate_H = hyper
    ll = jnp.sum(jnp.where(M, poisson_log_likelihood(X, W, H), 0.0))
    return -(ll + gamma_log_density(W, a, rate_W, log_space)
             + gamma_log_density(H, a, rate_H, log_space))


def poisson_counts_neg_log_joint(W, H, counts, hyper, data_constant, log_space: bool):
    """:func:`poisson_neg_log_joint` through the dense-or-sparse operations of
    :mod:`~bnmf.models.counts`; ``data_constant`` is Σ M (X log X − X − log X!)
    (:func:`~bnmf.models.counts.poisson_data_constant`). The log-likelihood is taken as that
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
# 96 × 2,000; ω = 2 oscillates. It is not monotone by construction, so the MAP state carries ω check every chunk and fall back to ω = 1, which is.
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


def _poisson_mm_counts_chunk(W, H, counts, hyper, data_constant, relaxation=1.0, *, n_steps,
                             update_W):
    """``n_steps`` multiplicative MM updates (over-relaxed by ``relaxation``; 1 = plain MM) on
    dense or sparse counts, then the loss. ``n_steps`` is traced: a shorter last chunk runs
    the same compiled program."""
    a, rate_W, rate_H = hyper
    log_space = a < 1.0  # no constrained mode below shape 1: the mode over log W, log H
    power = jnp.where(log_space, a, a - 1.0)

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


def masked_data_constant(X, M):
    """Σ M (X log X − X − log X!) on the device (traceable; vmapped over masks by restarts)."""
    return jnp.sum(jnp.where(M, xlogy(X, X) - X - gammaln(X + 1.0), 0.0))


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
    ``XT``) or on :class:`~bnmf.models.counts.SparseCounts` (``XT`` None), whose products
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
    :class:`~bnmf.models.counts.SparseCounts`) from W, H; entries floored at
    ``_WARMUP_FLOOR`` × their factor's mean so that multiplicative updates can move them. With
    ``update_W`` False only H moves. The start of the Poisson MM updates (see
    ``LEAST_SQUARES_WARMUP``)."""
    if n_updates <= 0:
        return W, H
    sparse = isinstance(X, SparseCounts)
    hyper = (_FLAT_SCALE,) * 3
    state = hals_state(W, H, 1.0)  # σ only scales the negligible ridge; each update sets it
    return _least_squares_chunk(state, X, None if sparse else transposed(X), hyper,
                                n_steps=n_updates, update_W=update_W)



# ------------------------------------------------------------------------------- CAVI
class GammaFactors(NamedTuple):
    """Gamma variational factors: shapes and rates of q(W) (n_features, rank) and q(H)
    (rank, n_samples). With W fixed, ``shape_W`` is None and ``rate_W`` holds the fixed W."""

    shape_W: jax.Array | None
    rate_W: jax.Array
    shape_H: jax.Array
    rate_H: jax.Array


def gamma_kl(shape, rate, prior_shape, prior_rate):
    """Σ KL(Gamma(shape, rate) ‖ Gamma(prior_shape, prior_rate)) over all entries."""
    return jnp.sum(
        (shape - prior_shape) * digamma(shape) - gammaln(shape) + gammaln(prior_shape)
        + prior_shape * (jnp.log(rate) - jnp.log(prior_rate)) + shape * (prior_rate - rate) / rate
    )


def _mean_and_geometric(shape, rate):
    """E[x] and exp E[log x] of Gamma(shape, rate)."""
    return shape / rate, jnp.exp(digamma(shape)) / rate


def _moments_W(factors: GammaFactors):
    if factors.shape_W is None:  # fixed W: a point mass
        return factors.rate_W, factors.rate_W
    return _mean_and_geometric(factors.shape_W, factors.rate_W)


def cavi_elbo(factors: GammaFactors, counts, hyper, log_factorials):
    r"""The collapsed bound :math:`\mathcal{L}` above (a scalar); ``counts`` is a
    :class:`~bnmf.models.counts.DenseCounts` or ``SparseCounts``, ``log_factorials`` the
    constant Σ M log X!."""
    a, b_W, b_H = hyper
    EW, LW = _moments_W(factors)
    EH, LH = _mean_and_geometric(factors.shape_H, factors.rate_H)
    bound = sum_x_log_rate(counts, LW, LH) - sum_rate(counts, EW, EH) - log_factorials
    bound = bound - gamma_kl(factors.shape_H, factors.rate_H, a, b_H)
    if factors.shape_W is not None:
        bound = bound - gamma_kl(factors.shape_W, factors.rate_W, a, b_W)
    return bound


def _sweep(factors: GammaFactors, counts, hyper) -> GammaFactors:
    """One CAVI sweep: q(W) (unless fixed), then q(H)."""
    a, b_W, b_H = hyper
    EH, LH = _mean_and_geometric(factors.shape_H, factors.rate_H)
    if factors.shape_W is not None:
        _, LW = _moments_W(factors)
        factors = factors._replace(shape_W=a + LW * ratio_right(counts, LW, LH),
                                   rate_W=b_W + mask_right(counts, EH))
    EW, LW = _moments_W(factors)
    return factors._replace(shape_H=a + LH * ratio_left(counts, LW, LH),
                            rate_H=b_H + mask_left(counts, EW))


def initial_factors(W, H, a, concentration: float = 1.0) -> GammaFactors:
    """Gamma factors with means W, H (shape ``a + concentration``); W None keeps it fixed."""
    shape = a + concentration
    shape_H = jnp.full_like(H, shape)
    if W is None:
        return GammaFactors(None, None, shape_H, shape_H / H)
    shape_W = jnp.full_like(W, shape)
    return GammaFactors(shape_W, shape_W / W, shape_H, shape_H / H)



# ------------------------------------------------------------------- minibatch CAVI
def _local(shape_H, rate_H, LW, EW, counts, hyper, n_sweeps: int):
    """``n_sweeps`` CAVI sweeps of q(H_B) with q(W) held (moments LW = exp E log W, EW)."""
    a, _, b_H = hyper
    rate = b_H + mask_left(counts, EW)  # depends on q(W) only

    def sweep(_, shape_H):
        _, LH = _mean_and_geometric(shape_H, rate)
        return a + LH * ratio_left(counts, LW, LH)

    return lax.fori_loop(0, n_sweeps, sweep, shape_H), jnp.broadcast_to(rate, rate_H.shape)


def minibatch_step(shape_W, rate_W, shape_H, rate_H, X_block, M_block, hyper, scale, rho, *, n_sweeps):
    """One stochastic CAVI step on a minibatch of samples (see :mod:`bnmf.inference.minibatch`):
    local sweeps of q(H_B), then q(W)'s natural parameters a step ``rho`` towards the update
    the minibatch repeated ``scale`` times would give; and a noisy estimate of the bound."""
    a, b_W, _ = hyper
    counts = DenseCounts(X_block, M_block)
    EW, LW = _mean_and_geometric(shape_W, rate_W)
    shape_H, rate_H = _local(shape_H, rate_H, LW, EW, counts, hyper, n_sweeps)
    EH, LH = _mean_and_geometric(shape_H, rate_H)
    target_shape = a + scale * LW * ratio_right(counts, LW, LH)
    target_rate = b_W + scale * mask_right(counts, EH)
    shape_W = (1.0 - rho) * shape_W + rho * target_shape
    rate_W = (1.0 - rho) * rate_W + rho * target_rate
    # A noisy estimate of the bound from this minibatch (data terms scaled by N / |B|).
    data_term = sum_x_log_rate(counts, LW, LH) - sum_rate(counts, EW, EH)
    local_kl = gamma_kl(shape_H, rate_H, a, hyper[2])
    estimate = scale * (data_term - local_kl) - gamma_kl(shape_W, rate_W, a, b_W)
    return shape_W, rate_W, shape_H, rate_H, estimate


def minibatch_final_block(shape_W, rate_W, shape_H, rate_H, X_block, M_block, hyper, *, n_sweeps):
    """Local sweeps against the final q(W), and this block's share of the bound."""
    a, _, b_H = hyper
    counts = DenseCounts(X_block, M_block)
    EW, LW = _mean_and_geometric(shape_W, rate_W)
    shape_H, rate_H = _local(shape_H, rate_H, LW, EW, counts, hyper, n_sweeps)
    EH, LH = _mean_and_geometric(shape_H, rate_H)
    weight = jnp.ones(shape_H.shape[1], shape_H.dtype) if M_block is None else (
        M_block.any(axis=0).astype(shape_H.dtype))  # padding columns carry no KL
    kl = jnp.sum(weight * jnp.sum(
        (shape_H - a) * jax.scipy.special.digamma(shape_H) - jax.scipy.special.gammaln(shape_H)
        + jax.scipy.special.gammaln(a) + a * (jnp.log(rate_H) - jnp.log(b_H))
        + shape_H * (b_H - rate_H) / rate_H, axis=0))
    return shape_H, rate_H, sum_x_log_rate(counts, LW, LH) - sum_rate(counts, EW, EH) - kl


# ------------------------------------------------------------------------ registrations
def poisson_counts(problem):
    """The problem's data for the Poisson updates: its SparseCounts, or X with the mask as
    floats (None when every entry is observed, which saves a product per update)."""
    if problem.sparse:
        return problem.X
    X = problem.X
    return DenseCounts(X, None if problem.fully_observed else problem.mask.astype(X.dtype))


class PoissonData(NamedTuple):
    """The data side of the Poisson MAP updates: dense or sparse counts and the constant
    Σ M (X log X − X − log X!) of the objective (summed once per fit)."""

    counts: object
    data_constant: jax.Array


class MMState(NamedTuple):
    """State of the (over-relaxed) multiplicative MAP updates: the iterate, its negative log
    joint and the relaxation ω (1 = plain MM; the driver sets it to 1 where a chunk rose)."""

    W: jax.Array
    H: jax.Array
    loss: jax.Array
    relaxation: jax.Array


def _map_prepare(problem) -> PoissonData:
    counts = poisson_counts(problem)
    return PoissonData(counts, to_device(poisson_data_constant(counts), problem.X.dtype))


def _map_prepare_masked(X, mask, model) -> PoissonData:
    return PoissonData(DenseCounts(X, mask.astype(X.dtype)), masked_data_constant(X, mask))


def _map_init(W, H, data: PoissonData, model) -> MMState:
    dtype = W.dtype
    return MMState(W, H, jnp.asarray(jnp.inf, dtype), jnp.asarray(RELAXATION, dtype))


def poisson_mm_step(state: MMState, data: PoissonData, model, n_steps, update_W: bool) -> MMState:
    W, H, loss = _poisson_mm_counts_chunk(state.W, state.H, data.counts, model.hyper(),
                                          data.data_constant, state.relaxation,
                                          n_steps=n_steps, update_W=update_W)
    return MMState(W, H, loss[0], state.relaxation)


def _map_describe(problem) -> dict:
    return {"algorithm": "multiplicative-mm",
            "mode_space": "log" if problem.model.a < 1.0 else "constrained",
            "relaxation": RELAXATION}


def _map_warm_start(problem, W, H, n_updates: int):
    """:func:`least_squares_warmup` on fully observed counts (dense or sparse); masked X
    keeps the plain start (HALS needs every entry)."""
    if not problem.fully_observed:
        return W, H, 0
    W, H = least_squares_warmup(problem.X, W, H, n_updates, problem.W_fixed is None)
    return W, H, n_updates


register_capability(PoissonGamma, "map_update", MapUpdate(
    prepare=_map_prepare, prepare_masked=_map_prepare_masked, init=_map_init, step=poisson_mm_step,
    values=lambda state: {"W": state.W, "H": state.H}, describe=_map_describe,
    warm_start=_map_warm_start))


class CaviState(NamedTuple):
    """CAVI's state: the gamma factors and the negative bound of them."""

    factors: GammaFactors
    loss: jax.Array


class CaviData(NamedTuple):
    counts: object
    log_factorials: jax.Array


def _cavi_prepare(problem) -> CaviData:
    counts = poisson_counts(problem)
    # log X! is constant: summed once here (in float64), not on every bound evaluation.
    return CaviData(counts, to_device(log_factorial_sum(counts), problem.X.dtype))


def _cavi_init(W, H, data: CaviData, model, W_fixed=None) -> CaviState:
    factors = initial_factors(None if W_fixed is not None else W, H, model.a)
    if W_fixed is not None:
        factors = factors._replace(rate_W=jnp.asarray(W_fixed, H.dtype))
    return CaviState(factors, jnp.asarray(jnp.inf, H.dtype))


def poisson_cavi_step(state: CaviState, data: CaviData, model, n_steps) -> CaviState:
    hyper = model.hyper()
    factors = lax.fori_loop(0, n_steps, lambda _, f: _sweep(f, data.counts, hyper),
                            state.factors)
    return CaviState(factors, -cavi_elbo(factors, data.counts, hyper, data.log_factorials))


def draw_factors(factors: GammaFactors, seed: int, num_draws: int):
    """Draws of W (num_draws, n_features, rank) and H (num_draws, rank, n_samples), as NumPy
    arrays of the factors' dtype.

    Sampled with NumPy's gamma sampler: ``jax.random.gamma`` is a rejection loop that takes
    seconds to compile and is about 40× slower on CPU (20M draws: 42 s against 0.9 s).
    """
    dtype = np.dtype(factors.shape_H.dtype)
    rng = np.random.default_rng([seed, 0x6A77])  # a stream of its own, fixed by the seed

    def sample(shape, rate):
        shape, rate = np.asarray(shape, np.float64), np.asarray(rate, np.float64)
        out = np.empty((num_draws,) + shape.shape, dtype)
        for d in range(num_draws):  # one draw at a time: float64 temporaries of one draw only
            # A draw with a small shape can underflow to 0 in float32; keep it positive.
            out[d] = np.maximum(rng.standard_gamma(shape) / rate, np.finfo(dtype).tiny)
        return out

    H = sample(factors.shape_H, factors.rate_H)
    if factors.shape_W is None:
        W = np.broadcast_to(np.asarray(factors.rate_W, dtype), (num_draws,) + factors.rate_W.shape)
    else:
        W = sample(factors.shape_W, factors.rate_W)
    return W, H


register_capability(PoissonGamma, "cavi", CaviFamily(
    prepare=_cavi_prepare, init=_cavi_init, step=poisson_cavi_step,
    draw=lambda factors, seed, num_draws: dict(zip("WH", draw_factors(factors, seed, num_draws))),
    minibatch_init=lambda W, H, model: initial_factors(W, H, model.a),
    minibatch_step=minibatch_step, minibatch_final_block=minibatch_final_block,
    global_kl=lambda shape, rate, model: gamma_kl(shape, rate, model.a, model.rate_W),
    factors=lambda state: state.factors, algorithm="cavi-gamma"))
register_capability(PoissonGamma, "sparse_counts", sparse_counts)


def _gibbs_prior(model: PoissonGamma, rank: int) -> GibbsPrior:
    """Fixed shape a and rates b_W, b_H for every component: nothing learned."""
    fixed = {"a_W": np.full(rank, model.a), "b_W": np.full(rank, model.rate_W),
             "a_H": np.full(rank, model.a), "b_H": np.full(rank, model.rate_H)}
    return GibbsPrior(learned=False, hyper_W=(1.0, 1.0, 1.0), hyper_H=(1.0, 1.0, 1.0),
                      start=lambda W, H: fixed)


register_capability(PoissonGamma, "gibbs_prior", _gibbs_prior)


def _map_scales(model: PoissonGamma, W, H, log_space: bool):
    """Per-component scale c of a joint MAP fit (see :func:`bnmf.inference.activities.map_scales`):
    the root of b_W c² + p (n − m) c − b_H Σ_j H_kj = 0, p = a − 1 (a in log space)."""
    n_features, n_samples = W.shape[0], H.shape[1]
    p = model.a if log_space else model.a - 1.0
    b = p * (n_samples - n_features)
    s = model.rate_W * W.sum(axis=0)                 # b_W Σ_i W_ik (= b_W)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (-b + np.sqrt(b**2 + 4.0 * s * model.rate_H * H.sum(axis=1))) / (2.0 * s)


register_capability(PoissonGamma, "map_scales", _map_scales)
