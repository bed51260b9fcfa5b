"""The refit model (bnmf.models.refit.RefitPoisson: W fixed, cohort share prior) as a model
family: its hand-written log joint, MAP updates and Gibbs conditionals against NumPyro's
``log_density`` of its program, its Gibbs sampler through ``bnmf.refit(method="gibbs")``,
and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

import bnmf
from bnmf.fitting import default_method
from bnmf.inference import Problem
from bnmf.inference.gibbs_refit import fit_refit_gibbs
from bnmf.models.base import capability, check_method, supported_methods
from bnmf.models.refit import (
    REFIT_MAP,
    RefitPoisson,
    h_conditional,
    log_joint,
    log_space_loss,
    sample_totals,
    shape_log_conditional,
    share_log_conditional,
)

F, K, N = 12, 3, 9
TOLERANCE = {"float32": 2e-5, "float64": 1e-11}


def _setup(dtype, masked=True, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.full(F, 0.5), K).T
    X = rng.poisson(W @ rng.gamma(1.0, 200.0, (K, N))).astype(float)
    mask = rng.uniform(size=X.shape) > (0.25 if masked else -1)
    support = (rng.uniform(size=(K, N)) > 0.3) | (np.arange(K)[:, None] == 0)
    values = {"H": rng.gamma(1.0, 80.0, (K, N)), "share": rng.gamma(2.0, 0.2, K),
              "shape": rng.gamma(2.0, 0.4, K)}
    cast = lambda a: jnp.asarray(a, dtype)
    return (cast(np.where(mask, X, 0.0)), jnp.asarray(mask), cast(W),
            {k: cast(v) for k, v in values.items()}, RefitPoisson(support=support))


def _log_density(model, X, mask, W, values):
    values = dict(values, H=values["H"].T)
    return log_density(model.numpyro_model, (X, mask, K), {"W": W}, values)[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_log_joint_is_the_programs_log_density(dtype, masked):
    with jax.enable_x64(dtype == "float64"):
        X, mask, W, v, model = _setup(dtype, masked)
        expected = float(_log_density(model, X, mask, W, v))
        got = float(log_joint(model, X, mask, W, v["H"], v["share"], v["shape"]))
        tol = TOLERANCE[dtype] * abs(expected)
        assert abs(got - expected) <= tol
        # every prior term is far larger than the tolerance: dropping one would fail
        prior = _log_density(model, X, jnp.zeros_like(mask), W, v)
        share_term = _log_density(model, X, jnp.zeros_like(mask), W,
                                  dict(v, share=v["share"] * 2)) - prior
        shape_term = _log_density(model, X, jnp.zeros_like(mask), W,
                                  dict(v, shape=v["shape"] * 2)) - prior
        assert min(abs(float(share_term)), abs(float(shape_term))) > 100 * tol


def _log_space_density(model, X, mask, W, u):
    """log density of (log H, log π, log a) from NumPyro: log_density + Σ u."""
    values = {k: jnp.exp(x) for k, x in u.items()}
    return _log_density(model, X, mask, W, values) + sum(jnp.sum(x) for x in u.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_map_update_descends_the_log_space_density_to_a_stationary_point(dtype):
    with jax.enable_x64(dtype == "float64"):
        X, mask, W, v, model = _setup(dtype)
        problem = Problem(X, mask, K, model, W)
        data = REFIT_MAP.prepare(problem)
        loss = float(log_space_loss(model, data, v["H"], v["share"], v["shape"]))
        u = {k: jnp.log(x) for k, x in v.items()}
        expected = -float(_log_space_density(model, X, mask, W, u))
        assert abs(loss - expected) <= TOLERANCE[dtype] * abs(expected)
        state = REFIT_MAP.init(W, v["H"], data, model)
        step = jax.jit(REFIT_MAP.step, static_argnums=(3, 4))
        losses = []
        for _ in range(40):
            state = step(state, data, model, 10, False)
            losses.append(float(state.loss))
        assert np.all(np.diff(losses) <= 1e-5 * abs(losses[-1]))
        if dtype == "float64":   # the mode: the gradient in log space vanishes
            values = REFIT_MAP.values(state)
            u = {k: jnp.log(values[k]) for k in ("H", "share", "shape")}
            grad = jax.grad(lambda u: _log_space_density(model, X, mask, W, u))(u)
            assert max(float(jnp.max(jnp.abs(g))) for g in grad.values()) < 1e-4


def test_h_conditional_is_the_complete_data_density():
    """Given latent counts z, log Gamma(H'; post) − log Gamma(H; post) equals the change of
    log p(X, H, π, a) plus that of log Multinomial(z | X, p(H))."""
    with jax.enable_x64(True):
        X, mask, W, v, model = _setup("float64", masked=True)
        rng = np.random.default_rng(3)
        X_np, M_np, S = np.asarray(X), np.asarray(mask), np.asarray(model.support)
        # a latent split of each observed count over the parts in the sample's support
        z = np.zeros((F, N, K))
        for i, j in zip(*np.nonzero(M_np & (X_np > 0))):
            p = rng.dirichlet(np.ones(K)) * S[:, j]
            z[i, j] = rng.multinomial(int(X_np[i, j]), p / p.sum())
        exposure = W.T @ jnp.asarray(M_np, W.dtype)
        totals = sample_totals(X, mask)
        post_shape, post_rate = h_conditional(model, jnp.asarray(z.sum(axis=0).T), exposure,
                                              v["share"], v["shape"], totals)

        def log_multinomial(H):
            p = W[:, None, :] * jnp.where(model.support, H, 0.0).T[None, :, :]
            p = p / jnp.maximum(p.sum(axis=-1, keepdims=True), 1e-300)
            return jnp.sum(jnp.where(z > 0, z * jnp.log(jnp.maximum(p, 1e-300)), 0.0))

        def gamma_log(H):
            return jnp.sum(jax.scipy.stats.gamma.logpdf(H, post_shape, scale=1.0 / post_rate))

        H2 = v["H"] * jnp.asarray(rng.uniform(0.5, 1.5, (K, N)))
        lhs = gamma_log(H2) - gamma_log(v["H"])
        rhs = (_log_density(model, X, mask, W, dict(v, H=H2)) + log_multinomial(H2)
               - _log_density(model, X, mask, W, v) - log_multinomial(v["H"]))
        np.testing.assert_allclose(float(lhs), float(rhs), rtol=1e-9)


def test_share_and_shape_conditionals_are_the_log_density():
    with jax.enable_x64(True):
        X, mask, W, v, model = _setup("float64")
        totals = sample_totals(X, mask)
        logH = jnp.log(v["H"])
        for site, conditional in (("share", share_log_conditional),
                                  ("shape", shape_log_conditional)):
            other = v["shape"] if site == "share" else v["share"]
            u1, u2 = jnp.log(v[site]), jnp.log(v[site]) + jnp.asarray([0.3, -0.7, 1.1])
            got = conditional(model, u2, other, logH, totals) \
                - conditional(model, u1, other, logH, totals)
            for k in range(K):   # one part at a time: the conditionals are per part
                moved = v[site].at[k].set(jnp.exp(u2[k]))
                expected = (_log_density(model, X, mask, W, {**v, site: moved}) + u2[k]
                            - _log_density(model, X, mask, W, v) - u1[k])
                np.testing.assert_allclose(float(got[k]), float(expected), rtol=1e-9)


# ------------------------------------------------------------------ the Gibbs sampler
def _cohort():
    """4 parts over 25 features, 12 samples using 1–3 of them, part 3 never."""
    rng = np.random.default_rng(5)
    W = rng.dirichlet(np.full(25, 0.3), 4).T
    H = np.zeros((4, 12))
    for j in range(12):
        used = rng.choice(3, rng.integers(1, 4), replace=False)
        H[used, j] = rng.dirichlet(np.ones(len(used))) * rng.uniform(200, 700)
    return rng.poisson(W @ H), W, H


@pytest.fixture(scope="module")
def gibbs_calls():
    X, W, H = _cohort()
    # counts below 256 are token-split: no binomial bucket, which doubles the compile time
    return bnmf.refit(X, W, method="gibbs", seed=0, num_warmup=100, num_samples=200), H


def test_gibbs_refit_recovers_known_exposures(gibbs_calls):
    calls, H = gibbs_calls
    assert calls.info["method"] == "gibbs" and calls.info["algorithm"] == "gibbs"
    assert calls.draws.shape == (2 * 200, 4, 12) and np.all(np.isfinite(calls.draws))
    truth = H / H.sum(axis=0) >= 0.05
    mean = calls.exposures
    lower, upper = calls.interval(0.9)
    assert np.median(np.abs(mean - H)[truth] / H[truth]) < 0.1
    assert ((H >= lower) & (H <= upper))[truth].mean() >= 0.8
    assert (calls.active() == truth).mean() >= 0.9 and not calls.active()[3].any()
    assert calls.info["cohort_share"]["3"] < 0.05       # the unused part shrinks
    assert calls.probability()[3].max() < 0.5


def test_gibbs_refit_refuses_bad_input():
    X, W, _ = _cohort()
    Xj, Mj = jnp.asarray(X, jnp.float32), jnp.ones(X.shape, bool)
    with pytest.raises(ValueError, match="fixed W"):
        fit_refit_gibbs(Problem(Xj, Mj, 4, RefitPoisson(), None))
    with pytest.raises(TypeError, match="needs model 'refit'"):
        fit_refit_gibbs(Problem(Xj, Mj, 4, bnmf.models.PoissonGamma(), jnp.asarray(W)))
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        bnmf.refit(X, W, method="gibbs", num_chains=0)
    with pytest.raises(ValueError, match="keeps W fixed"):
        RefitPoisson().numpyro_model(Xj, Mj, 4)
    with pytest.raises(ValueError, match="share_shape must be a positive number"):
        RefitPoisson(share_shape=-1.0)
    with pytest.raises(ValueError, match="leaves a sample without any part"):
        RefitPoisson(support=np.zeros((4, 12), bool))
    with pytest.raises(ValueError, match="method must be one of"):
        bnmf.refit(X, W, method="cavi")
    with pytest.raises(ValueError, match="non-integer values"):
        bnmf.refit(X + 0.5, W, method="gibbs")


def test_refit_model_capabilities_and_default_method():
    model = RefitPoisson()
    assert set(supported_methods(model)) == {"map", "svi", "nuts", "gibbs"}
    assert capability(model, "gibbs_sweep") is fit_refit_gibbs
    with pytest.raises(ValueError, match="supports method="):
        check_method(model, "cavi")
    # what refit(method=None) runs: NUTS on small cohorts, Gibbs at cohort scale
    assert default_method(model, (25, 12), 4, {}, fixed_W=True)[0] == "nuts"
    assert default_method(model, (96, 150), 65, {}, fixed_W=True)[0] == "gibbs"


def test_map_start_with_more_reference_parts_than_samples():
    """A refit may use more parts than samples (65 PCAWG signatures, 20 genomes): the start
    of H has one row per part, flat at the data's scale (a factorization start would cap
    the rank at min(X.shape))."""
    from bnmf.inference.map import map_start
    from bnmf.models import PoissonGamma

    rng = np.random.default_rng(1)
    W = rng.dirichlet(np.full(96, 0.3), 65).T
    X = rng.poisson(20.0, (96, 20)).astype(np.float32)
    problem = Problem(jnp.asarray(X), jnp.ones(X.shape, bool), 65, PoissonGamma(),
                      jnp.asarray(W, jnp.float32))
    W0, H0 = map_start(problem, "nndsvda", 0)
    assert W0.shape == (96, 65) and H0.shape == (65, 20)
    np.testing.assert_allclose(np.asarray(W0), W, rtol=1e-6)
    assert np.allclose(np.asarray(H0), X.mean() / W.sum(axis=0).mean())
