r"""Automatic relevance determination (ARD) of the rank: Poisson NMF with a relevance per
component (Tan & Févotte 2013, "Automatic relevance determination in nonnegative matrix
factorization with the β-divergence"; Brouwer et al.'s BNMTF_ARD).

.. math::

    \lambda_k \sim \mathrm{InvGamma}(a_\lambda, b_\lambda), \quad
    W_{ik} \sim \mathrm{Exponential}(\text{mean } \lambda_k), \quad
    H_{kj} \sim \mathrm{Exponential}(\text{mean } \lambda_k), \quad
    X_{ij} \sim \mathrm{Poisson}\big((WH)_{ij}\big).

A component the data do not need has its relevance, and with it both its part and its
activities, shrunk towards zero. Fitted from ``max_rank`` components, the number of components
that carry a share of the expected counts is the effective rank, and its posterior
distribution is the share of posterior draws with each number of active components
(:meth:`bnmf.Fit.rank_posterior`).

Given latent counts :math:`z_{ijk}` (each count split over components in proportion to
:math:`W_{ik} H_{kj}`), every conditional is closed-form:

.. math::

    W_{ik} \mid \cdot \sim \mathrm{Gamma}\big(1 + \textstyle\sum_j z_{ijk},\;
        1/\lambda_k + \sum_j M_{ij} H_{kj}\big), \qquad
    \lambda_k \mid \cdot \sim \mathrm{InvGamma}\big(a_\lambda + F + N,\;
        b_\lambda + \textstyle\sum_i W_{ik} + \sum_j H_{kj}\big)

(H like W), which :func:`gibbs_sweep` draws in turn.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ..data import Data
from . import sampling
from .base import hyperparameter_pytree, observe, observed_mean, sample_H, sample_W
from .poisson import poisson_log_likelihood, poisson_rate

__all__ = ["ARDPoisson", "Tokens", "active_components", "gibbs_sweep", "log_joint", "tokens_of"]


@hyperparameter_pytree
@dataclass(frozen=True)
class ARDPoisson:
    r"""Poisson NMF with automatic relevance determination of the components.

    .. math::

        \lambda_k \sim \mathrm{InvGamma}(a, b), \quad
        W_{ik}, H_{kj} \sim \mathrm{Exponential}(\text{mean } \lambda_k), \quad
        X_{ij} \sim \mathrm{Poisson}((WH)_{ij})

    Fit it with ``rank=max_rank``; :meth:`bnmf.Fit.rank_posterior` then gives the posterior of
    the number of active components. Left as ``None``, ``b`` is set from the data so that a
    component at the prior mean relevance λ₀ = b / (a − 1) carries ``inactive_share`` of the
    expected count: F N λ₀² = ``inactive_share`` · F N X̄, i.e. λ₀ = sqrt(inactive_share · X̄).
    A component the data do not need falls back to about that size (in the posterior a
    relevance reverts to its prior where nothing pulls it), while a needed one's relevance is
    set by its F + N entries. ``inactive_share`` must sit well below the activity threshold of
    :meth:`bnmf.Fit.rank_posterior` (1%): a prior-reverted component carries share
    ``inactive_share`` · (λ/λ₀)², and under InvGamma(a = 2) P(λ ≥ 10 λ₀) = 1 − 1.1 e^(−0.1)
    ≈ 0.005, so at 1e-4 a spare component is counted active in ~0.5% of draws; at 1e-2 (the
    threshold itself) it was P(λ ≥ λ₀) = 1 − 2/e ≈ 0.26, and ten spare components added ~2.6
    to the count. Tan & Févotte 2013's λ₀ = sqrt(X̄ / K) is larger still.

    Parameters
    ----------
    a : float
        Inverse-gamma shape of the relevances (> 1 for a finite prior mean); small values let
        relevances spread further.
    b : float, optional
        Inverse-gamma scale; None sets it from the data (above).
    inactive_share : float
        The share of the expected count of a component at the prior mean relevance.
    """

    a: float = 2.0
    b: float | None = None
    inactive_share: float = 1e-4

    name = "ard"
    # what method=None runs, and why (fit.info["method_choice"])
    preferred_method = ("gibbs", ("gibbs: the ARD model's exact conjugate sampler; "
                        "fit.rank_posterior() is the share of its draws"))
    likelihood = "poisson"
    needs_counts = True
    extra_sites = ("relevance",)

    def __post_init__(self):
        if not self.a > 1:
            raise ValueError(f"ARDPoisson.a must be above 1 (a finite prior mean relevance), "
                             f"got {self.a!r}.")
        if self.b is not None and not self.b > 0:
            raise ValueError(f"ARDPoisson.b must be positive, got {self.b!r}.")
        if not 0 < self.inactive_share < 1:
            raise ValueError(f"ARDPoisson.inactive_share must lie in (0, 1), got "
                             f"{self.inactive_share!r}.")

    def resolve(self, data: Data, rank: int) -> ARDPoisson:
        """Fill an unset b: prior mean relevance = sqrt(inactive_share · mean(X))."""
        if self.b is not None:
            return self
        mean = observed_mean(data)
        return dataclasses.replace(self, b=(self.a - 1.0) * math.sqrt(self.inactive_share * mean))

    def numpyro_model(self, X, mask, rank: int, W=None):
        """NumPyro model of X (n_features, n_samples); ``W`` fixed if given."""
        n_features, n_samples = X.shape
        relevance = numpyro.sample(
            "relevance", dist.InverseGamma(self.a, self.b).expand([rank]).to_event(1),
            infer={"event_dims": ["component"]})
        prior = dist.Exponential(1.0 / relevance)
        W = sample_W(prior, n_features, rank, W)
        H_T = sample_H(prior, n_samples, rank)
        observe(dist.Poisson(poisson_rate(W, H_T.T).T), X, mask)

    def log_likelihood(self, X, W, H, extras=None):
        """Per-entry log p(X_ij | W, H), shape (n_features, n_samples)."""
        return poisson_log_likelihood(X, W, H)

    def init_extras(self, W, H, X, mask) -> dict:
        """Starting relevances: each component's mean factor entry."""
        n = W.shape[0] + H.shape[1]
        return {"relevance": (W.sum(0) + H.sum(1)) / n}


