"""Model log-likelihoods and priors against SciPy; empirical-Bayes scales; NumPyro traces."""

import jax
import numpy as np
import pytest
import scipy.stats as st
from numpyro import handlers

import bnmf
from bnmf.data import prepare
from bnmf.models import GaussianHalfNormal, Horseshoe, PoissonGamma, get_model
from bnmf.models.horseshoe import regularized_scale

rng = np.random.default_rng(1)
W = rng.gamma(1.0, 1.0, (6, 2))
H = rng.gamma(1.0, 3.0, (2, 5))
X = rng.poisson(W @ H).astype(float)


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def test_poisson_log_likelihood_matches_scipy():
    ll = PoissonGamma().log_likelihood(X, W, H)
    np.testing.assert_allclose(ll, st.poisson.logpmf(X, W @ H), rtol=1e-10)


def test_gaussian_log_likelihood_matches_scipy():
    ll = GaussianHalfNormal().log_likelihood(X, W, H, {"sigma": 0.7})
    np.testing.assert_allclose(ll, st.norm.logpdf(X, W @ H, 0.7), rtol=1e-10)


@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
def test_horseshoe_uses_its_likelihood(likelihood):
    model = Horseshoe(likelihood=likelihood)
    ll = model.log_likelihood(X, W, H, {"sigma": 1.3})
    expected = (st.poisson.logpmf(X, W @ H) if likelihood == "poisson"
                else st.norm.logpdf(X, W @ H, 1.3))
    np.testing.assert_allclose(ll, expected, rtol=1e-10)


def test_regularized_scale_limits():
    # tiny tau*lambda: the horseshoe; huge: capped at the slab c
    assert np.isclose(regularized_scale(1e-3, 1.0, 4.0), 1e-3, rtol=1e-5)
    assert np.isclose(regularized_scale(1e3, 1.0, 4.0), 2.0, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e5])
def test_empirical_bayes_prior_matches_data_mean(scale):
    """Prior mean of (W H)_ij equals the data mean, at any data scale."""
    data = prepare(np.full((8, 9), scale) * rng.uniform(0.5, 1.5, (8, 9)))
    rank = 3
    poisson = PoissonGamma().resolve(data, rank)
    prior_mean_W = poisson.a / poisson.rate_W
    prior_mean_H = poisson.a / poisson.rate_H
    assert np.isclose(rank * prior_mean_W * prior_mean_H, data.values.mean(), rtol=1e-10)
    gaussian = GaussianHalfNormal().resolve(data, rank)
    half_normal_mean = np.sqrt(2 / np.pi)
    assert np.isclose(rank * (gaussian.scale_W * half_normal_mean) * (gaussian.scale_H * half_normal_mean),
                      data.values.mean(), rtol=1e-10)
    assert np.isclose(gaussian.scale_sigma, data.values.std(), rtol=1e-10)


def test_user_hyperparameters_are_kept():
    data = prepare(X)
    model = PoissonGamma(a=0.5, rate_W=2.0).resolve(data, 2)
    assert model.a == 0.5 and model.rate_W == 2.0 and model.rate_H is not None


@pytest.mark.parametrize("model", [PoissonGamma(), GaussianHalfNormal(), Horseshoe(),
                                   Horseshoe(likelihood="gaussian", sparse_H=True)])
def test_numpyro_trace_has_site_shapes_and_masks(model):
    data = prepare(X, counts=model.needs_counts)
    resolved = model.resolve(data, 2)
    mask = np.ones_like(X, dtype=bool)
    mask[0, 0] = False
    with handlers.seed(rng_seed=0):
        trace = handlers.trace(resolved.numpyro_model).get_trace(X, mask, 2)
    assert trace["W"]["value"].shape == (6, 2)
    assert trace["H"]["value"].shape == (5, 2)  # NumPyro layout: observation plate first
    for site in model.extra_sites:
        assert site in trace
    # the masked entry contributes nothing to the likelihood
    log_prob = trace["X"]["fn"].base_dist.base_dist.log_prob(X.T)  # unmasked
    masked = trace["X"]["fn"].log_prob(X.T)
    assert np.isclose(float(masked.sum()), float(log_prob.sum() - log_prob[0, 0]), rtol=1e-5)


def test_get_model_by_name_and_object():
    assert isinstance(get_model("poisson", a=2.0), PoissonGamma)
    assert get_model("horseshoe", likelihood="gaussian").likelihood == "gaussian"
    model = PoissonGamma(a=3.0)
    assert get_model(model) is model
    fit = bnmf.fit(X, 2, model=PoissonGamma(a=2.0), method="map", progress=False)
    assert fit.model.a == 2.0
