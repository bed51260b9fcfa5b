"""CAVI for the Poisson–gamma model: the conjugate closed form, generic SVI, masks, the Fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from helpers import fit_seeing_hidden_values, simulate
from jax.scipy.special import gammaln
from jax.scipy.stats import gamma as gamma_dist

import bnmf
from bnmf.data import prepare
from bnmf.fitting import fit_data
from bnmf.inference import Problem
from bnmf.inference.cavi import cavi_factors, draw_factors, gamma_kl
from bnmf.models import PoissonGamma

# The conjugate check of tests/test_inference.py: rank 1, W fixed,
# H_j | X ~ Gamma(a + sum_i M_ij X_ij, b + sum_i M_ij W_i).
A, B = 2.0, 0.5
rng = np.random.default_rng(3)
W_FIXED = rng.dirichlet(np.ones(20))[:, None]
X_CONJ = rng.poisson(W_FIXED @ np.array([[40.0, 150.0, 300.0, 75.0, 500.0]])).astype(float)
CONJ_MODEL = PoissonGamma(a=A, rate_W=1.0, rate_H=B)


def conjugate_problem(mask=None):
    data = prepare(X_CONJ, mask=mask, counts=True)
    with jax.enable_x64(True):
        return Problem(jnp.asarray(data.values), jnp.asarray(data.mask), 1, CONJ_MODEL,
                       W_fixed=jnp.asarray(W_FIXED))


@pytest.mark.parametrize("masked", [False, True])
def test_cavi_is_the_conjugate_posterior(masked):
    mask = np.random.default_rng(0).uniform(size=X_CONJ.shape) > 0.3 if masked else None
    M = np.ones(X_CONJ.shape, bool) if mask is None else mask
    with jax.enable_x64(True):
        factors, _, _, converged = cavi_factors(conjugate_problem(mask), progress=False)
    assert converged
    np.testing.assert_allclose(factors.shape_H[0], A + (M * X_CONJ).sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(factors.rate_H[0], B + (M * W_FIXED).sum(axis=0), rtol=1e-10)


def test_cavi_fit_draws_match_the_conjugate_posterior():
    fit = fit_data(prepare(X_CONJ, counts=True), 1, CONJ_MODEL, "cavi", seed=0,
                   dtype="float64", W_fixed=W_FIXED, progress=False, num_draws=4000)
    alpha, beta = A + X_CONJ.sum(axis=0), B + W_FIXED.sum()
    draws = fit.idata.posterior["H"].values.reshape(-1, 5)
    sd = np.sqrt(alpha) / beta
    assert np.all(np.abs(fit.H[0] - alpha / beta) < 4 * sd / np.sqrt(4000))
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.05)
    np.testing.assert_allclose(fit.W[:, 0], W_FIXED[:, 0])
    assert fit.method == "cavi" and fit.info["algorithm"] == "cavi-gamma"


def test_gamma_kl_matches_monte_carlo():
    shape, rate, prior_shape, prior_rate = 3.0, 2.0, 1.5, 0.7
    x = np.random.default_rng(0).gamma(shape, 1 / rate, 200_000)
    mc = jnp.mean(gamma_dist.logpdf(x, shape, scale=1 / rate)
                  - gamma_dist.logpdf(x, prior_shape, scale=1 / prior_rate))
    np.testing.assert_allclose(gamma_kl(shape, rate, prior_shape, prior_rate), mc, rtol=0.01)


# --------------------------------------------------------------------- against generic SVI
X_SMALL, _, _ = simulate(30, 40, rank=3, counts_per_sample=500, seed=1)


def small_problem(mask=None):
    data = prepare(X_SMALL, mask=mask, counts=True)
    model = PoissonGamma().resolve(data, 3)
    return Problem(jnp.asarray(data.values), jnp.asarray(data.mask), 3, model)


def monte_carlo_elbo(problem, factors, seed, n=2000):
    """E_q[log p(X, W, H) - log q(W, H)] of the gamma factors, by Monte Carlo."""
    model, X, M = problem.model, problem.X, problem.mask
    W, H = draw_factors(factors, seed, n)

    def one(W, H):
        rate = W @ H
        ll = jnp.sum(jnp.where(M, X * jnp.log(rate) - rate - gammaln(X + 1), 0.0))
        log_prior = (jnp.sum(gamma_dist.logpdf(W, model.a, scale=1 / model.rate_W))
                     + jnp.sum(gamma_dist.logpdf(H, model.a, scale=1 / model.rate_H)))
        log_q = (jnp.sum(gamma_dist.logpdf(W, factors.shape_W, scale=1 / factors.rate_W))
                 + jnp.sum(gamma_dist.logpdf(H, factors.shape_H, scale=1 / factors.rate_H)))
        return ll + log_prior - log_q

    values = jax.vmap(one)(W, H)
    return float(values.mean()), float(values.std() / np.sqrt(n))


@pytest.fixture(scope="module")
def small_fits():
    with jax.enable_x64(True):
        problem = small_problem()
        factors, losses, _, _ = cavi_factors(problem, progress=False)
        mc, se = monte_carlo_elbo(problem, factors, 1)
    cavi = bnmf.fit(X_SMALL, 3, method="cavi", dtype="float64", progress=False, num_draws=2000)
    svi = bnmf.fit(X_SMALL, 3, model="poisson", method="svi", dtype="float64", progress=False,
                   num_draws=2000)
    return {"bound": -losses[-1], "losses": losses, "mc": mc, "se": se, "cavi": cavi, "svi": svi}


def test_cavi_bound_never_decreases(small_fits):
    losses = small_fits["losses"]
    assert np.all(np.diff(losses) <= 1e-9 * np.abs(losses[:-1]))
    assert small_fits["cavi"].elbo == pytest.approx(small_fits["bound"], rel=1e-12)


def test_cavi_elbo_agrees_with_generic_svi(small_fits):
    """The collapsed bound is below the true ELBO of the same gamma q (Jensen), and that ELBO
    is close to the one generic SVI reaches with its log-normal family."""
    bound, mc, se, svi = small_fits["bound"], small_fits["mc"], small_fits["se"], small_fits["svi"]
    assert bound <= mc + 4 * se
    assert abs(mc - svi.elbo) < 0.01 * abs(svi.elbo), (mc, svi.elbo)
    assert abs(bound - svi.elbo) < 0.03 * abs(svi.elbo), (bound, svi.elbo)


def test_cavi_posterior_moments_agree_with_generic_svi(small_fits):
    cavi, svi = small_fits["cavi"], small_fits["svi"]
    np.testing.assert_allclose(cavi.W @ cavi.H, svi.W @ svi.H, rtol=0.05, atol=0.5)
    np.testing.assert_allclose(cavi.W, svi.W, atol=0.01)
    sd = {name: fit.idata.posterior["H"].std(("chain", "draw")).values
          for name, fit in (("cavi", cavi), ("svi", svi))}
    ratio = np.median(sd["cavi"] / sd["svi"])
    # Mean-field with latent sources is known to be narrower than log-normal SVI; within 2x.
    assert 0.5 < ratio < 1.5, ratio


# --------------------------------------------------------------------- masks and the Fit
def test_masked_entries_do_not_influence_cavi():
    mask = np.ones(X_SMALL.shape, bool)
    mask[2, 3] = mask[7, 11] = False
    mask[:, 5] = np.arange(X_SMALL.shape[0]) % 3 != 0
    options = {"method": "cavi", "progress": False, "dtype": "float64", "num_draws": 10}
    a = bnmf.fit(X_SMALL, 3, mask=mask, **options)
    # 1e6 reaches the inference at the masked entries (validation would have zeroed them)
    b = fit_seeing_hidden_values(X_SMALL, 3, mask, value=1e6, **options)
    np.testing.assert_allclose(b.W, a.W, rtol=1e-8)
    assert b.elbo == pytest.approx(a.elbo, rel=1e-12)


def test_cavi_refuses_other_models():
    with pytest.raises(ValueError, match=r"model 'gaussian' has no method='cavi' .*"
                                         r"model='poisson' has.*supports method= \['map', "
                                         r"'svi', 'nuts', 'gibbs'\]"):
        bnmf.fit(X_SMALL, 2, model="gaussian", method="cavi", progress=False)
    with pytest.raises(ValueError, match="num_draws must be a positive integer"):
        bnmf.fit(X_SMALL, 2, method="cavi", progress=False, num_draws=0)


def test_cavi_same_seed_same_result_and_round_trip(tmp_path):
    X = pd.DataFrame(X_SMALL[:12, :15], index=[f"g{i}" for i in range(12)])
    first = bnmf.fit(X, 2, method="cavi", seed=3, progress=False, num_draws=100)
    second = bnmf.fit(X, 2, method="cavi", seed=3, progress=False, num_draws=100)
    np.testing.assert_array_equal(first.idata.posterior["W"].values,
                                  second.idata.posterior["W"].values)
    np.testing.assert_array_equal(first.losses, second.losses)
    first.save(tmp_path / "fit.nc")
    loaded = bnmf.load(tmp_path / "fit.nc")
    np.testing.assert_array_equal(loaded.idata.posterior["H"].values,
                                  first.idata.posterior["H"].values)
    assert loaded.method == "cavi" and loaded.elbo == first.elbo and loaded.info == first.info
    lower, upper = first.interval(0.9)["H"]
    assert np.all(lower.to_numpy() <= first.H.to_numpy()) and np.all(
        first.H.to_numpy() <= upper.to_numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("counts_per_sample", [100, 2e6])
def test_cavi_finite_at_any_scale(dtype, counts_per_sample):
    X, _, _ = simulate(20, 30, rank=2, counts_per_sample=counts_per_sample, seed=10)
    for seed in (0, 1):
        fit = bnmf.fit(X, 2, method="cavi", dtype=dtype, seed=seed, progress=False,
                       num_draws=50, init="random" if seed else "nndsvda")
        assert np.all(np.isfinite(fit.losses)) and np.isfinite(fit.elbo)
        assert np.all(np.isfinite(fit.idata.posterior["W"].values))
        assert np.all(np.isfinite(fit.idata.posterior["H"].values))
        assert np.all(fit.idata.posterior["W"].values > 0)