# ---------------------------------------------------------------- the conjugate Gibbs sweep
class Tokens(NamedTuple):
    """The observed non-zero counts as tokens: one per unit of count, with its entry's row and
    column (T,). Built once on the host; a sweep assigns every token to a component."""

    row: jax.Array
    col: jax.Array


def tokens_of(X: np.ndarray, mask: np.ndarray) -> Tokens:
    """Tokens of the observed counts of X (n_features, n_samples)."""
    counts = np.where(mask, np.rint(X), 0).astype(np.int64)
    rows, cols = np.nonzero(counts)
    reps = counts[rows, cols]
    return Tokens(jnp.asarray(np.repeat(rows, reps), jnp.int32),
                  jnp.asarray(np.repeat(cols, reps), jnp.int32))


def split_counts(key, tokens: Tokens, W, H):
    """Latent counts summed per row and per column: (Σ_j z_ijk (F, K), Σ_i z_ijk (N, K)).

    Each token joins component k with probability W_ik H_kj / (WH)_ij, found by comparing one
    uniform with the cumulative weights of its entry (exact; O(tokens · rank))."""
    weights = W[tokens.row] * H.T[tokens.col]
    cumulative = jnp.cumsum(weights, axis=1)
    u = jax.random.uniform(key, tokens.row.shape, W.dtype) * cumulative[:, -1]
    component = jnp.sum(u[:, None] > cumulative, axis=1)
    one_hot = jax.nn.one_hot(jnp.minimum(component, W.shape[1] - 1), W.shape[1], dtype=W.dtype)
    return (jax.ops.segment_sum(one_hot, tokens.row, num_segments=W.shape[0]),
            jax.ops.segment_sum(one_hot, tokens.col, num_segments=H.shape[1]))


def _floor(x):
    return jnp.maximum(x, jnp.finfo(x.dtype).tiny)


def gibbs_sweep(key, model: ARDPoisson, tokens: Tokens, M, W, H, relevance):
    """One Gibbs sweep: the latent split, then W, H and the relevances from their full
    conditionals. M (n_features, n_samples) is the mask as 0/1 floats."""
    key_z, key_w, key_h, key_l = jax.random.split(key, 4)
    z_W, z_H = split_counts(key_z, tokens, W, H)
    W = _floor(sampling.gamma(key_w, 1.0 + z_W) / (1.0 / relevance + (M @ H.T)))
    H = _floor(sampling.gamma(key_h, 1.0 + z_H.T) / (1.0 / relevance[:, None] + (W.T @ M)))
    shape = model.a + W.shape[0] + H.shape[1]
    scale = model.b + W.sum(0) + H.sum(1)
    relevance = scale / sampling.gamma(key_l, jnp.full_like(scale, shape))
    return W, H, relevance


def map_update(model: ARDPoisson, X, M, W, H, relevance):
    """One majorize–minimize update of the MAP (Tan & Févotte 2013's ℓ1-ARD for the KL
    divergence): multiplicative updates of W and H with the exponential priors' 1/λ_k in the
    denominators, then each relevance at its conditional mode
    λ_k = (b + Σ_i W_ik + Σ_j H_kj) / (a + 1 + F + N). Never lowers :func:`log_joint`."""
    ratio = M * X / jnp.maximum(W @ H, jnp.finfo(W.dtype).tiny)
    W = _floor(W * (ratio @ H.T) / (M @ H.T + 1.0 / relevance))
    ratio = M * X / jnp.maximum(W @ H, jnp.finfo(W.dtype).tiny)
    H = _floor(H * (W.T @ ratio) / (W.T @ M + 1.0 / relevance[:, None]))
    relevance = (model.b + W.sum(0) + H.sum(1)) / (model.a + 1.0 + W.shape[0] + H.shape[1])
    return W, H, relevance


def log_joint(model: ARDPoisson, X, M, W, H, relevance):
    """log p(X, W, H, λ): equals ``numpyro.infer.util.log_density`` of
    :meth:`ARDPoisson.numpyro_model`."""
    prior = (jnp.sum(dist.InverseGamma(model.a, model.b).log_prob(relevance))
             + jnp.sum(dist.Exponential(1.0 / relevance).log_prob(W))
             + jnp.sum(dist.Exponential(1.0 / relevance[:, None]).log_prob(H)))
    return prior + jnp.sum(M * poisson_log_likelihood(X, W, H))


def component_shares(W, H):
    """Each component's share of the expected total count, Σ_i W_ik Σ_j H_kj / Σ_ij (WH)_ij;
    W (..., F, K), H (..., K, N) -> (..., K)."""
    mass = W.sum(axis=-2) * H.sum(axis=-1)
    return mass / np.maximum(mass.sum(axis=-1, keepdims=True), 1e-300)


def active_components(W, H, min_share: float = 0.01):
    """Number of active components per draw: those carrying at least ``min_share`` of the
    expected total count. W (..., F, K), H (..., K, N) -> (...,) ints."""
    return (component_shares(W, H) >= min_share).sum(axis=-1)
