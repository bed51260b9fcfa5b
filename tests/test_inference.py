"""Inference against independent references: conjugate posteriors and scikit-learn objectives."""

import jax
import numpy as np
import pytest
from helpers import aligned_cosines, frobenius, generalized_kl, simulate
from sklearn.decomposition import NMF

import bnmf
from bnmf.data import prepare
from bnmf.fitting import fit_data
from bnmf.models import GaussianHalfNormal, PoissonGamma

# ---------------------------------------------------------------- conjugate check (rank 1)
A, B = 2.0, 0.5
rng = np.random.default_rng(3)
W_FIXED = rng.dirichlet(np.ones(20))[:, None]  # (20, 1), sums to 1 so H is not rescaled
H_TRUE = np.array([[40.0, 150.0, 300.0, 75.0, 500.0]])
X_CONJ = rng.poisson(W_FIXED @ H_TRUE).astype(float)
ALPHA = A + X_CONJ.sum(axis=0)  # H_j | X ~ Gamma(a + sum_i X_ij, b + sum_i W_i)
BETA = B + W_FIXED.sum()


def conjugate_fit(method, model=None, **options):
    model = model or PoissonGamma(a=A, rate_W=1.0, rate_H=B)
    data = prepare(X_CONJ, counts=True)
    return fit_data(data, 1, model, method, seed=0, dtype="float64", W_fixed=W_FIXED,
                    progress=False, **options)


def test_map_is_the_conjugate_posterior_mode():
    fit = conjugate_fit("map", tol=1e-12, max_iter=5000)
    assert fit.info["mode_space"] == "constrained"
    np.testing.assert_allclose(fit.H[0], (ALPHA - 1) / BETA, rtol=1e-6)


def test_map_with_shape_below_one_is_the_log_space_mode():
    """Gamma(a < 1) has no mode at H > 0; bnmf takes the mode of log H, (a + sum X) / beta."""
    a = 0.5
    fit = conjugate_fit("map", PoissonGamma(a=a, rate_W=1.0, rate_H=B), tol=1e-12, max_iter=5000)
    assert fit.info["mode_space"] == "log"
    np.testing.assert_allclose(fit.H[0], (a + X_CONJ.sum(axis=0)) / BETA, rtol=1e-6)


def test_svi_matches_the_conjugate_posterior():
    """The best log-normal approximation of a gamma posterior has its exact mean."""
    fit = conjugate_fit("svi", num_draws=4000)
    draws = fit.idata.posterior["H"].values.reshape(-1, 5)
    sd = np.sqrt(ALPHA) / BETA
    assert np.all(np.abs(fit.H[0] - ALPHA / BETA) < 0.2 * sd), (fit.H[0] - ALPHA / BETA) / sd
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.15)


def test_nuts_matches_the_conjugate_posterior():
    fit = conjugate_fit("nuts", num_warmup=300, num_samples=1000, num_chains=1)
    draws = fit.idata.posterior["H"].values.reshape(-1, 5)
    sd = np.sqrt(ALPHA) / BETA
    assert np.all(np.abs(fit.H[0] - ALPHA / BETA) < 4 * sd / np.sqrt(200))
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.15)


# ----------------------------------------------------------- MAP reaches sklearn's objectives
FLAT_POISSON = PoissonGamma(a=1.0, rate_W=1e-10, rate_H=1e-10)
FLAT_GAUSSIAN = GaussianHalfNormal(scale_W=1e8, scale_H=1e8, scale_sigma=1e8)


def test_poisson_map_reaches_sklearn_kl_objective():
    X, _, _ = simulate(40, 60, rank=4, counts_per_sample=500, seed=4)
    ref = NMF(4, solver="mu", beta_loss="kullback-leibler", init="nndsvda", max_iter=2000,
              tol=1e-6, random_state=0).fit(X.T)
    sk = generalized_kl(X, (ref.transform(X.T) @ ref.components_).T)
    fit = bnmf.fit(X, 4, model=FLAT_POISSON, method="map", dtype="float64", progress=False,
                   max_iter=5000, tol=1e-9)
    ours = generalized_kl(X, fit.W @ fit.H)
    assert ours <= 1.01 * sk, (ours, sk)


def test_gaussian_map_reaches_sklearn_frobenius_objective():
    X, _, _ = simulate(40, 60, rank=4, likelihood="gaussian", seed=5)
    ref = NMF(4, solver="cd", init="nndsvda", max_iter=2000, tol=1e-6, random_state=0).fit(X.T)
    sk = frobenius(X, (ref.transform(X.T) @ ref.components_).T)
    fit = bnmf.fit(X, 4, model=FLAT_GAUSSIAN, method="map", dtype="float64", progress=False,
                   max_iter=5000, tol=1e-9)
    ours = frobenius(X, fit.W @ fit.H)
    assert ours <= 1.01 * sk, (ours, sk)


