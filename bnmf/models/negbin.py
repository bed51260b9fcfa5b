"""Negative-binomial likelihood with gamma priors on both factors: counts with overdispersion.

The negative binomial is the gamma–Poisson mixture: ``X_ij ~ Poisson(λ_ij)`` with
``λ_ij ~ Gamma(φ, φ / μ_ij)``, so ``E X = μ = (WH)_ij`` and ``Var X = μ + μ²/φ``: as φ → ∞ it is
the Poisson model, at small φ the variance grows with the square of the mean. Mutational
catalogues and single-cell counts are overdispersed, and a Poisson (KL) fit then explains the
excess variance with extra components (Pelizzola et al. 2023).

Closed-form MAP (:func:`negbin_mm_chunk`): with φ fixed, ``-log NB(x | μ, φ)`` is
``-x log μ + (x + φ) log(φ + μ)`` plus terms free of μ; Jensen's inequality majorizes the
convex first term as for Poisson–KL, and the tangent at the current μ majorizes the concave
second one (Gouvert, Oberlin & Févotte 2020, "Negative binomial matrix factorization", IEEE
SPL 27:815). Minimizing the majorizer with the gamma prior folded in gives multiplicative
updates that never increase the negative log joint::

    W ← (W ∘ [(M ∘ X / μ) Hᵀ] + a − 1) / ([M ∘ (X + φ) / (φ + μ)] Hᵀ + b_W)

(the Poisson update with the denominator ``Σ_j H_kj`` weighted by ``(x + φ)/(φ + μ)``), and
the same for H. φ has no closed form: each group (feature, sample, or the single shared φ) is
separable given W, H, and gets a safeguarded Newton step in log φ that is kept only where it
lowers that group's objective, so the whole update stays monotone.

Exact posterior draws (``method="gibbs"``, the ``"gibbs_sweep"`` capability registered in
:mod:`bnmf.inference.gibbs_negbin`): the same mixture with a multiplier g_ij per entry makes
every conditional a known law given g (Poisson–gamma NMF with entries weighted by g), and φ is
drawn with g integrated out by a slice draw of :func:`dispersion_objective`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import lax
from jax.scipy.special import betaln, digamma, gammaln, polygamma, xlogy

from ..data import Data
from .base import (
    H_SITE,
    W_SITE,
    MapUpdate,
    Site,
    balanced_mean,
    hyperparameter_pytree,
    observe,
    observed_mean,
    register_capability,
    sample_H,
    sample_W,
)
from .poisson import RELAXATION, relaxed_update

DISPERSIONS = ("feature", "sample", "shared")
# Dims of φ after the draw dims, per dispersion (ArviZ names: samples are "observation").
PHI_DIMS = {"feature": ("feature",), "sample": ("observation",), "shared": ()}
# Empirical-Bayes prior mean of φ as a multiple of the mean observed count: a priori the
# variance at the mean count is 1% above Poisson's (μ²/φ = μ/100), but the exponential-like
# prior leaves strong overdispersion (φ ≈ 1) a few nats away, which 100 observations outweigh.
PHI_PRIOR_MEAN_PER_COUNT = 100.0
# Largest Newton step in log φ per update (a factor e² in φ).
_MAX_LOG_PHI_STEP = 2.0


# ------------------------------------------------------------------------------- pure math
def negbin_mean(W, H):
    """NB mean W @ H (n_features, n_samples), floored at √tiny so that φ/μ stays finite."""
    mean = W @ H
    return jnp.maximum(mean, jnp.sqrt(jnp.finfo(mean.dtype).tiny))


def broadcast_dispersion(phi, dispersion: str):
    """φ shaped to broadcast against (n_features, n_samples): (F, 1), (1, N) or scalar."""
    if dispersion == "feature":
        return phi[:, None]
    if dispersion == "sample":
        return phi[None, :]
    return phi


def group_sum(values, dispersion: str):
    """Sum of per-entry ``values`` (n_features, n_samples) within each φ group: (F,), (N,) or
    a scalar."""
    if dispersion == "feature":
        return jnp.sum(values, axis=1)
    if dispersion == "sample":
        return jnp.sum(values, axis=0)
    return jnp.sum(values)


# From this φ on, float64 takes log Γ(x + φ) − log Γ(φ) by Stirling's series (below it the
# log-gamma difference is exact to ~1e-9 for counts up to 10⁵; above it, it loses digits).
_STIRLING_FROM = 1e4


def _stirling_remainder(z):
    """log Γ(z) − [(z − ½) log z − z + ½ log 2π] for z ≥ 10⁴ (series error below 1e-28)."""
    r = 1.0 / z
    r2 = r * r
    return r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 / 1260.0))


def log_rising_factorial_ratio(X, phi):
    """log Γ(x + φ) − log Γ(φ) − log x! per entry, accurate in the array's precision.

    In float32 as ``−log B(φ, x + 1) − log(φ + x)``, whose log-beta keeps its digits where a
    log-gamma difference loses all of them (each log-gamma is ~10⁷ at φ ≈ 10⁶). In float64,
    where JAX's log-beta is off by up to ~1e-6 (B(0.5, 8): 5.6e-7), as the log-gamma
    difference, and from φ = 10⁴ on as Stirling's form of it,
    ``(φ − ½) log1p(x/φ) + x log(x + φ) − x`` plus the remainders, which cancels nothing."""
    if jnp.result_type(X, phi) != jnp.float64:
        return -betaln(phi, X + 1.0) - jnp.log(phi + X)
    large = jnp.maximum(phi, _STIRLING_FROM)
    stirling = ((large - 0.5) * jnp.log1p(X / large) + xlogy(X, X + large) - X
                + _stirling_remainder(X + large) - _stirling_remainder(large))
    direct = gammaln(X + phi) - gammaln(phi)
    return jnp.where(phi >= _STIRLING_FROM, stirling, direct) - gammaln(X + 1.0)


def negbin_log_likelihood(X, mean, phi):
    """Per-entry log NB(X | mean, φ) with Var = mean + mean²/φ; ``phi`` broadcasts against X.

    ``φ log(φ/(φ + μ))`` is taken as ``−φ log1p(μ/φ)`` (finite as φ → ∞, where the density is
    Poisson's) and ``x log(μ/(φ + μ))`` as two logs (finite at μ ≈ 0)."""
    return (log_rising_factorial_ratio(X, phi) - phi * jnp.log1p(mean / phi)
            + xlogy(X, mean) - xlogy(X, phi + mean))


def _dispersion_derivatives(X, mean, phi):
    """First and second derivatives in φ of :func:`negbin_log_likelihood`, per entry."""
    d1 = digamma(X + phi) - digamma(phi) - jnp.log1p(mean / phi) + (mean - X) / (phi + mean)
    d2 = (polygamma(1, X + phi) - polygamma(1, phi) + mean / (phi * (phi + mean))
          - (mean - X) / (phi + mean) ** 2)
    return d1, d2


def gamma_log_prob(x, shape, rate, log_space=False):
    """Per-entry Gamma(shape, rate) log-density of x; of log x (Jacobian x) when
    ``log_space`` (a bool, or a traced one)."""
    power = jnp.where(log_space, shape, shape - 1.0)
    return xlogy(power, x) - rate * x + shape * jnp.log(rate) - gammaln(shape)


def gamma_log_density(x, shape, rate, log_space=False):
    """Sum of :func:`gamma_log_prob` over the entries of x."""
    return jnp.sum(gamma_log_prob(x, shape, rate, log_space))


def dispersion_objective(X, M, mean, phi, dispersion: str, phi_shape, phi_rate):
    """Per-group −[Σ M log NB + log p(φ) + log φ]: the part of the MAP objective that
    depends on φ, with φ's mode taken over log φ (the Jacobian log φ, as the generic MAP takes
    every scale). Shape of φ."""
    ll = jnp.where(M, negbin_log_likelihood(X, mean, broadcast_dispersion(phi, dispersion)), 0.0)
    return -(group_sum(ll, dispersion) + gamma_log_prob(phi, phi_shape, phi_rate, log_space=True))


def factor_log_space(model):
    """Whether the MAP of W and H is taken over their logs: for gamma shape ``a`` below 1,
    whose density is unbounded at 0 (as for ``poisson``). Traceable (``a`` may be traced)."""
    return model.a < 1.0


def negbin_neg_log_joint(W, H, phi, X, M, model):
    """The MAP objective −log p(X, W, H, φ) − Σ log φ (masked entries excluded).

    W (n_features, rank), H (rank, n_samples), φ of the dispersion's shape, X and the bool
    mask M (n_features, n_samples). The factors' density is the constrained one, or that of
    log W, log H for gamma shape below 1 (:func:`factor_log_space`)."""
    mean = negbin_mean(W, H)
    return (jnp.sum(dispersion_objective(X, M, mean, phi, model.dispersion, model.phi_shape,
                                         model.phi_rate))
            + negbin_prior_loss(W, H, model))


def _mm_weights(X, Mf, mean, phi_b):
    """(M X / μ, M (X + φ) / (φ + μ)): the numerator and denominator weights of the MM."""
    return Mf * X / mean, Mf * (X + phi_b) / (phi_b + mean)


def negbin_update_W(W, H, phi, X, Mf, model):
    """One majorize–minimize update of W (n_features, rank) with H and φ fixed."""
    ratio, weight = _mm_weights(X, Mf, negbin_mean(W, H), broadcast_dispersion(phi, model.dispersion))
    power = jnp.where(factor_log_space(model), model.a, model.a - 1.0)
    return (W * (ratio @ H.T) + power) / (weight @ H.T + model.rate_W)


def negbin_update_H(W, H, phi, X, Mf, model):
    """One majorize–minimize update of H (rank, n_samples) with W and φ fixed."""
    ratio, weight = _mm_weights(X, Mf, negbin_mean(W, H), broadcast_dispersion(phi, model.dispersion))
    power = jnp.where(factor_log_space(model), model.a, model.a - 1.0)
    return (H * (W.T @ ratio) + power) / (W.T @ weight + model.rate_H)


def negbin_update_dispersion(W, H, phi, X, M, model):
    """A safeguarded Newton step in log φ per group, with W and H fixed.

    Of the step, a quarter of it and no step, each group keeps whichever has the lowest
    :func:`dispersion_objective`, so the objective never rises. Returns (φ, that per-group
    objective)."""
    dispersion = model.dispersion
    mean = negbin_mean(W, H)
    d1, d2 = _dispersion_derivatives(X, mean, broadcast_dispersion(phi, dispersion))
    s1 = group_sum(jnp.where(M, d1, 0.0), dispersion)
    s2 = group_sum(jnp.where(M, d2, 0.0), dispersion)
    # derivatives of the objective F(u), u = log φ: −φ s1 − shape + rate φ and its derivative
    grad = -phi * s1 - model.phi_shape + model.phi_rate * phi
    curv = -phi * s1 - phi**2 * s2 + model.phi_rate * phi
    newton = -grad / jnp.where(curv > 0, curv, 1.0)
    step = jnp.where(curv > 0, newton, -jnp.sign(grad))  # downhill where F is not convex
    step = jnp.clip(step, -_MAX_LOG_PHI_STEP, _MAX_LOG_PHI_STEP)
    objective = partial(dispersion_objective, X, M, mean, dispersion=dispersion,
                        phi_shape=model.phi_shape, phi_rate=model.phi_rate)
    best_phi, best = phi, objective(phi=phi)
    for fraction in (1.0, 0.25):
        trial_phi = phi * jnp.exp(fraction * step)
        trial = objective(phi=trial_phi)
        better = trial < best  # NaN never wins
        best_phi, best = jnp.where(better, trial_phi, best_phi), jnp.where(better, trial, best)
    return best_phi, best


def negbin_update_factors(W, H, phi, X, M, model, update_W: bool = True, relaxation=1.0):
    """One MM update of W (unless not ``update_W``), then of H, with φ fixed → (W, H).

    ``relaxation`` ω ≠ 1 over-relaxes each, A ← A (A_mm / A)^ω (as the Poisson updates:
    :func:`~bnmf.models.poisson.relaxed_update`); only ω = 1 is monotone by construction."""
    Mf = M.astype(X.dtype)
    if update_W:
        W = relaxed_update(W, negbin_update_W(W, H, phi, X, Mf, model), relaxation)
    return W, relaxed_update(H, negbin_update_H(W, H, phi, X, Mf, model), relaxation)


def negbin_prior_loss(W, H, model):
    """−log p(W) − log p(H) of the gamma priors (over log W, log H for shape below 1)."""
    log_space = factor_log_space(model)
    return -(gamma_log_density(W, model.a, model.rate_W, log_space)
             + gamma_log_density(H, model.a, model.rate_H, log_space))


@partial(jax.jit, static_argnames=("update_W",))
def negbin_mm_chunk(W, H, phi, X, M, model, n_steps, relaxation=1.0, *, update_W: bool = True):
    """``n_steps`` MM updates of W and H, then one of φ → (W, H, φ, objective at them).

    φ moves once per chunk: its update evaluates log-gamma, digamma and trigamma functions
    on every entry, several times the cost of a factor update (at 96 × 300 about 20 ms
    against 1.5 ms on 2 busy cores), and each of its Newton steps nearly solves the 1-D
    problem of its group. ``model`` is a resolved :class:`NegativeBinomial` (a pytree: other
    data reuse the compiled chunk) and ``n_steps`` is traced (a shorter last chunk runs the
    same program). ``relaxation`` as :func:`negbin_update_factors`."""
    def step(_, carry):
        return negbin_update_factors(*carry, phi, X, M, model, update_W, relaxation)

    W, H = lax.fori_loop(0, n_steps, step, (W, H))
    phi, phi_objective = negbin_update_dispersion(W, H, phi, X, M, model)
    return W, H, phi, jnp.sum(phi_objective) + negbin_prior_loss(W, H, model)


def moment_dispersion(W, H, X, M, dispersion: str, upper):
    """Method-of-moments φ per group from Var = μ + μ²/φ at the fitted μ = W H:
    Σ μ² / Σ ((x − μ)² − μ) over observed entries, clipped to [0.01, ``upper``] (``upper``
    also where there is no excess variance)."""
    mean = W @ H
    M = jnp.ones(X.shape, bool) if M is None else M
    excess = group_sum(jnp.where(M, (X - mean) ** 2 - mean, 0.0), dispersion)
    spread = group_sum(jnp.where(M, mean**2, 0.0), dispersion)
    phi = jnp.where(excess > 0, spread / jnp.where(excess > 0, excess, 1.0), upper)
    return jnp.clip(phi, 0.01, upper).astype(X.dtype)


# ------------------------------------------------------------------------------- the model
@hyperparameter_pytree
@dataclass(frozen=True)
class NegativeBinomial:
    r"""Negative-binomial NMF for overdispersed counts.

    .. math::

        W_{ik} \sim \mathrm{Gamma}(a, b_W), \quad H_{kj} \sim \mathrm{Gamma}(a, b_H), \quad
        \phi_g \sim \mathrm{Gamma}(s_\phi, r_\phi),

        X_{ij} \sim \mathrm{NB}\big(\mu_{ij} = (WH)_{ij}, \phi_{g(ij)}\big), \quad
        \mathrm{E}\,X_{ij} = \mu_{ij}, \quad \mathrm{Var}\,X_{ij} = \mu_{ij} + \mu_{ij}^2/\phi

    with one dispersion φ per feature (``dispersion="feature"``, the default), per sample
    (``"sample"``) or one for all entries (``"shared"``). Large φ is the Poisson model
    (:class:`~bnmf.models.PoissonGamma`), small φ strong overdispersion.

    Left as ``None``, the rates are set from the data (empirical Bayes) as for ``"poisson"``:
    both factors have prior mean :math:`\sqrt{\bar X / K}`, so :math:`E[(WH)_{ij}] = \bar X`;
    and :math:`r_\phi = s_\phi / (100 \bar X)`, a prior mean of φ at 100 times the mean count
    (variance 1% above Poisson's there) that leaves strong overdispersion a few nats away.

    Parameters
    ----------
    a : float
        Gamma shape of both factor priors (1 = exponential); below 1 the MAP is taken over
        log W and log H, as for ``"poisson"``.
    rate_W, rate_H : float, optional
        Gamma rates of the factors; None sets them from the data.
    dispersion : {"feature", "sample", "shared"}
        Which entries share a φ.
    phi_shape : float
        Gamma shape of the prior on φ.
    phi_rate : float, optional
        Gamma rate of the prior on φ; None sets it from the data.

    References
    ----------
    Gouvert, Oberlin & Févotte (2020), Negative binomial matrix factorization, IEEE Signal
    Processing Letters 27:815–819. Pelizzola, Laursen & Hobolth (2023), Model selection and
    robust inference of mutational signatures using negative binomial non-negative matrix
    factorization, BMC Bioinformatics 24:187.
    """

    a: float = 1.0
    rate_W: float | None = None
    rate_H: float | None = None
    dispersion: str = "feature"
    phi_shape: float = 1.0
    phi_rate: float | None = None

    name = "negbin"
    likelihood = "negbin"
    needs_counts = True
    nuts_calibrated = False  # its NUTS coverage was not measured
    extra_sites = ("phi",)

    def __post_init__(self):
        if self.dispersion not in DISPERSIONS:
            raise ValueError(
                f"NegativeBinomial.dispersion must be one of {DISPERSIONS}, got "
                f"{self.dispersion!r}."
            )
        for field in ("a", "rate_W", "rate_H", "phi_shape", "phi_rate"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"NegativeBinomial.{field} must be positive, got {value!r}.")

    def sites(self, rank=None) -> tuple:
        """W, H and the dispersion φ (dims ``feature``, ``observation`` or none)."""
        return (W_SITE, H_SITE, Site("phi", PHI_DIMS[self.dispersion]))

    def resolve(self, data: Data, rank: int) -> NegativeBinomial:
        """Fill unset rates from the data (see the class docstring)."""
        rate = self.a / balanced_mean(data, rank)
        phi_rate = self.phi_shape / (PHI_PRIOR_MEAN_PER_COUNT * observed_mean(data))
        return dataclasses.replace(
            self,
            rate_W=self.rate_W if self.rate_W is not None else rate,
            rate_H=self.rate_H if self.rate_H is not None else rate,
            phi_rate=self.phi_rate if self.phi_rate is not None else phi_rate,
        )

    def _sample_phi(self, n_features: int, n_samples: int):
        prior = dist.Gamma(self.phi_shape, self.phi_rate)
        if self.dispersion == "shared":
            return numpyro.sample("phi", prior)
        plate, size = (("feature", n_features) if self.dispersion == "feature"
                       else ("observation", n_samples))
        with numpyro.plate(plate, size, dim=-1):
            return numpyro.sample("phi", prior)

    def numpyro_model(self, X, mask, rank: int, W=None):
        """NumPyro model of X (n_features, n_samples); pass ``W`` to keep it fixed."""
        n_features, n_samples = X.shape
        W = sample_W(dist.Gamma(self.a, self.rate_W), n_features, rank, W)
        H_T = sample_H(dist.Gamma(self.a, self.rate_H), n_samples, rank)
        phi = self._sample_phi(n_features, n_samples)
        # the likelihood's batch shape is (n_samples, n_features): φ broadcast transposed
        phi_T = broadcast_dispersion(phi, self.dispersion)
        phi_T = phi_T.T if self.dispersion != "shared" else phi_T
        observe(dist.NegativeBinomial2(negbin_mean(W, H_T.T).T, phi_T), X, mask)

    def log_likelihood(self, X, W, H, extras):
        """Per-entry log p(X_ij | W, H, φ), shape (n_features, n_samples)."""
        phi = broadcast_dispersion(extras["phi"], self.dispersion)
        return negbin_log_likelihood(X, negbin_mean(W, H), phi)

    def init_extras(self, W, H, X, mask) -> dict:
        """Initial φ: the method-of-moments estimate at the initial factors (capped at the
        prior mean, also where the counts show no excess variance)."""
        upper = self.phi_shape / self.phi_rate
        return {"phi": moment_dispersion(W, H, X, mask, self.dispersion, upper)}


# ------------------------------------------------------------------ capability: "map_update"
class NegBinData(NamedTuple):
    """The data side of the MM updates: X (n_features, n_samples) and its bool mask."""

    X: jax.Array
    M: jax.Array


class NegBinState(NamedTuple):
    """State of the MM updates: the iterate, its objective (:func:`negbin_neg_log_joint`) and
    the over-relaxation ω of the factor updates (the driver sets it to 1, the monotone plain
    MM, where a chunk's objective rose)."""

    W: jax.Array
    H: jax.Array
    phi: jax.Array
    loss: jax.Array
    relaxation: jax.Array


def _map_prepare(problem) -> NegBinData:
    X = problem.X
    return NegBinData(X, jnp.ones(X.shape, bool) if problem.mask is None else problem.mask)


def _map_init(W, H, data: NegBinData, model) -> NegBinState:
    phi = model.init_extras(W, H, data.X, data.M)["phi"]
    return NegBinState(W, H, phi, jnp.asarray(jnp.inf, W.dtype),
                       jnp.asarray(RELAXATION, W.dtype))


def negbin_map_step(state: NegBinState, data: NegBinData, model, n_steps, update_W: bool):
    W, H, phi, loss = negbin_mm_chunk(state.W, state.H, state.phi, data.X, data.M, model,
                                      n_steps, state.relaxation, update_W=update_W)
    return NegBinState(W, H, phi, loss, state.relaxation)


def _map_describe(problem) -> dict:
    return {"algorithm": "negbin-mm",
            "mode_space": ("log factors, log phi" if problem.model.a < 1.0
                           else "constrained factors, log phi"),
            "relaxation": RELAXATION}


register_capability(NegativeBinomial, "map_update", MapUpdate(
    prepare=_map_prepare, prepare_masked=lambda X, mask, model: NegBinData(X, mask),
    init=_map_init, step=negbin_map_step,
    values=lambda state: {"W": state.W, "H": state.H, "phi": state.phi},
    describe=_map_describe))
