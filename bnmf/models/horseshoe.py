"""Regularized-horseshoe priors for sparse parts (Piironen & Vehtari 2017)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from ..data import Data
from .base import (
    H_SITE,
    W_SITE,
    Site,
    balanced_mean,
    hyperparameter_pytree,
    observe,
    observed_std,
    register_capability,
    sample_H,
    sample_W,
)
from .gaussian import (
    GaussianHalfNormal,
    gaussian_log_likelihood,
    half_normal_scale_for_mean,
    rms_residual,
)
from .poisson import PoissonGamma, poisson_log_likelihood, poisson_rate


def regularized_scale(tau, lam, c2):
    """Regularized horseshoe scale tau·lambda_tilde with lambda_tilde² = c²λ² / (c² + τ²λ²)."""
    tau_lam_sq = (tau * lam) ** 2
    return jnp.sqrt(c2 * tau_lam_sq / (c2 + tau_lam_sq))


def _sample_horseshoe_scales(suffix: str, plate: str, size: int, rank: int, global_scale, slab_scale,
                             slab_df):
    """Sample per-component tau and c², and per-entry lambda in ``plate``; return the scales."""
    tau = numpyro.sample(
        f"tau_{suffix}", dist.HalfCauchy(global_scale).expand([rank]).to_event(1)
    )
    c2 = numpyro.sample(
        f"c2_{suffix}",
        dist.InverseGamma(0.5 * slab_df, 0.5 * slab_df * slab_scale**2).expand([rank]).to_event(1),
    )
    with numpyro.plate(plate, size, dim=-1):
        lam = numpyro.sample(
            f"lambda_{suffix}",
            dist.HalfCauchy(1.0).expand([size, rank]).to_event(1),
            infer={"event_dims": ["component"]},
        )
    return regularized_scale(tau, lam, c2)


@hyperparameter_pytree
@dataclass(frozen=True)
class Horseshoe:
    r"""Sparse NMF with regularized-horseshoe priors on ``W`` (and optionally ``H``).

    .. math::

        \tau_k \sim \mathrm{HalfCauchy}(\tau_0), \quad \lambda_{ik} \sim \mathrm{HalfCauchy}(1),
        \quad c_k^2 \sim \mathrm{InvGamma}(\nu/2, \nu s^2/2),

        \tilde\lambda_{ik}^2 = \frac{c_k^2 \lambda_{ik}^2}{c_k^2 + \tau_k^2 \lambda_{ik}^2}, \quad
        W_{ik} \sim \mathrm{HalfNormal}(\tau_k \tilde\lambda_{ik})

    with one global scale per component (each part has its own sparsity). ``H`` gets the
    likelihood's usual prior (gamma for ``poisson``, half-normal for ``gaussian``) unless
    ``sparse_H``, when it gets the same horseshoe over observations. The likelihood is
    :class:`~bnmf.models.PoissonGamma`'s or :class:`~bnmf.models.GaussianHalfNormal`'s, with
    :math:`\sigma \sim \mathrm{HalfNormal}(s_\sigma)` for the Gaussian.

    Empirical Bayes defaults: the slab scale :math:`s` is twice the balanced factor mean
    :math:`\sqrt{\bar X/K}`, and :math:`\tau_0 = s \cdot p/(1-p)` for an expected fraction
    ``expected_nonzero`` = p of non-zero entries (Piironen & Vehtari's rule, eq. 3.12).

    Parameters
    ----------
    likelihood : {"poisson", "gaussian"}
    sparse_H : bool
        Put the horseshoe on H as well.
    expected_nonzero : float in (0, 1)
        Prior guess of the fraction of clearly non-zero entries in each part.
    slab_df : float
        Degrees of freedom ν of the slab.
    slab_scale, global_scale, scale_sigma : float, optional
        Override the empirical-Bayes values.
    """

    likelihood: str = "poisson"
    sparse_H: bool = False
    expected_nonzero: float = 0.25
    slab_df: float = 4.0
    slab_scale: float | None = None
    global_scale: float | None = None
    factor_mean: float | None = None
    scale_sigma: float | None = None

    name = "horseshoe"
    nuts_calibrated = False  # its funnel geometry's NUTS coverage was not measured

    def __post_init__(self):
        if self.likelihood not in ("poisson", "gaussian"):
            raise ValueError(
                f"Horseshoe likelihood must be 'poisson' or 'gaussian', got {self.likelihood!r}."
            )
        if not 0 < self.expected_nonzero < 1:
            raise ValueError(
                f"expected_nonzero must lie in (0, 1), got {self.expected_nonzero!r}."
            )
        for field in ("slab_df", "slab_scale", "global_scale", "factor_mean", "scale_sigma"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"Horseshoe.{field} must be positive, got {value!r}.")

    @property
    def needs_counts(self) -> bool:
        return self.likelihood == "poisson"

    @property
    def extra_sites(self) -> tuple[str, ...]:
        sites = ("tau_W", "c2_W", "lambda_W")
        if self.sparse_H:
            sites += ("tau_H", "c2_H", "lambda_H")
        if self.likelihood == "gaussian":
            sites += ("sigma",)
        return sites

    def sites(self, rank=None) -> tuple:
        """W, H, the horseshoe scales of W (and of H with ``sparse_H``), sigma (Gaussian)."""
        sites = [W_SITE, H_SITE, Site("tau_W", ("component",)), Site("c2_W", ("component",)),
                 Site("lambda_W", ("feature", "component"))]
        if self.sparse_H:
            sites += [Site("tau_H", ("component",)), Site("c2_H", ("component",)),
                      Site("lambda_H", ("observation", "component"))]
        if self.likelihood == "gaussian":
            sites.append(Site("sigma", ()))
        return tuple(sites)

    def resolve(self, data: Data, rank: int) -> Horseshoe:
        """Fill unset scales from the data."""
        mean = balanced_mean(data, rank)
        slab = self.slab_scale if self.slab_scale is not None else 2.0 * mean
        p = self.expected_nonzero
        return dataclasses.replace(
            self,
            factor_mean=self.factor_mean if self.factor_mean is not None else mean,
            slab_scale=slab,
            global_scale=self.global_scale if self.global_scale is not None else slab * p / (1 - p),
            scale_sigma=(
                self.scale_sigma if self.scale_sigma is not None else observed_std(data)
            ),
        )

    def _dense_prior(self):
        if self.likelihood == "poisson":
            return dist.Gamma(1.0, 1.0 / self.factor_mean)
        return dist.HalfNormal(half_normal_scale_for_mean(self.factor_mean))

    def numpyro_model(self, X, mask, rank: int, W=None):
        """NumPyro model of X (n_features, n_samples); pass ``W`` to keep it fixed."""
        n_features, n_samples = X.shape
        hs = (self.global_scale, self.slab_scale, self.slab_df)
        if W is None:
            scale_W = _sample_horseshoe_scales("W", "feature", n_features, rank, *hs)
            W = sample_W(dist.HalfNormal(scale_W), n_features, rank)
        if self.sparse_H:
            scale_H = _sample_horseshoe_scales("H", "observation", n_samples, rank, *hs)
            H_T = sample_H(dist.HalfNormal(scale_H), n_samples, rank)
        else:
            H_T = sample_H(self._dense_prior(), n_samples, rank)
        if self.likelihood == "poisson":
            observe(dist.Poisson(poisson_rate(W, H_T.T).T), X, mask)
        else:
            sigma = numpyro.sample("sigma", dist.HalfNormal(self.scale_sigma))
            observe(dist.Normal((W @ H_T.T).T, sigma), X, mask)

    def log_likelihood(self, X, W, H, extras):
        """Per-entry log-likelihood, shape (n_features, n_samples)."""
        if self.likelihood == "poisson":
            return poisson_log_likelihood(X, W, H)
        return gaussian_log_likelihood(X, W, H, extras["sigma"])

    def init_extras(self, W, H, X, mask) -> dict:
        """Initial scales consistent with initial factors W (n_features, rank), H (rank, n)."""
        values = {}
        for suffix, factor in (("W", W), ("H", H.T)):
            if suffix == "H" and not self.sparse_H:
                continue
            values[f"tau_{suffix}"] = jnp.sqrt(jnp.mean(factor**2, axis=0)) + 1e-12
            values[f"c2_{suffix}"] = jnp.full(factor.shape[1], self.slab_scale**2)
            values[f"lambda_{suffix}"] = jnp.ones_like(factor)
        if self.likelihood == "gaussian":
            values["sigma"] = jnp.maximum(rms_residual(W, H, X, mask), 1e-3 * self.scale_sigma)
        return values


def _start_model(model: Horseshoe):
    """The flat-prior model of the horseshoe's likelihood, whose closed-form MAP starts the
    horseshoe's MAP (and so its SVI and NUTS): the scales then start from factors that fit."""
    if model.likelihood == "gaussian":
        return GaussianHalfNormal(scale_W=1e15, scale_H=1e15, scale_sigma=1e15)
    return PoissonGamma(a=1.0, rate_W=1e-15, rate_H=1e-15)


register_capability(Horseshoe, "start_model", _start_model)
