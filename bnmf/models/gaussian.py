"""Gaussian likelihood with half-normal priors on both factors."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.stats import norm

from ..data import Data
from .base import balanced_mean, hyperparameter_pytree, observe, observed_std, sample_H, sample_W


def gaussian_log_likelihood(X, W, H, sigma):
    """Per-entry Normal(W @ H, sigma) log-density, shape (n_features, n_samples)."""
    return norm.logpdf(X, W @ H, sigma)


def residual_sq_norm(X_sq_norm, cross, WtW, HHt):
    """‖X − WH‖² = ‖X‖² − 2⟨X, WH⟩ + ⟨WᵀW, HHᵀ⟩ from rank-sized products, without W H.

    ``cross`` is ⟨X, WH⟩ (e.g. Σ W ∘ XHᵀ); floored at 0 against rounding."""
    return jnp.maximum(X_sq_norm - 2.0 * cross + jnp.sum(WtW * HHt), 0.0)


@jax.jit
def rms_residual(W, H, X, mask):
    """Root mean square of the observed residuals X − W H (W (n_features, rank), H (rank,
    n_samples), X and the bool mask (n_features, n_samples)).

    With every entry observed, :func:`residual_sq_norm` needs no W H: 18 ms at 5,000 × 5,000
    against 126 ms compiled and 340 ms eagerly for the masked sum. (Under ``vmap`` over masks
    both branches run, as one ``select``.)"""

    def full():
        rss = residual_sq_norm(jnp.sum(X * X), jnp.sum(W * (X @ H.T)), W.T @ W, H @ H.T)
        return rss, jnp.asarray(X.size, X.dtype)

    def masked():
        return (jnp.sum(jnp.where(mask, X - W @ H, 0.0) ** 2),
                jnp.sum(mask).astype(X.dtype))

    rss, n_observed = jax.lax.cond(jnp.all(mask), full, masked)
    return jnp.sqrt(rss / n_observed)


def half_normal_scale_for_mean(mean: float) -> float:
    """The half-normal scale whose mean is ``mean`` (E = scale·sqrt(2/π))."""
    return mean * math.sqrt(math.pi / 2.0)


@hyperparameter_pytree
@dataclass(frozen=True)
class GaussianHalfNormal:
    r"""Gaussian NMF with half-normal priors.

    .. math::

        W_{ik} \sim \mathrm{HalfNormal}(s_W), \quad H_{kj} \sim \mathrm{HalfNormal}(s_H), \quad
        \sigma \sim \mathrm{HalfNormal}(s_\sigma), \quad
        X_{ij} \sim \mathcal{N}\big((WH)_{ij}, \sigma^2\big)

    Left as ``None``, the scales come from the data (empirical Bayes): ``s_W`` and ``s_H`` give
    each factor the prior mean :math:`\sqrt{\bar X / K}`, so :math:`E[(WH)_{ij}] = \bar X`, and
    ``s_sigma`` is the standard deviation of the observed entries. Any data scale works untuned.
    """

    scale_W: float | None = None
    scale_H: float | None = None
    scale_sigma: float | None = None

    name = "gaussian"
    likelihood = "gaussian"
    needs_counts = False
    extra_sites = ("sigma",)

    def __post_init__(self):
        for field in ("scale_W", "scale_H", "scale_sigma"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"GaussianHalfNormal.{field} must be positive, got {value!r}.")

    def resolve(self, data: Data, rank: int) -> "GaussianHalfNormal":
        """Fill unset scales from the data."""
        scale = half_normal_scale_for_mean(balanced_mean(data, rank))
        return dataclasses.replace(
            self,
            scale_W=self.scale_W if self.scale_W is not None else scale,
            scale_H=self.scale_H if self.scale_H is not None else scale,
            scale_sigma=self.scale_sigma if self.scale_sigma is not None else observed_std(data),
        )

    def numpyro_model(self, X, mask, rank: int, W=None):
        """NumPyro model of X (n_features, n_samples); pass ``W`` to keep it fixed."""
        n_features, n_samples = X.shape
        W = sample_W(dist.HalfNormal(self.scale_W), n_features, rank, W)
        H_T = sample_H(dist.HalfNormal(self.scale_H), n_samples, rank)
        sigma = numpyro.sample("sigma", dist.HalfNormal(self.scale_sigma))
        observe(dist.Normal((W @ H_T.T).T, sigma), X, mask)

    def log_likelihood(self, X, W, H, extras):
        """Per-entry log p(X_ij | W, H, sigma), shape (n_features, n_samples)."""
        return gaussian_log_likelihood(X, W, H, extras["sigma"])

    def init_extras(self, W, H, X, mask) -> dict:
        """Initial noise scale: the root mean square residual of the initial factors."""
        return {"sigma": jnp.maximum(rms_residual(W, H, X, mask), 1e-3 * self.scale_sigma)}
