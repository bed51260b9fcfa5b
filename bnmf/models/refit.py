r"""Refitting known parts: Poisson counts with W fixed and a cohort-level share prior.

The model of :func:`bnmf.refit` (signature calling). ``W`` (n_features, K) is given (reference
parts, columns summing to 1, so ``H`` is in counts) and never sampled:

.. math::

    \pi_k \sim \mathrm{Gamma}(\alpha_\pi, \alpha_\pi K), \quad
    a_k \sim \mathrm{Gamma}(\alpha_a, \beta_a), \quad
    H_{kj} \sim \mathrm{Gamma}\!\big(a_k,\; a_k / (\pi_k N_j)\big), \quad
    X_{ij} \sim \mathrm{Poisson}\big((W (S \circ H))_{ij}\big)

with :math:`N_j` the sample's observed total (at least 1), :math:`\pi_k` (site ``share``)
part *k*'s typical share of a sample and :math:`a_k` (site ``shape``) how evenly it is spread
over samples; :math:`S` (``support``, (K, n_samples) of bool, optional) keeps the parts a
sample clearly lacks out of its likelihood (their ``H`` is then drawn from the prior alone,
and :func:`bnmf.refit` reports it as 0).

Capabilities (registered here and in :mod:`bnmf.inference.gibbs_refit`):

* ``"map_update"``: the mode over log H, log π, log a (the joint density in H has no mode at
  shapes below 1, its log-space density always has one) by coordinate ascent: a
  majorize–minimize update of H (Poisson–gamma multiplicative update with the log-space
  shape a + 1), then π at its exact conditional mode (the root of a quadratic) and a by a
  guarded Newton step (its conditional log density is concave); none lowers
  :func:`log_joint`. This is also the start of every other method.
* ``"gibbs_sweep"``: latent counts, then H from its gamma conditional
  (:func:`h_conditional`), π and a by Metropolis steps on their log conditionals
  (:func:`share_log_conditional`, :func:`shape_log_conditional`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import digamma, gammaln, polygamma

from ..data import Data
from .base import H_SITE, MapUpdate, Site, hyperparameter_pytree, observe, register_capability
from .poisson import poisson_log_likelihood, poisson_rate

__all__ = [
    "REFIT_SITES",
    "RefitPoisson",
    "h_conditional",
    "log_joint",
    "sample_totals",
    "shape_log_conditional",
    "share_log_conditional",
]

# Sites of the cohort-level hyperparameters, each of shape (K,).
REFIT_SITES = ("share", "shape")
# Newton steps of the shape's MAP update per coordinate-ascent update.
SHAPE_NEWTON_STEPS = 4


def sample_totals(X, mask):
    """N_j: each sample's observed total count, at least 1 (an all-zero sample keeps a scale);
    X, mask (n_features, n_samples) -> (n_samples,)."""
    return jnp.maximum(jnp.sum(jnp.where(mask, X, 0.0), axis=0), 1.0)


@hyperparameter_pytree
@dataclass(frozen=True, eq=False)
class RefitPoisson:
    r"""Poisson counts of fixed parts W with a cohort-level prior on their exposures H.

    Parameters
    ----------
    share_shape : float
        :math:`\alpha_\pi` of the share prior Gamma(α_π, α_π K) (mean 1 / K); small values
        let a part no sample needs shrink towards 0 everywhere.
    shape_shape, shape_rate : float
        Gamma(α_a, β_a) prior on each part's exposure shape a_k (mean α_a / β_a).
    support : array of bool, shape (K, n_samples), optional
        Only these exposures enter the likelihood (the refined fit of :func:`bnmf.refit`).

    Sites: ``H`` (K, n_samples), ``share`` (K,), ``shape`` (K,). ``W`` must be given.
    """

    share_shape: float = 0.1
    shape_shape: float = 2.0
    shape_rate: float = 8.0
    support: object = None

    name = "refit"
    likelihood = "poisson"
    needs_counts = True
    nuts_calibrated = True
    extra_sites = REFIT_SITES

    def __post_init__(self):
        for field in ("share_shape", "shape_shape", "shape_rate"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not value > 0:
                raise ValueError(f"RefitPoisson.{field} must be a positive number, got "
                                 f"{value!r}.")
        if self.support is not None:
            support = np.asarray(self.support)
            if support.dtype != bool or support.ndim != 2:
                raise ValueError("RefitPoisson.support must be a 2-D bool array (K, n_samples), "
                                 f"got dtype {support.dtype}, shape {support.shape}.")
            if not support.any(axis=0).all():
                raise ValueError("RefitPoisson.support leaves a sample without any part; keep "
                                 "at least one part per sample.")

    def sites(self, rank=None) -> tuple:
        """H and the per-part share and shape (W is fixed: not a site)."""
        return (H_SITE, *(Site(name, ("component",)) for name in REFIT_SITES))

    def resolve(self, data: Data, rank: int) -> RefitPoisson:
        """The support filled (every part of every sample when unset), so that the screening
        and refined fits of :func:`bnmf.refit` share one structure and one compilation."""
        expected = (rank, data.shape[1])
        if self.support is None:
            return dataclasses.replace(self, support=np.ones(expected, bool))
        if np.shape(self.support) != expected:
            raise ValueError(f"RefitPoisson.support has shape {np.shape(self.support)}, "
                             f"expected (K, n_samples) = {expected}.")
        return self

    def _support(self, H):
        return H if self.support is None else jnp.where(self.support, H, 0.0)

    def numpyro_model(self, X, mask, rank: int, W=None):
        """NumPyro model of X (n_features, n_samples) given the fixed W (n_features, K)."""
        if W is None:
            raise ValueError("model 'refit' keeps W fixed: give the reference parts (W_fixed); "
                             "for de novo parts use model='poisson'.")
        n_samples = X.shape[1]
        totals = sample_totals(X, mask)
        share = numpyro.sample("share", dist.Gamma(self.share_shape, self.share_shape * rank)
                               .expand([rank]).to_event(1))
        shape = numpyro.sample("shape", dist.Gamma(self.shape_shape, self.shape_rate)
                               .expand([rank]).to_event(1))
        rate_T = shape / (share * totals[:, None])                      # (n_samples, K)
        with numpyro.plate("observation", n_samples, dim=-1):
            H_T = numpyro.sample("H", dist.Gamma(shape, rate_T).to_event(1),
                                 infer={"event_dims": ["component"]})
        observe(dist.Poisson(poisson_rate(W, self._support(H_T.T)).T), X, mask)

    def log_likelihood(self, X, W, H, extras=None):
        """Per-entry log p(X_ij | W, H), shape (n_features, n_samples)."""
        return poisson_log_likelihood(X, W, self._support(H))

    def init_extras(self, W, H, X, mask) -> dict:
        """share_k = mean_j H_kj / N_j, shape 0.5 (the start of the former refit)."""
        totals = sample_totals(X, mask)
        share = jnp.maximum(jnp.mean(H / totals, axis=1), jnp.finfo(H.dtype).tiny)
        return {"share": share, "shape": jnp.full(share.shape, 0.5, H.dtype)}


# --------------------------------------------------------------------- densities by hand
def log_joint(model: RefitPoisson, X, mask, W, H, share, shape):
    """log p(X, H, π, a | W): equals ``numpyro.infer.util.log_density`` of
    :meth:`RefitPoisson.numpyro_model` (H (K, n_samples), share and shape (K,))."""
    K = W.shape[1]
    totals = sample_totals(X, mask)
    prior = (jnp.sum(dist.Gamma(model.share_shape, model.share_shape * K).log_prob(share))
             + jnp.sum(dist.Gamma(model.shape_shape, model.shape_rate).log_prob(shape))
             + jnp.sum(dist.Gamma(shape[:, None], shape[:, None] / (share[:, None] * totals))
                       .log_prob(H)))
    return prior + jnp.sum(jnp.where(mask, model.log_likelihood(X, W, H), 0.0))


def h_conditional(model: RefitPoisson, S_H, exposure, share, shape, totals):
    """Gamma (shape, rate) of H | latent counts, π, a: (a_k + S_H, a_k / (π_k N_j) + E_kj),
    each (K, n_samples); S_H = Σ_i z_ijk, ``exposure`` E = Wᵀ M (K, n_samples). Exposures
    outside the support see no data (E = 0 there, and S_H is 0)."""
    if model.support is not None:
        exposure = jnp.where(model.support, exposure, 0.0)
    return (shape[:, None] + S_H,
            shape[:, None] / (share[:, None] * totals[None, :]) + exposure)


def _h_statistics(logH, totals):
    """(Σ_j H_kj / N_j, Σ_j log H_kj, Σ_j log N_j) of log H (K, n_samples)."""
    return (jnp.sum(jnp.exp(logH) / totals, axis=1), jnp.sum(logH, axis=1),
            jnp.sum(jnp.log(totals)))


def share_log_conditional(model: RefitPoisson, log_share, shape, logH, totals):
    """log p(log π_k | H, a) up to a constant, per part (K,): the share prior on the log scale
    (with its Jacobian) times the gamma densities of the part's exposures,

        α_π u − α_π K e^u − n a u − a Σ_j H_kj / N_j e^{−u},   u = log π_k.
    """
    K, n = logH.shape
    ratio, _, _ = _h_statistics(logH, totals)
    alpha, beta = model.share_shape, model.share_shape * K
    return (alpha - n * shape) * log_share - beta * jnp.exp(log_share) \
        - shape * ratio * jnp.exp(-log_share)


def _shape_terms(share, logH, totals):
    """C_k = Σ_j [log(H_kj / (π_k N_j)) − H_kj / (π_k N_j)] (≤ −n): the shape's sufficient
    statistic."""
    ratio, sum_log, sum_log_totals = _h_statistics(logH, totals)
    n = logH.shape[1]
    return sum_log - n * jnp.log(share) - sum_log_totals - ratio / share


def shape_log_conditional(model: RefitPoisson, log_shape, share, logH, totals):
    """log p(log a_k | H, π) up to a constant, per part (K,): the Gamma(α_a, β_a) prior on the
    log scale (with its Jacobian) times the gamma densities of the part's exposures,

        α_a u − β_a a + n (a log a − lgamma a) + a C_k,   a = e^u
    (:func:`_shape_terms` gives C_k)."""
    n = logH.shape[1]
    a = jnp.exp(log_shape)
    return (model.shape_shape * log_shape - model.shape_rate * a
            + n * (a * log_shape - gammaln(a)) + a * _shape_terms(share, logH, totals))


# ------------------------------------------------------------------- MAP in log space
class RefitData(NamedTuple):
    """X (n_features, n_samples), the mask as floats, the fixed W and the totals N_j."""

    X: jax.Array
    M: jax.Array
    W: jax.Array
    totals: jax.Array


class RefitMapState(NamedTuple):
    W: jax.Array       # (n_features, K), fixed
    H: jax.Array       # (K, n_samples)
    share: jax.Array   # (K,)
    shape: jax.Array   # (K,)
    loss: jax.Array    # −(log joint + Σ log H + Σ log π + Σ log a): the log-space objective


def log_space_loss(model, data: RefitData, H, share, shape):
    """The MAP's objective: minus the log density of (log H, log π, log a), i.e.
    −:func:`log_joint` − Σ log H − Σ log π − Σ log a."""
    mask = data.M > 0
    return -(log_joint(model, data.X, mask, data.W, H, share, shape)
             + jnp.sum(jnp.log(H)) + jnp.sum(jnp.log(share)) + jnp.sum(jnp.log(shape)))


def _floor(x):
    return jnp.maximum(x, jnp.finfo(x.dtype).tiny)


def _update_H(model, data: RefitData, H, share, shape):
    """MM update of H at fixed π, a: H ← (H ∘ Wᵀ(M ∘ X / W H) + a) / (Wᵀ M + a / (π N))
    (support-masked), the Poisson–gamma multiplicative update with log-space shape a + 1."""
    H_eff = model._support(H)
    ratio = data.M * data.X / poisson_rate(data.W, H_eff)
    gain = model._support(H * (data.W.T @ ratio))
    exposure = model._support(data.W.T @ data.M)
    rate = shape[:, None] / (share[:, None] * data.totals[None, :])
    return _floor((gain + shape[:, None]) / (exposure + rate))


def _update_share(model, H, shape, totals):
    """The exact maximiser of :func:`share_log_conditional`: the positive root of
    β π² − (α − n a) π − a S = 0, in a form without cancellation."""
    K, n = H.shape
    S = jnp.sum(H / totals, axis=1)
    alpha, beta = model.share_shape, model.share_shape * K
    b = alpha - n * shape
    root = jnp.sqrt(b * b + 4.0 * beta * shape * S)
    return _floor(jnp.where(b < 0, 2.0 * shape * S / (root - b), (b + root) / (2.0 * beta)))


def _update_shape(model, H, share, shape, totals):
    """Newton steps on the concave :func:`shape_log_conditional` (in log a, steps capped at 2),
    keeping the start wherever the steps did not raise it."""
    logH = jnp.log(H)
    n = H.shape[1]
    C = _shape_terms(share, logH, totals)
    density = lambda u: shape_log_conditional(model, u, share, logH, totals)
    u0 = jnp.log(shape)
    u = u0
    for _ in range(SHAPE_NEWTON_STEPS):
        a = jnp.exp(u)
        # d/du and d²/du² of α u − β a + n(a u − lgamma a) + a C
        grad = (model.shape_shape - model.shape_rate * a
                + n * a * (u + 1.0 - digamma(a)) + a * C)
        hess = (-model.shape_rate * a + n * a * (u + 2.0 - digamma(a) - a * polygamma(1, a))
                + a * C)
        step = jnp.where(hess < 0, -grad / jnp.minimum(hess, -1e-12), jnp.sign(grad))
        u = u + jnp.clip(step, -2.0, 2.0)
    return jnp.exp(jnp.where(density(u) >= density(u0), u, u0))


def _refit_map_step(state: RefitMapState, data: RefitData, model, n_steps, update_W: bool):
    """``n_steps`` coordinate-ascent updates (H, then π, then a); the loss never rises."""
    del update_W  # W is always fixed

    def one(_, s):
        H = _update_H(model, data, s.H, s.share, s.shape)
        share = _update_share(model, H, s.shape, data.totals)
        shape = _update_shape(model, H, share, s.shape, data.totals)
        return RefitMapState(s.W, H, share, shape, s.loss)

    state = jax.lax.fori_loop(0, n_steps, one, state)
    return state._replace(loss=log_space_loss(model, data, state.H, state.share, state.shape))


def _refit_data(X, mask, W) -> RefitData:
    M = jnp.asarray(mask).astype(X.dtype)
    return RefitData(jnp.where(mask, X, 0.0), M, jnp.asarray(W, X.dtype),
                     sample_totals(X, mask))


def _map_prepare(problem) -> RefitData:
    if problem.sparse:
        raise ValueError("model 'refit' takes dense X; pass X.toarray().")
    if problem.W_fixed is None:
        raise ValueError("model 'refit' keeps W fixed: the problem needs W_fixed.")
    return _refit_data(problem.X, problem.mask, problem.W_fixed)


def _map_init(W, H, data: RefitData, model) -> RefitMapState:
    """From H (K, n_samples; W is the fixed one): share and shape of :meth:`init_extras`."""
    H = _floor(jnp.asarray(H, data.X.dtype))
    extras = model.init_extras(data.W, H, data.X, data.M > 0)
    return RefitMapState(data.W, H, extras["share"], extras["shape"],
                         jnp.asarray(jnp.inf, data.X.dtype))


def _map_values(state: RefitMapState) -> dict:
    return {"W": state.W, "H": state.H, "share": state.share, "shape": state.shape}


def _map_describe(problem) -> dict:
    return {"algorithm": "coordinate ascent (MM for H, exact share, Newton shape)",
            "mode_space": "log"}


def _map_prepare_batched(X, mask, model):
    raise ValueError("model 'refit' keeps W fixed; its MAP is not batched over masks (rank "
                     "selection does not apply to it).")


REFIT_MAP = MapUpdate(
    prepare=_map_prepare, prepare_masked=_map_prepare_batched,
    init=_map_init, step=_refit_map_step, values=_map_values, describe=_map_describe)
register_capability(RefitPoisson, "map_update", REFIT_MAP)
