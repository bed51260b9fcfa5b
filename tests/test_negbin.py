"""The negative-binomial model: its density, its closed-form MAP updates, its fits."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import aligned_cosines
from numpyro.infer.util import log_density
from scipy import stats

import bnmf
from bnmf.inference import Problem
from bnmf.models import NegativeBinomial, negbin
from bnmf.models.base import capability
from bnmf.models.negbin import (
    DISPERSIONS,
    negbin_log_likelihood,
    negbin_mm_chunk,
    negbin_neg_log_joint,
)

PHI_SHAPES = {"feature": lambda F, N: (F,), "sample": lambda F, N: (N,), "shared": lambda F, N: ()}
# NumPyro's NB log-density goes through JAX's log-beta, which is off by up to ~1e-6 per entry
# in float64 (B(0.5, 8): 5.6e-7); bnmf's takes the log-gamma difference there. Dropping any prior
# term moves the objective by more than 1e-3 relative (test below).
TOL = {"float32": 1e-5, "float64": 1e-7}


def _model(dispersion="feature", a=1.3):
    """A resolved model with distinct rates (so a test can tell their prior terms apart)."""
    return NegativeBinomial(a=a, rate_W=0.7, rate_H=1.1, dispersion=dispersion, phi_shape=1.5,
                            phi_rate=0.02)


def _point(dispersion, F=10, N=12, K=2, seed=0, masked=True):
    """Random W, H, φ, counts X and a mask, as NumPy float64."""
    rng = np.random.default_rng(seed)
    W, H = rng.gamma(2.0, 1.0, (F, K)), rng.gamma(2.0, 1.0, (K, N))
    phi = rng.gamma(3.0, 2.0, PHI_SHAPES[dispersion](F, N))
    X = rng.negative_binomial(3, 0.3, (F, N)).astype(float)
    M = rng.uniform(size=(F, N)) < 0.8 if masked else np.ones((F, N), bool)
    return W, H, phi, X, M


@partial(jax.jit, static_argnames="log_space")
def _reference_objective(model, W, H, phi, X, M, log_space=False):
    """−log p(X, W, H, φ) of the model's own NumPyro program, with the log-space Jacobians
    (log φ always; log W, log H when the factors' mode is taken in log space)."""
    K = W.shape[1]
    ld, _ = log_density(model.numpyro_model, (X, M, K), {}, {"W": W, "H": H.T, "phi": phi})
    jacobian = jnp.sum(jnp.log(phi))
    if log_space:
        jacobian = jacobian + jnp.sum(jnp.log(W)) + jnp.sum(jnp.log(H))
    return -(ld + jacobian)


def _as(dtype, *arrays):
    return [jnp.asarray(a, dtype) for a in arrays]


# ------------------------------------------------------------------ density and objective
@pytest.mark.parametrize("dispersion", DISPERSIONS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_map_objective_is_the_models_log_density(dispersion, dtype, masked):
    model = _model(dispersion)
    with jax.enable_x64(dtype == "float64"):
        W, H, phi, X, M = _point(dispersion, masked=masked)
        W, H, phi, X = _as(dtype, W, H, phi, X)
        M = jnp.asarray(M)
        reference = float(_reference_objective(model, W, H, phi, X, M))
        objective = float(jax.jit(negbin_neg_log_joint)(W, H, phi, X, M, model))
    assert objective == pytest.approx(reference, rel=TOL[dtype])


@pytest.mark.parametrize("dispersion", ["feature", "shared"])
def test_map_objective_in_log_space_is_the_models_log_density(dispersion):
    model = _model(dispersion, a=0.6)
    with jax.enable_x64(True):
        W, H, phi, X, M = _point(dispersion, seed=1)
        reference = float(_reference_objective(model, W, H, phi, X, M, log_space=True))
        objective = float(negbin_neg_log_joint(W, H, phi, X, M, model))
    assert objective == pytest.approx(reference, rel=TOL["float64"])


@pytest.mark.parametrize(("dispersion", "dtype"),
                         [("feature", "float32"), ("feature", "float64"), ("sample", "float64"),
                          ("shared", "float32")])
def test_map_update_capability_reports_the_models_log_density(dispersion, dtype):
    """The ``"map_update"`` capability as the driver runs it (prepare, init, step): the loss it
    reports is −log p(X, W, H, φ) − Σ log φ of the NumPyro program at the values it returns,
    and a step with the plain update (ω = 1) lowers it."""
    model = _model(dispersion)
    updates = capability(model, "map_update")
    step = jax.jit(updates.step, static_argnums=(3, 4))
    with jax.enable_x64(dtype == "float64"):
        W, H, _, X, M = _point(dispersion, seed=5)
        W, H, X = _as(dtype, W, H, X)
        aux = updates.prepare(Problem(X, jnp.asarray(M), 2, model))
        state = updates.init(W, H, aux, model)._replace(relaxation=jnp.asarray(1.0, dtype))
        first = step(state, aux, model, 2, True)
        second = step(first, aux, model, 3, True)
        values = updates.values(second)
        reference = float(_reference_objective(model, values["W"], values["H"], values["phi"],
                                               X, jnp.asarray(M)))
    assert float(second.loss) == pytest.approx(reference, rel=TOL[dtype])
    assert float(second.loss) < float(first.loss)
    assert values["phi"].shape == PHI_SHAPES[dispersion](*X.shape)


@pytest.mark.parametrize("dropped", ["W", "H", "phi"])
def test_objective_check_fails_when_a_prior_term_is_dropped(dropped, monkeypatch):
    """The comparison above is sharp: an objective without one site's prior fails it."""
    model = _model("feature")
    dropped_rate = {"W": model.rate_W, "H": model.rate_H, "phi": model.phi_rate}[dropped]
    original = negbin.gamma_log_prob

    def without(x, shape, rate, log_space=False):
        value = original(x, shape, rate, log_space)
        return jnp.zeros_like(value) if rate == dropped_rate else value

    with jax.enable_x64(True):
        W, H, phi, X, M = _point("feature")
        reference = float(_reference_objective(model, W, H, phi, X, M))
        monkeypatch.setattr(negbin, "gamma_log_prob", without)
        objective = float(negbin_neg_log_joint(W, H, phi, X, M, model))
    assert objective != pytest.approx(reference, rel=1e-3)


def _log_nb_by_sum(x, mu, phi):
    """log NB(x | μ, φ) with log Γ(x + φ)/Γ(φ) as the exact sum Σ_{k<x} log(φ + k): a
    reference independent of log-gamma and log-beta functions (scipy's nbinom loses digits at
    p = φ/(φ + μ) near 1)."""
    rising = np.sum(np.log(phi + np.arange(int(x))))
    return (rising - math.lgamma(x + 1.0) - phi * np.log1p(mu / phi)
            + (x * (np.log(mu) - np.log(phi + mu)) if x else 0.0))


def test_log_likelihood_matches_reference_at_extreme_counts():
    grid = [(x, mu, phi) for x in (0.0, 1.0, 7.0, 10.0, 1e5) for mu in (1e-3, 3.5, 1e5)
            for phi in (0.5, 2.0, 50.0, 1e6)]
    x, mu, phi = (np.array(v) for v in zip(*grid))
    expected = np.array([_log_nb_by_sum(*point) for point in grid])
    moderate = phi <= 50
    np.testing.assert_allclose(expected[moderate], stats.nbinom.logpmf(
        x, phi, phi / (phi + mu))[moderate], rtol=1e-9)
    with jax.enable_x64(True):
        got64 = np.asarray(negbin_log_likelihood(x, mu, phi))
    got32 = np.asarray(negbin_log_likelihood(*_as("float32", x, mu, phi)), dtype=float)
    np.testing.assert_allclose(got64, expected, rtol=1e-9, atol=1e-9)
    assert np.all(np.isfinite(got32))
    # float32: within its rounding of terms up to ~x log x
    error = np.abs(got32 - expected)
    assert np.all(error <= 1e-5 * (np.abs(expected) + x * np.log1p(x) + phi)), error.max()


def test_log_likelihood_approaches_poisson_at_large_dispersion():
    x = np.arange(0.0, 30.0)
    with jax.enable_x64(True):
        got = np.asarray(negbin_log_likelihood(x, 8.0, 1e9))
    np.testing.assert_allclose(got, stats.poisson.logpmf(x, 8.0), rtol=1e-7, atol=1e-7)


# -------------------------------------------------------------------- closed-form MAP
@pytest.mark.parametrize(("dispersion", "update_W"),
                         [("feature", True), ("sample", True), ("shared", True),
                          ("feature", False)])
def test_mm_never_increases_the_objective(dispersion, update_W):
    model = _model(dispersion)
    with jax.enable_x64(True):
        W, H, phi, X, M = (jnp.asarray(v) for v in _point(dispersion))
        W0 = W
        losses = [float(negbin_neg_log_joint(W, H, phi, X, M, model))]
        for _ in range(40):
            W, H, phi, loss = negbin_mm_chunk(W, H, phi, X, M, model, 2, update_W=update_W)
            # the loss a chunk reports is the objective of the state it returns
            assert float(loss) == pytest.approx(
                float(negbin_neg_log_joint(W, H, phi, X, M, model)), rel=1e-12)
            losses.append(float(loss))
    assert np.all(np.diff(losses) <= 1e-12 * np.abs(losses[1:]))
    assert losses[-1] < losses[0] - 1.0
    assert update_W or np.array_equal(W, W0)


@pytest.mark.parametrize(("dispersion", "a"),
                         [("feature", 1.3), ("shared", 1.3), ("feature", 0.6),
                          pytest.param("sample", 1.3, marks=pytest.mark.slow)])
def test_mm_converges_to_a_stationary_point_of_the_models_log_density(dispersion, a):
    """At the MM limit the gradient of the NumPyro model's own −log p(X, W, H, φ) (over
    log W, log H where a < 1, and over log φ) vanishes: the updates optimize that density."""
    model = _model(dispersion, a)
    log_space = a < 1
    with jax.enable_x64(True):
        W, H, phi, X, M = (jnp.asarray(v) for v in _point(dispersion, seed=3))
        for _ in range(60):
            W, H, phi, _ = negbin_mm_chunk(W, H, phi, X, M, model, 50)

        def reference(log_W, log_H, log_phi):
            return _reference_objective(model, jnp.exp(log_W), jnp.exp(log_H), jnp.exp(log_phi),
                                        X, M, log_space=log_space)

        grads = jax.grad(reference, argnums=(0, 1, 2))(jnp.log(W), jnp.log(H), jnp.log(phi))
        # d/d log W = W ∘ d/dW: zero at an interior mode (a > 1 keeps the mode inside)
        largest = [float(jnp.max(jnp.abs(grad))) for grad in grads]
    assert max(largest) < 1e-4, largest


def test_mm_handles_zero_counts_and_large_counts_in_float32():
    rng = np.random.default_rng(4)
    for scale in (1.0, 2e4):
        mean = rng.gamma(1.0, scale, (3, 1)) @ rng.gamma(1.0, 1.0, (1, 40)) * 1e-1
        X = rng.negative_binomial(5.0, 5.0 / (5.0 + mean)).astype(np.float32)
        X[:, :5] = 0.0
        model = _model("feature", a=1.0)
        W, H, phi = (jnp.ones((3, 2)), jnp.ones((2, 40)), jnp.full(3, 10.0))
        W, H = W * np.sqrt(X.mean() / 2), H * np.sqrt(X.mean() / 2)
        losses = []
        for _ in range(30):
            W, H, phi, loss = negbin_mm_chunk(W, H, phi, jnp.asarray(X), jnp.ones(X.shape, bool),
                                              model, 5)
            losses.append(float(loss))
        assert np.all(np.isfinite(losses)) and bool(jnp.all(jnp.isfinite(W)))
        assert bool(jnp.all(phi > 0)) and bool(jnp.all(jnp.isfinite(phi)))
        assert np.all(np.diff(losses) <= 1e-5 * np.abs(losses[1:]))


# ------------------------------------------------------------------------- options
def test_options_are_validated():
    with pytest.raises(ValueError, match="dispersion must be one of"):
        NegativeBinomial(dispersion="gene")
    with pytest.raises(ValueError, match="phi_shape must be positive"):
        NegativeBinomial(phi_shape=0.0)
    with pytest.raises(ValueError, match="rate_W must be positive"):
        NegativeBinomial(rate_W=-1.0)


def test_bad_counts_are_refused():
    X = np.random.default_rng(0).poisson(4.0, (10, 12)).astype(float)
    with pytest.raises(ValueError, match="integer|count"):
        bnmf.fit(X + 0.5, 2, model="negbin", method="map")
    X[1, 2] = -3.0
    with pytest.raises(ValueError, match="negative"):
        bnmf.fit(X, 2, model="negbin", method="map")


def test_empirical_bayes_prior_scales():
    X = np.random.default_rng(0).poisson(20.0, (30, 40))
    from bnmf.data import prepare

    model = NegativeBinomial().resolve(prepare(X, counts=True), 4)
    factor_mean = np.sqrt(X.mean() / 4)
    assert model.rate_W == pytest.approx(1.0 / factor_mean)
    assert model.phi_shape / model.phi_rate == pytest.approx(
        negbin.PHI_PRIOR_MEAN_PER_COUNT * X.mean())


# ------------------------------------------------------------------------------ fits
def _nb_data(F=40, N=150, K=3, seed=0, counts=2000.0):
    """NB counts with one φ per feature, log-uniform on [2, 50]: X, W, φ."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, (F, K))
    W /= W.sum(axis=0)
    H = rng.dirichlet(np.ones(K), N).T * counts
    phi = np.exp(rng.uniform(np.log(2.0), np.log(50.0), F))
    X = rng.poisson(rng.gamma(phi[:, None], (W @ H) / phi[:, None]))
    return X, W, phi


def test_map_fit_runs_the_mm_updates_and_recovers_the_truth():
    X, W, phi = _nb_data()
    fit = bnmf.fit(X, 3, model="negbin", method="map", progress=False)
    assert fit.info["algorithm"] == "negbin-mm"
    assert np.all(np.diff(np.asarray(fit.losses)) <= 1e-5 * np.abs(fit.losses[1:]))
    assert aligned_cosines(np.asarray(fit.W), W)[0].min() > 0.95
    phi_hat = np.asarray(fit.idata.posterior["phi"]).ravel()
    assert np.corrcoef(np.log(phi_hat), np.log(phi))[0, 1] > 0.6


def test_heldout_log_likelihood_is_the_nb_density_at_the_fit():
    X, _, _ = _nb_data(F=20, N=30, K=2, counts=500.0)
    held = np.zeros(X.shape, bool)
    held[::3, ::4] = True
    fit = bnmf.fit(X, 2, model="negbin", method="map", mask=~held, dispersion="sample",
                   progress=False)
    posterior = fit.idata.posterior
    assert posterior["phi"].dims[2:] == ("observation",)
    phi = np.asarray(posterior["phi"]).reshape(-1)[None, :]
    mean = np.asarray(fit.W) @ np.asarray(fit.H)
    expected = stats.nbinom.logpmf(X, phi, phi / (phi + mean))
    got = fit.log_likelihood(X, mask=held)
    np.testing.assert_allclose(got[held], expected[held], rtol=0, atol=2e-3)  # float32 fit
    assert np.isnan(got[~held]).all()


@pytest.mark.parametrize("method", ["svi", "nuts"])
def test_generic_methods_fit_the_model(method):
    X, _, _ = _nb_data(F=8, N=10, K=2, counts=300.0)
    options = ({"max_steps": 300, "min_steps": 100, "num_draws": 50} if method == "svi"
               else {"num_warmup": 60, "num_samples": 40})
    fit = bnmf.fit(X, 2, model="negbin", method=method, dispersion="shared", seed=1,
                   progress=False, **options)
    again = bnmf.fit(X, 2, model="negbin", method=method, dispersion="shared", seed=1,
                     progress=False, **options)
    phi = np.asarray(fit.idata.posterior["phi"])
    assert fit.idata.posterior["phi"].dims == ("chain", "draw")
    assert np.all(np.isfinite(phi)) and np.all(phi > 0) and phi.std() > 0
    np.testing.assert_array_equal(phi, np.asarray(again.idata.posterior["phi"]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale", [0.05, 5e3])
def test_map_is_finite_at_small_and_large_counts(dtype, scale, tmp_path):
    """Counts of 0–10 (scale 0.05 × 100 per sample) and ~10⁵ per entry."""
    X, _, _ = _nb_data(F=12, N=20, K=2, counts=scale * 100 * 12)
    fit = bnmf.fit(X, 2, model="negbin", method="map", dtype=dtype, progress=False)
    assert np.all(np.isfinite(fit.losses))
    assert np.all(np.isfinite(np.asarray(fit.W))) and np.all(np.isfinite(np.asarray(fit.H)))
    phi = np.asarray(fit.idata.posterior["phi"])
    assert np.all(np.isfinite(phi)) and np.all(phi > 0)
    fit.save(tmp_path / "fit.nc")
    loaded = bnmf.load(tmp_path / "fit.nc")
    np.testing.assert_array_equal(np.asarray(loaded.idata.posterior["phi"]), phi)
    assert np.all(np.isfinite(loaded.log_likelihood()))


@pytest.mark.slow  # compiles the batched negbin MAP at two ranks (~80 s under load)
def test_select_rank_fits_the_negbin_model():
    X, _, _ = _nb_data(F=20, N=40, K=2, counts=800.0)
    sel = bnmf.select_rank(X, ranks=[1, 2], model="negbin", method="map", folds=2,
                           restarts=1, progress=False)
    assert sel.best_rank == 2  # the true rank
    assert sel.fits[2].idata.posterior["phi"].shape[2:] == (20,)
    assert np.all(np.isfinite(sel.table["heldout_lpd"]))
