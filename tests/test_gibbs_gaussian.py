"""The Gaussian half-normal Gibbs sampler: its truncated-normal draws, its conditionals and
orbit moves against the model's own log density, its draws against NUTS and the truth, and
its numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import aligned_cosines, simulate
from numpyro.infer.util import log_density
from scipy import stats

import bnmf
from bnmf.data import prepare
from bnmf.fitting import fit_data
from bnmf.inference import gibbs_gaussian as gg
from bnmf.models import GaussianHalfNormal

KEY = jax.random.PRNGKey(0)
# short chains on purpose: their convergence warnings are not what these tests check
pytestmark = pytest.mark.filterwarnings("ignore::bnmf.BnmfWarning")
MODEL = GaussianHalfNormal(scale_W=0.8, scale_H=1.7, scale_sigma=0.6)


def _x64(dtype):
    jax.config.update("jax_enable_x64", dtype == "float64")


def _log_joint(model, X, mask, W, H, sigma):
    values = {"W": jnp.asarray(W), "H": jnp.asarray(H).T, "sigma": jnp.asarray(sigma)}
    return float(log_density(model.numpyro_model, (jnp.asarray(X), jnp.asarray(mask),
                                                   W.shape[1]), {}, values)[0])


# ------------------------------------------------------------------- truncated normal draws
CASES = [(0.0, 1.0), (2.0, 0.5), (-3.0, 1.0), (-4.9, 1.0), (-5.1, 1.0), (-7.0, 2.0),
         (-40.0, 1.0), (-300.0, 0.01), (50.0, 1.0)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_positive_normal_is_scipys_truncnorm(dtype):
    """Kolmogorov–Smirnov against scipy.stats.truncnorm on [0, ∞), from the body to −300 sd
    (each case from its own key); finite and non-negative at −10⁶ sd, with mean ≈ sd²/|mean|."""
    _x64(dtype)
    try:
        draw = jax.jit(gg.positive_normal)
        for i, (mean, sd) in enumerate(CASES):
            d = np.asarray(draw(jax.random.PRNGKey(i), jnp.full((20000,), mean, dtype),
                                jnp.full((20000,), sd, dtype)), np.float64)
            assert np.all(np.isfinite(d)) and np.all(d >= 0), (mean, sd)
            law = stats.truncnorm(-mean / sd, np.inf, loc=mean / sd)
            assert stats.kstest(d / sd, law.cdf).pvalue > 1e-3, (mean, sd)
        d = np.asarray(draw(KEY, jnp.full((20000,), -1e6, dtype), jnp.ones(20000, dtype)))
        assert np.all(np.isfinite(d)) and np.all(d >= 0)
        assert abs(d.mean() * 1e6 - 1.0) < 0.05  # Exp(rate 10⁶) in the limit
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_interval_normal_is_scipys_truncnorm(dtype):
    """Two-sided truncation (the shears' ε): KS against scipy for intervals around, beside and
    far out in either tail of the mean, and a nearly empty one."""
    _x64(dtype)
    try:
        draw = jax.jit(gg.interval_normal)
        for i, (lo, hi) in enumerate([(-1.0, 2.0), (0.5, 3.0), (5.5, 7.0), (-9.0, -6.0),
                                      (-np.inf, 0.3), (12.0, np.inf), (-2.0, -1.999)]):
            full = lambda v: jnp.full((20000,), v, dtype)
            d = np.asarray(draw(jax.random.PRNGKey(i), full(0.0), full(1.0), full(lo),
                                full(hi)), np.float64)
            assert np.all(np.isfinite(d)) and np.all((d >= lo) & (d <= hi)), (lo, hi)
            if hi - lo > 0.01:
                assert stats.kstest(d, stats.truncnorm(lo, hi).cdf).pvalue > 1e-3, (lo, hi)
    finally:
        jax.config.update("jax_enable_x64", False)


# --------------------------------------------- conditionals against the model's log density
def _problem(rng, F=6, N=7, K=3):
    X = np.abs(rng.normal(1.0, 1.0, (F, N)))
    return X, rng.gamma(1.0, 1.0, (F, K)), rng.gamma(1.0, 1.0, (K, N))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_factor_conditionals_are_the_models(dtype, masked):
    """For every column k of W (and row k of H): the sampler's truncated-normal conditional,
    computed at two values of that column (the others fixed), has the same parameters at both
    (the column's own value does not enter), and its log-density difference equals the
    difference of NumPyro's log joint of the model; entry by entry and the whole column."""
    _x64(dtype)
    rtol = 1e-9 if dtype == "float64" else 2e-3
    try:
        rng = np.random.default_rng(1)
        X, W1, H1 = _problem(rng)
        mask = rng.uniform(size=X.shape) > 0.3 if masked else np.ones(X.shape, bool)
        M = jnp.asarray(mask, dtype)
        Xd = jnp.asarray(X * mask, dtype)
        sigma = 0.45
        var = sigma**2
        j = lambda W, H: _log_joint(MODEL, X, mask, W, H, sigma)
        tn = lambda x, m, s: float(jnp.sum(gg.truncated_normal_log_density(x, m, s)))

        def w_params(W, H, k):
            WT, H = jnp.asarray(W.T, dtype), jnp.asarray(H, dtype)
            if masked:
                R = M * (Xd - WT.T @ H)
                return gg.masked_row_params(WT, H, R, M, k, var, 1 / MODEL.scale_W**2)
            return gg.dense_row_params(WT, (Xd @ H.T).T, H @ H.T, k, var, 1 / MODEL.scale_W**2)

        def h_params(W, H, k):
            W, H = jnp.asarray(W, dtype), jnp.asarray(H, dtype)
            if masked:
                R = M * (Xd - W @ H)
                return gg.masked_row_params(H, W.T, R.T, M.T, k, var, 1 / MODEL.scale_H**2)
            return gg.dense_row_params(H, (Xd.T @ W).T, W.T @ W, k, var, 1 / MODEL.scale_H**2)

        for k in range(W1.shape[1]):
            W2 = W1.copy()
            W2[:, k] = rng.gamma(1.0, 1.0, W1.shape[0])
            m1, s1 = w_params(W1, H1, k)
            m2, s2 = w_params(W2, H1, k)
            np.testing.assert_allclose(m1, m2, rtol=rtol, atol=rtol)
            np.testing.assert_allclose(s1, s2, rtol=rtol)
            lhs = tn(W2[:, k], m1, s1) - tn(W1[:, k], m1, s1)
            np.testing.assert_allclose(lhs, j(W2, H1) - j(W1, H1), rtol=rtol, atol=rtol)
            for i in range(W1.shape[0]):
                Wi = W1.copy()
                Wi[i, k] = W2[i, k]
                lhs = tn(Wi[i, k], m1[i], s1[i]) - tn(W1[i, k], m1[i], s1[i])
                np.testing.assert_allclose(lhs, j(Wi, H1) - j(W1, H1), rtol=rtol, atol=rtol)
            H2 = H1.copy()
            H2[k] = rng.gamma(1.0, 1.0, H1.shape[1])
            m1, s1 = h_params(W1, H1, k)
            m2, _ = h_params(W1, H2, k)
            np.testing.assert_allclose(m1, m2, rtol=rtol, atol=rtol)
            lhs = tn(H2[k], m1, s1) - tn(H1[k], m1, s1)
            np.testing.assert_allclose(lhs, j(W1, H2) - j(W1, H1), rtol=rtol, atol=rtol)
        # the masked form with every entry observed is the dense one
        if not masked:
            R = Xd - jnp.asarray(W1 @ H1, dtype)
            dense = w_params(W1, H1, 1)
            full = gg.masked_row_params(jnp.asarray(W1.T, dtype), jnp.asarray(H1, dtype), R,
                                        jnp.ones_like(R), 1, var, 1 / MODEL.scale_W**2)
            np.testing.assert_allclose(dense[0], full[0], rtol=10 * rtol, atol=10 * rtol)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("masked", [False, True])
def test_sigma_conditional_is_the_models(masked):
    """log p(σ | X, W, H) of the sampler against NumPyro's log joint: differences agree."""
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(2)
        X, W, H = _problem(rng)
        mask = rng.uniform(size=X.shape) > 0.3 if masked else np.ones(X.shape, bool)
        rss = float(np.sum(mask * (X - W @ H) ** 2))
        cond = lambda s: float(gg.sigma_log_conditional(
            jnp.asarray(s), rss, mask.sum(), MODEL.scale_sigma))
        for s1, s2 in ((0.3, 0.9), (1.4, 0.05)):
            np.testing.assert_allclose(
                cond(s2) - cond(s1),
                _log_joint(MODEL, X, mask, W, H, s2) - _log_joint(MODEL, X, mask, W, H, s1),
                rtol=1e-10)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_sigma_step_leaves_its_conditional_invariant():
    """Exact draws of σ | rest (grid inversion) with few entries (n = 6, so the half-normal
    prior matters), moved by the independence Metropolis–Hastings step, are still draws of it
    (KS), and the steps move."""
    n, rss, scale = 6.0, 3.0, 0.5
    grid = np.linspace(1e-3, 6.0, 200001)
    log_p = -n * np.log(grid) - 0.5 * rss / grid**2 - 0.5 * grid**2 / scale**2
    cdf = np.cumsum(np.exp(log_p - log_p.max()))
    cdf /= cdf[-1]
    rng = np.random.default_rng(3)
    start = np.interp(rng.uniform(size=20000), cdf, grid)
    step = jax.jit(jax.vmap(lambda k, s: gg.sigma_step(k, s, rss, n, scale)))
    moved, accepted = step(jax.random.split(KEY, 20000), jnp.asarray(start, jnp.float32))
    moved = np.asarray(moved, np.float64)
    assert 0.3 < np.mean(np.asarray(accepted)) / gg.SIGMA_STEPS < 1.0
    assert stats.kstest(moved, lambda s: np.interp(s, grid, cdf)).pvalue > 1e-3


# ------------------------------------------------------------------------ orbit moves
def test_orbit_densities_are_the_models():
    """Rescaling (W_k e^t, H_k e^−t): log π(t) = log p(X, W(t), H(t), σ) + (F − N) t; shear
    (W_l + εW_k, H_k − εH_l): W H unchanged, and the normal conditional of ε matches NumPyro's
    log joint, its bounds where an entry of W_l or H_k reaches 0 (with a mask)."""
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(4)
        X, W, H = _problem(rng)
        F, N = X.shape
        mask = rng.uniform(size=X.shape) > 0.3
        j = lambda W, H: _log_joint(MODEL, X, mask, W, H, 0.45)
        pW, pH = 0.5 / MODEL.scale_W**2, 0.5 / MODEL.scale_H**2
        for k in range(3):
            alpha, beta = pW * np.sum(W[:, k] ** 2), pH * np.sum(H[k] ** 2)
            moved = lambda t, k=k: (W * np.where(np.arange(3) == k, np.exp(t), 1.0),
                                    H * np.where(np.arange(3) == k, np.exp(-t), 1.0)[:, None])
            lhs = lambda t: float(gg.scale_log_density(t, alpha, beta, F - N))  # noqa: B023
            rhs = lambda t, moved=moved: j(*moved(t)) + (F - N) * t
            np.testing.assert_allclose(lhs(0.7) - lhs(-0.4), rhs(0.7) - rhs(-0.4), rtol=1e-9)
        for k, l in ((0, 1), (2, 0), (1, 2)):
            mean, sd, lo, hi = (float(v) for v in gg.shear_params(
                jnp.asarray(W.T), jnp.asarray(H), k, l, pW, pH))
            assert lo < 0 < hi

            def sheared(eps, k=k, l=l):
                W2, H2 = W.copy(), H.copy()
                W2[:, l] += eps * W[:, k]
                H2[k] -= eps * H[l]
                return W2, H2

            np.testing.assert_allclose(np.dot(*sheared(0.6 * hi)), W @ H, rtol=1e-12)
            assert sheared(lo)[0].min() == pytest.approx(0.0, abs=1e-12)
            assert sheared(hi)[1].min() == pytest.approx(0.0, abs=1e-12)
            e1, e2 = 0.5 * lo, 0.9 * hi
            lhs = stats.norm.logpdf(e2, mean, sd) - stats.norm.logpdf(e1, mean, sd)
            np.testing.assert_allclose(lhs, j(*sheared(e2)) - j(*sheared(e1)), rtol=1e-9)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_orbit_moves_leave_the_prior_invariant():
    """The likelihood is constant along the orbits, so rescalings and shears alone keep the
    half-normal prior invariant: exact prior draws, moved, are still prior draws (KS per
    entry and on column sums), and the moves move."""
    rng = np.random.default_rng(5)
    F, N, K, n = 3, 4, 3, 4000
    sW, sH = 0.7, 2.0
    W = np.abs(rng.normal(0, sW, (n, F, K)))
    H = np.abs(rng.normal(0, sH, (n, K, N)))
    pW, pH = 0.5 / sW**2, 0.5 / sH**2

    def move(key, WT, H):
        k1, k2 = jax.random.split(key)
        WT, H = gg.scale_moves(k1, WT, H, pW, pH)
        return gg.shear_moves(k2, WT, H, pW, pH)

    WT2, H2 = jax.jit(jax.vmap(move))(jax.random.split(KEY, n),
                                      jnp.asarray(np.swapaxes(W, 1, 2), jnp.float32),
                                      jnp.asarray(H, jnp.float32))
    W2, H2 = np.swapaxes(np.asarray(WT2, np.float64), 1, 2), np.asarray(H2, np.float64)
    assert np.mean(np.abs(W2 - W) > 1e-4 * W) > 0.5
    p = [stats.kstest(W2[:, i, k], "halfnorm", (0, sW)).pvalue for i in range(F)
         for k in range(K)]
    p += [stats.kstest(H2[:, k, j], "halfnorm", (0, sH)).pvalue for k in range(K)
          for j in range(N)]
    ref = np.abs(np.random.default_rng(6).normal(0, sW, (n, F, K))).sum(axis=1)
    p += [stats.ks_2samp(W2[:, :, k].sum(axis=1), ref[:, k]).pvalue for k in range(K)]
    assert min(p) > 1e-4, np.round(p, 4)  # 24 tests


# ------------------------------------------------------------ draws against references
def _matched(fit, ref_W):
    return bnmf.posterior.align_permutation(np.asarray(fit.W), ref_W)


def test_gibbs_agrees_with_nuts():
    """(About 10 s.) 8 × 10, rank 2: posterior means and sds of normalized W and H and of σ from Gibbs and
    NUTS agree within Monte Carlo error (standard errors from each method's bulk ESS, 5 se
    for 99% of entries)."""
    import arviz as az
    rng = np.random.default_rng(7)
    W, H = rng.gamma(1.0, 1.0, (8, 2)), rng.gamma(1.0, 1.0, (2, 10))
    X = np.abs(W @ H + rng.normal(0, 0.3, (8, 10)))
    fits = {m: bnmf.fit(X, 2, model="gaussian", method=m, seed=1, progress=False, **opts)
            for m, opts in {"gibbs": {"num_warmup": 500, "num_samples": 3000, "num_chains": 2},
                            "nuts": {"num_warmup": 500, "num_samples": 1000,
                                     "num_chains": 2}}.items()}
    perm = _matched(fits["gibbs"], np.asarray(fits["nuts"].W))
    for name in ("W", "H", "sigma"):
        stat = {}
        for m, fit in fits.items():
            d = fit.idata.posterior[name].values
            if m == "gibbs" and name == "W":
                d = d[..., perm]
            if m == "gibbs" and name == "H":
                d = d[..., perm, :]
            d = d.reshape(d.shape[:2] + (-1,))
            ess = az.ess(az.convert_to_dataset(d))["x"].values
            stat[m] = d.mean(axis=(0, 1)), d.std(axis=(0, 1)), ess
        (mg, sg, eg), (mn, sn, en) = stat["gibbs"], stat["nuts"]
        se = np.sqrt(sg**2 / eg + sn**2 / en)
        assert np.mean(np.abs(mg - mn) < 5 * se) >= 0.99, name
        se_sd = np.sqrt(sg**2 / (2 * eg) + sn**2 / (2 * en))
        assert np.mean(np.abs(sg - sn) < 5 * se_sd) >= 0.99, name


def test_recovers_known_parts_and_reports_diagnostics():
    """Simulated Gaussian data with known W: Hungarian-matched cosines above 0.95; R-hat and
    ESS in fit.info as for the Poisson sampler; σ near the noise sd."""
    X, W, H = simulate(n_features=40, n_samples=60, rank=3, likelihood="gaussian", seed=3)
    fit = bnmf.fit(X, 3, model="gaussian", method="gibbs", num_warmup=150, num_samples=100,
                   num_chains=2, seed=0, progress=False)
    cos, _ = aligned_cosines(fit.W, W)
    assert cos.min() > 0.95, cos
    diagnostics = fit.info["diagnostics"]
    assert {"rhat_max_W", "ess_min_H"} <= set(diagnostics)
    assert fit.info["algorithm"] == "gibbs" and fit.info["orbit_moves"] is True
    assert 0.5 < fit.info["sigma_acceptance"] <= 1.0
    noise = 0.05 * (W @ H).mean()  # the simulation's noise sd
    assert abs(float(fit.idata.posterior["sigma"].mean()) / noise - 1) < 0.2


def test_fixed_W():
    X, W, _ = simulate(n_features=20, n_samples=15, rank=2, likelihood="gaussian", seed=4)
    data = prepare(X)
    fit = fit_data(data, 2, GaussianHalfNormal(), "gibbs", W_fixed=W, num_warmup=50,
                   num_samples=20, num_chains=2, progress=False)
    draws = fit.idata.posterior["W"].values
    np.testing.assert_allclose(draws, np.broadcast_to(W / W.sum(0), draws.shape), rtol=1e-5)
    assert fit.info["orbit_moves"] is False
    assert np.all(np.isfinite(fit.idata.posterior["H"].values))


# ------------------------------------------------------------------ data paths, numerics
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_nan_at_any_scale(dtype):
    """Data at 10⁻³ and 10³ (dense and masked): every draw finite, W and H non-negative."""
    rng = np.random.default_rng(8)
    X0 = np.abs(rng.gamma(1.0, 1.0, (20, 3)) @ rng.gamma(1.0, 1.0, (3, 25))
                + rng.normal(0, 0.05, (20, 25)))
    mask = rng.uniform(size=X0.shape) > 0.2
    for scale in (1e-3, 1e3):
        for m in (None, mask):
            fit = bnmf.fit(X0 * scale, 3, model="gaussian", method="gibbs", mask=m,
                           num_warmup=50, num_samples=30, num_chains=2, dtype=dtype,
                           progress=False)
            for name, value in fit.idata.posterior.data_vars.items():
                assert np.all(np.isfinite(value.values)), (scale, name)
            assert np.all(fit.idata.posterior["W"].values >= 0)
            assert np.all(fit.idata.posterior["H"].values >= 0)
            sigma = float(fit.idata.posterior["sigma"].mean())
            assert 0.01 * scale < sigma < 0.2 * scale, (scale, sigma)


def test_masked_entries_are_never_read():
    rng = np.random.default_rng(9)
    X = np.abs(rng.normal(2.0, 1.0, (12, 10)))
    mask = np.ones(X.shape, bool)
    mask[3, 4] = mask[7, 1] = False
    X2 = X.copy()
    X2[3, 4], X2[7, 1] = 1e4, 0.0
    opts = dict(model="gaussian", method="gibbs", mask=mask, num_warmup=20, num_samples=20,
                num_chains=2, seed=3, progress=False)
    a, b = bnmf.fit(X, 2, **opts), bnmf.fit(X2, 2, **opts)
    np.testing.assert_array_equal(a.idata.posterior["W"].values, b.idata.posterior["W"].values)


def test_bad_options_and_sparse_input_raise():
    import scipy.sparse as sp
    X = np.abs(np.random.default_rng(0).normal(2.0, 1.0, (10, 8)))
    fit = lambda X=X, **o: bnmf.fit(X, 2, model="gaussian", method="gibbs",
                                    progress=False, **o)
    for option, value in (("num_samples", 0), ("num_chains", 0), ("thin", 0),
                          ("num_warmup", -1), ("map_iter", 0), ("num_samples", 2.5),
                          ("num_chains", True)):
        with pytest.raises((ValueError, TypeError), match=f"{option} must be"):
            fit(**{option: value})
    with pytest.raises(ValueError, match="orbit_moves must be True or False"):
        fit(orbit_moves="yes")
    with pytest.raises(ValueError, match="needs dense X"):
        fit(sp.csr_matrix(X))
    with pytest.raises(TypeError, match="unknown option"):
        fit(max_tokens=10)


def test_same_seed_same_draws():
    X = np.abs(np.random.default_rng(1).normal(2.0, 1.0, (10, 8)))
    opts = dict(model="gaussian", method="gibbs", num_warmup=10, num_samples=10,
                num_chains=2, progress=False)
    a, b = bnmf.fit(X, 2, seed=4, **opts), bnmf.fit(X, 2, seed=4, **opts)
    for name in ("W", "H", "sigma"):
        np.testing.assert_array_equal(a.idata.posterior[name].values,
                                      b.idata.posterior[name].values)
    c = bnmf.fit(X, 2, seed=5, **opts)
    assert not np.array_equal(a.idata.posterior["H"].values, c.idata.posterior["H"].values)