def test_masked_gaussian_map_decreases_its_objective():
    X, _, _ = simulate(30, 40, rank=3, likelihood="gaussian", seed=6)
    mask = np.random.default_rng(0).uniform(size=X.shape) > 0.2
    fit = bnmf.fit(X, 3, model="gaussian", method="map", mask=mask, dtype="float64",
                   progress=False, max_iter=500)
    assert fit.info["algorithm"] == "masked-multiplicative-mm"
    assert np.all(np.diff(fit.losses) <= 1e-8 * np.abs(fit.losses[:-1]))


@pytest.mark.parametrize("model", ["poisson", "gaussian"])
def test_mm_updates_are_monotone(model):
    X, _, _ = simulate(30, 40, rank=3, seed=7, likelihood=model)
    fit = bnmf.fit(X, 3, model=model, method="map", dtype="float64", progress=False,
                   max_iter=300, tol=0.0)
    assert np.all(np.diff(fit.losses) <= 1e-9 * np.abs(fit.losses[:-1]))


# ------------------------------------------------------------------- determinism and dtypes
@pytest.mark.parametrize("method", ["map", "svi"])
def test_same_seed_same_result(method):
    X, _, _ = simulate(20, 30, rank=2, counts_per_sample=300, seed=8)
    options = {"max_steps": 1000, "num_draws": 200} if method == "svi" else {}
    first = bnmf.fit(X, 2, method=method, seed=3, progress=False, **options)
    second = bnmf.fit(X, 2, method=method, seed=3, progress=False, **options)
    np.testing.assert_array_equal(first.idata.posterior["W"].values,
                                  second.idata.posterior["W"].values)
    np.testing.assert_array_equal(first.losses, second.losses)
    if method == "svi":
        third = bnmf.fit(X, 2, method=method, seed=4, progress=False, **options)
        assert not np.array_equal(first.idata.posterior["W"].values,
                                  third.idata.posterior["W"].values)


@pytest.mark.parametrize("model", ["poisson", "gaussian", "horseshoe"])
def test_float32_and_float64_agree(model):
    X, _, _ = simulate(20, 30, rank=2, counts_per_sample=300, seed=9)
    fits = {dtype: bnmf.fit(X, 2, model=model, method="map", dtype=dtype, progress=False,
                            max_iter=3000, tol=1e-8)
            for dtype in ("float32", "float64")}
    assert fits["float32"].idata.posterior["W"].dtype == np.float32
    assert fits["float64"].idata.posterior["W"].dtype == np.float64
    np.testing.assert_allclose(fits["float32"].W @ fits["float32"].H,
                               fits["float64"].W @ fits["float64"].H, rtol=0.02, atol=0.05)
    assert not jax.config.jax_enable_x64  # the float64 context does not leak


@pytest.mark.parametrize("scale", [1e-3, 1e3])
@pytest.mark.parametrize("model", ["poisson", "gaussian"])
def test_losses_finite_at_any_scale(model, scale):
    X, _, _ = simulate(20, 30, rank=2, counts_per_sample=300, seed=10)
    if model == "gaussian":
        X = X * scale
    else:  # counts of 0-10 and of 1e5
        X, _, _ = simulate(20, 30, rank=2, counts_per_sample=100 if scale < 1 else 2e6, seed=10)
    for method in ("map", "svi"):
        fit = bnmf.fit(X, 2, model=model, method=method, progress=False, max_steps=1000,
                       num_draws=100) if method == "svi" else bnmf.fit(
            X, 2, model=model, method=method, progress=False)
        assert np.all(np.isfinite(fit.losses))
        assert np.all(np.isfinite(fit.idata.posterior["W"].values))
        assert fit.elbo is None or np.isfinite(fit.elbo)


def test_horseshoe_map_takes_factors_in_the_constrained_space():
    """With W's mode in the constrained space, a part that the data leave empty shrinks towards
    zero; a log-space mode of W ~ HalfNormal(s) would sit near s instead."""
    X, W, _ = simulate(30, 40, rank=2, counts_per_sample=300, zero_fraction=0.5, seed=8)
    fit = bnmf.fit(X, 2, model="horseshoe", method="map", progress=False, max_iter=1500)
    assert fit.info["mode_space"] == "constrained factors, log scales"
    assert np.all(np.isfinite(fit.losses))
    W_est = fit.W / fit.W.sum(axis=0)
    # Each true zero is matched to the column it belongs to; most are at least 100× below 1/30.
    _, cols = aligned_cosines(fit.W, W)
    assert np.mean(W_est[:, cols][W == 0] < 1e-4) > 0.5
