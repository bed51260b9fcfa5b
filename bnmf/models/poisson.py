"""Poisson likelihood with gamma priors on both factors (Cemgil 2009)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import gammaln

from ..data import Data
from .base import balanced_mean, hyperparameter_pytree, observe, sample_H, sample_W


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
    extra_sites = ()

    def __post_init__(self):
        for field in ("a", "rate_W", "rate_H"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"PoissonGamma.{field} must be positive, got {value!r}.")

    def resolve(self, data: Data, rank: int) -> "PoissonGamma":
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
