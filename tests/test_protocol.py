"""The model protocol: capabilities are asked for, never substituted, and every hand-written
objective, update and bound equals ``numpyro.infer.util.log_density`` of the model's own
NumPyro program (one test per capability).

Each check compares at random parameter values, on dense, masked and sparse data, in float32
and float64. Each also asserts that every prior term is large against the tolerance, so a
hand-written objective that dropped one would fail (checked by hand as well: dropping
``shape * log(rate)`` from ``gamma_log_density``, the sigma prior from
``_gaussian_neg_log_joint`` or q(H)'s KL from ``cavi_elbo`` fails these tests).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from numpyro.infer.util import log_density

import bnmf
from bnmf.inference import Problem
from bnmf.models import GaussianHalfNormal, Horseshoe, PoissonGamma
from bnmf.models.base import (
    capability,
    has_capability,
    register_capability,
    site_dims,
    supported_methods,
)
from bnmf.models.counts import sparse_counts

RNG = np.random.default_rng(17)
SHAPE, RANK = (9, 13), 3
TOLERANCE = {"float32": 2e-5, "float64": 1e-11}  # relative to the magnitude of log p


def _data(kind: str, dtype: str, counts: bool = True):
    """(X, mask) as JAX arrays: every entry observed, or 30% masked."""
    X = RNG.poisson(4.0, SHAPE).astype(float) if counts else RNG.gamma(2.0, 1.0, SHAPE)
    mask = np.ones(SHAPE, bool) if kind == "dense" else RNG.uniform(size=SHAPE) > 0.3
    return jnp.asarray(np.where(mask, X, 0.0), dtype), jnp.asarray(mask)


def _factors(dtype):
    return (jnp.asarray(RNG.gamma(2.0, 0.7, (SHAPE[0], RANK)), dtype),
            jnp.asarray(RNG.gamma(2.0, 0.7, (RANK, SHAPE[1])), dtype))


def _log_joint(model, X, mask, values):
    """log p(X, sites) of the model's NumPyro program; ``values`` in bnmf's layout."""
    values = dict(values, H=values["H"].T)
    return float(log_density(model.numpyro_model, (X, mask, RANK), {}, values)[0])


def _log_prior(model, X, values):
    """log p(sites): the program with every entry unobserved."""
    return _log_joint(model, X, jnp.zeros(X.shape, bool), values)


def _problem(model, X, mask, kind):
    if kind == "sparse":
        dense = np.asarray(X)
        counts = sparse_counts(sp.coo_matrix(dense), dtype=str(X.dtype))
        return Problem(counts, None, RANK, model)
    return Problem(X, mask, RANK, model)


def _objective_of_step(model, problem, W, H, n_steps=0, extras=None):
    """The loss a ``"map_update"`` capability reports after ``n_steps`` updates from W, H, and
    the values it returns."""
    updates = capability(model, "map_update")
    aux = updates.prepare(problem)
    state = updates.init(W, H, aux, model)
    if extras is not None and hasattr(state, "sigma"):
        state = state._replace(sigma=jnp.asarray(extras["sigma"], W.dtype))
    if extras is not None and hasattr(state, "hals"):
        hals = state.hals._replace(sigma=jnp.asarray(extras["sigma"], W.dtype))
        state = state._replace(hals=hals._replace(best=(W, H, hals.sigma, hals.best[3])))
    state = jax.jit(updates.step, static_argnums=(3, 4))(state, aux, model, n_steps, True)
    return float(state.loss), updates.values(state)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["dense", "masked", "sparse"])
@pytest.mark.parametrize("a", [1.7, 0.6])
def test_poisson_map_update_objective_is_the_models_log_density(kind, dtype, a):
    """The MM objective is −log p(X, W, H) (a ≥ 1, constrained mode) or −log p − Σ log W −
    Σ log H (a < 1: the mode over log W, log H), exactly; an update never raises it."""
    with jax.enable_x64(dtype == "float64"):
        X, mask = _data("dense" if kind == "sparse" else kind, dtype)
        model = PoissonGamma(a=a, rate_W=1.3, rate_H=0.8)
        W, H = _factors(dtype)
        problem = _problem(model, X, mask, kind)
        loss, _ = _objective_of_step(model, problem, W, H)
        jacobian = float(jnp.sum(jnp.log(W)) + jnp.sum(jnp.log(H))) if a < 1 else 0.0
        expected = -(_log_joint(model, X, mask, {"W": W, "H": H}) + jacobian)
        scale = abs(expected)
        assert loss == pytest.approx(expected, rel=TOLERANCE[dtype])
        prior = _log_prior(model, X, {"W": W, "H": H})
        assert abs(prior) > 1e3 * TOLERANCE[dtype] * scale  # a dropped prior term would show
        after, values = _objective_of_step(model, problem, W, H, n_steps=3)
        jac_after = (float(jnp.sum(jnp.log(values["W"])) + jnp.sum(jnp.log(values["H"])))
                     if a < 1 else 0.0)
        assert after == pytest.approx(
            -(_log_joint(model, X, mask, values) + jac_after), rel=TOLERANCE[dtype])
        assert after <= loss


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["dense", "masked"])
def test_gaussian_map_update_objective_is_the_models_log_density(kind, dtype):
    """HALS (every entry observed) and masked MM report −log p(X, W, H, sigma) of the model's
    program at their iterate; an update never raises it."""
    with jax.enable_x64(dtype == "float64"):
        X, mask = _data(kind, dtype, counts=False)
        model = GaussianHalfNormal(scale_W=1.1, scale_H=0.9, scale_sigma=0.7)
        W, H = _factors(dtype)
        sigma = jnp.asarray(0.8, dtype)
        problem = _problem(model, X, mask, kind)
        loss, values = _objective_of_step(model, problem, W, H, extras={"sigma": sigma})
        expected = -_log_joint(model, X, mask, {"W": W, "H": H, "sigma": sigma})
        assert loss == pytest.approx(expected, rel=TOLERANCE[dtype])
        prior = _log_prior(model, X, {"W": W, "H": H, "sigma": sigma})
        assert abs(prior) > 1e3 * TOLERANCE[dtype] * abs(expected)
        after, values = _objective_of_step(model, problem, W, H, n_steps=3,
                                           extras={"sigma": sigma})
        # HALS sets entries to exactly 0, outside NumPyro's open support of the half-normal,
        # whose density is continuous there: score them a hair above 0
        tiny = jnp.finfo(W.dtype).tiny
        values = {name: jnp.maximum(value, tiny) for name, value in values.items()}
        assert after == pytest.approx(-_log_joint(model, X, mask, values),
                                      rel=TOLERANCE[dtype])
        assert after <= loss


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["dense", "masked", "sparse"])
def test_cavi_bound_is_the_models_log_density_less_the_kl(kind, dtype):
    """CAVI's collapsed bound: for a q concentrated at (W, H) its data term is
    log p(X | W, H) of the model's program; its KL terms equal E_q[log q − log p(W, H)] with
    log p(W, H) from the program (Monte Carlo, within 5 standard errors)."""
    from bnmf.models.poisson import GammaFactors, cavi_elbo, gamma_kl

    with jax.enable_x64(dtype == "float64"):
        X, mask = _data("dense" if kind == "sparse" else kind, dtype)
        model = PoissonGamma(a=1.7, rate_W=1.3, rate_H=0.8)
        family = capability(model, "cavi")
        problem = _problem(model, X, mask, kind)
        aux = family.prepare(problem)
        W, H = _factors(dtype)
        hyper = model.hyper()
        # (a) concentrated q: data term -> log p(X | W, H)
        big = 1e7 if dtype == "float64" else 1e5
        sharp = GammaFactors(jnp.full_like(W, big), big / W, jnp.full_like(H, big), big / H)
        kl = (gamma_kl(sharp.shape_W, sharp.rate_W, model.a, model.rate_W)
              + gamma_kl(sharp.shape_H, sharp.rate_H, model.a, model.rate_H))
        data_term = float(cavi_elbo(sharp, aux.counts, hyper, aux.log_factorials) + kl)
        log_lik = (_log_joint(model, X, mask, {"W": W, "H": H})
                   - _log_prior(model, X, {"W": W, "H": H}))
        assert data_term == pytest.approx(log_lik, rel=(1e-4 if dtype == "float32" else 1e-6))
        # (b) a spread q: KL(q || p) against the program's prior, by Monte Carlo
        q = GammaFactors(jnp.asarray(RNG.uniform(2, 6, W.shape), dtype),
                         jnp.asarray(RNG.uniform(2, 6, W.shape), dtype),
                         jnp.asarray(RNG.uniform(2, 6, H.shape), dtype),
                         jnp.asarray(RNG.uniform(2, 6, H.shape), dtype))
        kl_q = float(gamma_kl(q.shape_W, q.rate_W, model.a, model.rate_W)
                     + gamma_kl(q.shape_H, q.rate_H, model.a, model.rate_H))
        draws = family.draw(q, 3, 4000)
        import scipy.stats as st

        log_q = (st.gamma.logpdf(draws["W"], np.asarray(q.shape_W), scale=1 / np.asarray(q.rate_W))
                 .sum(axis=(1, 2)) + st.gamma.logpdf(draws["H"], np.asarray(q.shape_H),
                                                     scale=1 / np.asarray(q.rate_H)).sum(axis=(1, 2)))
        prior = jax.vmap(lambda w, h: log_density(
            model.numpyro_model, (X, jnp.zeros(X.shape, bool), RANK), {},
            {"W": w, "H": h.T})[0])(jnp.asarray(draws["W"]), jnp.asarray(draws["H"]))
        diff = log_q - np.asarray(prior, np.float64)
        assert abs(diff.mean() - kl_q) < 5 * diff.std() / np.sqrt(diff.size)
        # the bound after sweeps never falls
        state = family.init(W, H, aux, model)
        step = jax.jit(family.step, static_argnums=(3,))
        first = step(state, aux, model, 1)
        second = step(first, aux, model, 3)
        assert float(second.loss) <= float(first.loss) * (1 - 1e-7 * np.sign(first.loss))


def test_sparse_counts_capability_gives_the_dense_objective():
    """The O(nnz) sparse counts of "sparse_counts" give the dense MAP objective and updates."""
    with jax.enable_x64(True):
        X, mask = _data("dense", "float64")
        model = PoissonGamma(a=1.7, rate_W=1.3, rate_H=0.8)
        W, H = _factors("float64")
        dense = _objective_of_step(model, _problem(model, X, mask, "dense"), W, H, n_steps=2)
        sparse = _objective_of_step(model, _problem(model, X, mask, "sparse"), W, H, n_steps=2)
        assert sparse[0] == pytest.approx(dense[0], rel=1e-12)
        np.testing.assert_allclose(sparse[1]["W"], dense[1]["W"], rtol=1e-10)
        assert has_capability(model, "sparse_counts")
        built = capability(model, "sparse_counts")(sp.coo_matrix(np.asarray(X)),
                                                   dtype="float64")
        assert float(built.values.sum()) == pytest.approx(float(X.sum()))


# ------------------------------------------------------------------ asking, never substituting
def test_a_missing_capability_names_the_methods_the_model_supports():
    with pytest.raises(ValueError, match=r"no method='cavi'.*supports method= \['map', 'svi', "
                                         r"'nuts'\]"):
        capability(Horseshoe(), "cavi")
    assert supported_methods(PoissonGamma()) == ("map", "svi", "nuts", "cavi", "gibbs")
    assert supported_methods(GaussianHalfNormal()) == ("map", "svi", "nuts", "gibbs")
    X = RNG.poisson(3.0, (12, 15))
    with pytest.raises(ValueError, match="supports method="):
        bnmf.fit(X, 2, model="horseshoe", method="cavi")


def test_select_rank_refuses_horseshoe_map_instead_of_ranking_a_plain_nmf():
    X = RNG.poisson(3.0, (12, 15))
    with pytest.raises(ValueError, match="closed-form MAP updates, which model 'horseshoe' "
                                         "does not have.*method='svi'"):
        bnmf.select_rank(X, [1, 2], model="horseshoe", method="map", folds=1, restarts=1)


def test_the_horseshoe_map_starts_from_its_declared_start_model():
    start = capability(Horseshoe(likelihood="gaussian"), "start_model")
    assert isinstance(start(Horseshoe(likelihood="gaussian")), GaussianHalfNormal)
    assert isinstance(capability(Horseshoe(), "start_model")(Horseshoe()), PoissonGamma)


def test_sites_give_every_posterior_variable_its_dims():
    assert site_dims(PoissonGamma()) == {"W": ("feature", "component"),
                                         "H": ("component", "observation")}
    hs = site_dims(Horseshoe(likelihood="gaussian", sparse_H=True))
    assert hs["lambda_H"] == ("observation", "component") and hs["sigma"] == ()
    fit = bnmf.fit(RNG.poisson(3.0, (12, 15)), 2, model="horseshoe", method="map",
                   max_iter=50, progress=False)
    assert set(fit.idata.posterior.data_vars) == set(site_dims(fit.model))


def test_a_registered_capability_is_found_for_the_model_and_its_subclasses():
    class Special(PoissonGamma):
        pass

    marker = object()
    register_capability(Special, "test_only", marker)
    assert capability(Special(), "test_only") is marker
    assert has_capability(Special(), "map_update")  # inherited from PoissonGamma
    assert not has_capability(PoissonGamma(), "test_only")
