"""The Poisson–gamma Gibbs sampler: its conditionals against the model's own log density, its
draws against closed-form posteriors and NUTS, and its numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import simulate
from numpyro.infer.util import log_density
from scipy import stats

import bnmf
from bnmf.data import prepare
from bnmf.fitting import fit_data
from bnmf.inference import gibbs_poisson as gp
from bnmf.models import HierarchicalPoissonGamma, PoissonGamma, sampling

KEY = jax.random.PRNGKey(0)


# ------------------------------------------------------------------- the random draws
@pytest.mark.parametrize("shape", [0.02, 0.7, 1.0, 40.0, 3e4])
def test_log_standard_gamma_is_the_log_of_a_gamma_draw(shape):
    """Kolmogorov–Smirnov against scipy's log-gamma law, in log space (tiny shapes would
    underflow the draws themselves)."""
    jax.config.update("jax_enable_x64", True)
    try:
        draws = np.asarray(sampling.log_standard_gamma(KEY, jnp.full((20000,), shape)))
    finally:
        jax.config.update("jax_enable_x64", False)
    assert np.all(np.isfinite(draws))
    assert stats.kstest(draws, stats.loggamma(shape).cdf).pvalue > 1e-3


@pytest.mark.parametrize("count", [1, 3, 12, 100, 1000])
def test_splits_are_multinomial(count):
    """Token and binomial splits of one count over 4 components: every split sums to the
    count, and the split's mean and covariance are the multinomial's (the token rows of an
    entry, 8 slots each, are joined back into one split)."""
    p = np.array([0.5, 0.3, 0.15, 0.05])
    n = 20000
    logW = jnp.log(jnp.asarray(p))[None, :]
    logH = jnp.zeros((4, n))
    rows, cols = np.zeros(n, np.int64), np.arange(n)
    for max_tokens in (2048, 1):  # tokens, then binomials
        alloc = gp.allocation(rows, cols, np.full(n, count), jnp.float32, max_tokens)
        bucket = alloc.tokens if alloc.tokens is not None else alloc.binomial
        split = gp.split_tokens if alloc.tokens is not None else gp.split_binomial
        with jax.threefry_partitionable(False):  # the sweep's stream
            z = np.asarray(jax.jit(split)(KEY, logW, logH, bucket), np.float64)[:n]  # no padding
        assert np.all(z.sum(axis=1) == count) and np.all(z >= 0)
        se = np.sqrt(count * p * (1 - p) / n)
        assert np.all(np.abs(z.mean(axis=0) - count * p) < 5 * se)
        cov = count * (np.diag(p) - np.outer(p, p))
        np.testing.assert_allclose(np.cov(z.T), cov, atol=0.05 * count, rtol=0.1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_token_split_at_extreme_probabilities(dtype):
    """Components from probability ~1 down to e^-800 (log factors far apart), counts 1 to
    256 (token rows, full and partly filled): every split is non-negative and sums to its
    count, a component of probability below 2^-32 gets no token, a certain one gets them
    all. (Binomial splits: test_splits_are_multinomial.)"""
    jax.config.update("jax_enable_x64", dtype == jnp.float64)
    try:
        logW = jnp.asarray([[0.0, -700.0, -30.0, 0.0]], dtype)
        logH = jnp.asarray(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                                     [-800.0, 0.0, 0.0]]).repeat(3, axis=1), dtype)
        counts = np.array([1, 7, 8, 9, 255, 256, 17, 3, 1])
        cols = np.arange(9)
        alloc = gp.allocation(np.zeros(9, np.int64), cols, counts, dtype)
        with jax.threefry_partitionable(False):
            S_W, S_H = jax.jit(gp.latent_sums)(KEY, logW, logH, alloc)
    finally:
        jax.config.update("jax_enable_x64", False)
    S_H = np.asarray(S_H, np.float64)
    assert np.all(np.isfinite(S_H)) and np.all(S_H >= 0)
    np.testing.assert_array_equal(S_H.sum(axis=0), counts)
    assert S_H[1].sum() == 0 and S_H[2].sum() == 0  # e^-700 and e^-30 < 2^-32 of the rest
    np.testing.assert_array_equal(S_H[0, :3], counts[:3])  # component 3 is e^-800 there


# --------------------------------------------- conditionals against the model's log density
def _log_joint(model, X, W, H, extras=None):
    values = {"W": W, "H": H.T, **(extras or {})}
    return log_density(model.numpyro_model, (X, jnp.ones(X.shape, bool), W.shape[1]), {},
                       values)[0]


def _log_multinomial(z, X, W, H):
    """log Mult(z_ij | X_ij, W_i ∘ H_j / (WH)_ij) summed over entries; z (F, N, K)."""
    p = W[:, None, :] * H.T[None, :, :]
    p = p / p.sum(axis=2, keepdims=True)
    return np.sum(stats.multinomial.logpmf(z, X.astype(int), p))


def _random_split(rng, X, K):
    z = np.stack([[rng.multinomial(x, np.ones(K) / K) for x in row] for row in X])
    return z  # (F, N, K)


def test_factor_conditionals_are_the_models():
    """log p(W' | z, H) − log p(W | z, H) of the sampler's gamma conditional equals the
    augmented joint's difference, log p(X, W, H) (NumPyro's log density of the model) +
    log Mult(z | X, W, H); the same for H."""
    rng = np.random.default_rng(1)
    F, N, K = 5, 6, 2
    X = rng.poisson(4.0, (F, N)).astype(float)
    model = PoissonGamma(a=0.7, rate_W=1.3, rate_H=0.4)
    z = _random_split(rng, X, K)
    H = rng.gamma(2.0, 1.0, (K, N))
    W1, W2 = rng.gamma(2.0, 1.0, (2, F, K))
    # the sampler's conditional: Gamma(a + Σ_j z, b + Σ_j H) per entry
    shape, rate = model.a + z.sum(axis=1), model.rate_W + H.sum(axis=1)[None, :]
    cond = lambda W: np.sum(stats.gamma.logpdf(W, shape, scale=1 / rate))
    joint = lambda W: float(_log_joint(model, X, W, H)) + _log_multinomial(z, X, W, H)
    np.testing.assert_allclose(cond(W2) - cond(W1), joint(W2) - joint(W1), rtol=1e-6)
    W = rng.gamma(2.0, 1.0, (F, K))
    H1, H2 = rng.gamma(2.0, 1.0, (2, K, N))
    shape, rate = model.a + z.sum(axis=0).T, model.rate_H + W.sum(axis=0)[:, None]
    cond = lambda H: np.sum(stats.gamma.logpdf(H, shape, scale=1 / rate))
    joint = lambda H: float(_log_joint(model, X, W, H)) + _log_multinomial(z, X, W, H)
    np.testing.assert_allclose(cond(H2) - cond(H1), joint(H2) - joint(H1), rtol=1e-6)


def test_sampler_conditional_uses_the_gamma_parameters():
    """update_W draws from Gamma(a + S_W, b + M Hᵀ): its draws' mean matches, with a mask."""
    from bnmf.models.counts import DenseCounts
    rng = np.random.default_rng(2)
    F, N, K = 3, 4, 2
    H = rng.gamma(2.0, 1.0, (K, N))
    M = rng.uniform(size=(F, N)) > 0.3
    S_W = rng.integers(0, 5, (F, K)).astype(float)
    counts = DenseCounts(jnp.zeros((F, N)), jnp.asarray(M, jnp.float32))
    a, b = jnp.array([0.5, 2.0]), jnp.array([1.0, 3.0])
    keys = jax.random.split(KEY, 4000)
    draws = np.exp(np.asarray(jax.vmap(lambda k: gp.update_W(
        k, jnp.log(jnp.asarray(H, jnp.float32)), a, b, jnp.asarray(S_W, jnp.float32),
        counts))(keys)))
    shape = np.asarray(a) + S_W
    rate = np.asarray(b) + M @ H.T
    sd = np.sqrt(shape) / rate
    assert np.all(np.abs(draws.mean(axis=0) - shape / rate) < 5 * sd / np.sqrt(4000))


def test_hyperparameter_conditionals_are_the_models():
    """The collapsed shape density p(a | W) (rate integrated out) and the rate's gamma
    conditional p(b | a, W) against NumPyro's log density of the hierarchical model:
    log p(a, b, W, ...) − log p(b | a, W) = log p(a | W) + const for every b."""
    rng = np.random.default_rng(4)
    F, N, K = 7, 5, 2
    X = rng.poisson(3.0, (F, N)).astype(float)
    model = HierarchicalPoissonGamma(shape_scale=0.8, rate_shape=1.5, rate_rate_W=0.7,
                                     rate_rate_H=2.0)
    W, H = rng.gamma(0.6, 1.0, (F, K)), rng.gamma(1.5, 1.0, (K, N))
    extras = {"a_W": np.array([0.4, 1.2]), "b_W": np.array([0.9, 2.5]),
              "a_H": np.array([1.1, 0.8]), "b_H": np.array([0.6, 1.4])}
    prior = gp.HyperPrior(model.shape_scale, model.rate_shape, model.rate_rate_W)

    def rate_conditional(a, b):
        return stats.gamma.logpdf(b, model.rate_shape + F * a,
                                  scale=1 / (model.rate_rate_W + W.sum(axis=0)))

    def implied(a, b):  # log p(a | W) + const, from the joint
        e = {**extras, "a_W": a, "b_W": b}
        return float(_log_joint(model, X, W, H, e)) - np.sum(rate_conditional(a, b))

    collapsed = lambda a: float(np.sum(gp.collapsed_log_shape_density(
        jnp.log(a), F, W.sum(axis=0), np.log(W).sum(axis=0), prior)))
    a1, a2 = np.array([0.4, 1.2]), np.array([0.9, 0.3])
    for b in (np.array([0.9, 2.5]), np.array([3.0, 0.2])):
        # the implied density of log a: p(a) da = p(log a) a dlog a
        lhs = (implied(a2, b) + np.log(a2).sum()) - (implied(a1, b) + np.log(a1).sum())
        np.testing.assert_allclose(collapsed(a2) - collapsed(a1), lhs, rtol=1e-5)


# ------------------------------------------------------------ draws against references
A, B = 2.0, 0.5
rng_c = np.random.default_rng(3)
W_FIXED = rng_c.dirichlet(np.ones(20))[:, None]
X_CONJ = rng_c.poisson(W_FIXED @ np.array([[40.0, 150.0, 300.0, 75.0, 500.0]])).astype(float)


def test_gibbs_matches_the_conjugate_posterior():
    """Rank 1 with W fixed: H_j | X ~ Gamma(a + Σ_i X_ij, b + Σ_i W_i) exactly."""
    data = prepare(X_CONJ, counts=True)
    fit = fit_data(data, 1, PoissonGamma(a=A, rate_W=1.0, rate_H=B), "gibbs", seed=0,
                   dtype="float64", W_fixed=W_FIXED, num_warmup=50, num_samples=2000,
                   num_chains=2)
    draws = fit.idata.posterior["H"].values.reshape(-1, 5)
    alpha, beta = A + X_CONJ.sum(axis=0), B + W_FIXED.sum()
    sd = np.sqrt(alpha) / beta
    assert np.all(np.abs(draws.mean(axis=0) - alpha / beta) < 4 * sd / np.sqrt(1000))
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.1)


@pytest.mark.slow
def test_gibbs_agrees_with_nuts():
    """Posterior means and sds of normalized W and H from Gibbs and NUTS agree within Monte
    Carlo error (standard errors from each method's bulk ESS, 5 se for 99% of entries)."""
    import arviz as az
    X, _, _ = simulate(n_features=12, n_samples=15, rank=2, counts_per_sample=300, seed=5)
    model = PoissonGamma(a=1.0, rate_W=0.3, rate_H=0.05)
    fits = {m: bnmf.fit(X, 2, model=model, method=m, seed=1, **opts) for m, opts in
            {"gibbs": {"num_warmup": 500, "num_samples": 2000, "num_chains": 2},
             "nuts": {"num_warmup": 500, "num_samples": 1000, "num_chains": 2}}.items()}
    ref = np.asarray(fits["nuts"].W)
    perm = bnmf.posterior.align_permutation(np.asarray(fits["gibbs"].W), ref)
    for name in ("W", "H"):
        stat = {}
        for m, fit in fits.items():
            d = fit.idata.posterior[name].values
            d = d[..., perm] if (m == "gibbs" and name == "W") else d
            d = d[..., perm, :] if (m == "gibbs" and name == "H") else d
            ess = az.ess(az.convert_to_dataset(d.reshape(d.shape[:2] + (-1,))))["x"].values
            stat[m] = d.mean(axis=(0, 1)).ravel(), d.std(axis=(0, 1)).ravel(), ess
        (mg, sg, eg), (mn, sn, en) = stat["gibbs"], stat["nuts"]
        se = np.sqrt(sg**2 / eg + sn**2 / en)
        assert np.mean(np.abs(mg - mn) < 5 * se) >= 0.99, name
        # sd of a sd estimate ≈ sd / sqrt(2 ESS)
        se_sd = np.sqrt(sg**2 / (2 * eg) + sn**2 / (2 * en))
        assert np.mean(np.abs(sg - sn) < 5 * se_sd) >= 0.99, name


# ------------------------------------------------------------------ data paths, numerics
def test_sparse_and_masked_input():
    """Sparse input gives the dense fit's draws; a masked entry's value is never read."""
    import scipy.sparse as sp
    X, _, _ = simulate(n_features=15, n_samples=12, rank=2, counts_per_sample=200, seed=2)
    opts = dict(method="gibbs", num_warmup=20, num_samples=30, num_chains=2, seed=3,
                dtype="float64")
    dense = bnmf.fit(X, 2, block_moves=False, **opts)  # block moves need dense counts
    sparse = bnmf.fit(sp.csr_matrix(X), 2, **opts)
    np.testing.assert_allclose(sparse.W, dense.W, rtol=1e-6, atol=1e-9)
    mask = np.ones(X.shape, bool)
    mask[3, 4] = mask[7, 1] = False
    X2 = X.copy()
    X2[3, 4], X2[7, 1] = 1e4, 0.0
    a, b = bnmf.fit(X, 2, mask=mask, **opts), bnmf.fit(X2, 2, mask=mask, **opts)
    np.testing.assert_array_equal(a.idata.posterior["W"].values, b.idata.posterior["W"].values)


# Each case compiles its own sampler (the token layout follows the counts): the two extremes
# run by default, the grid's other four with -m slow.
@pytest.mark.parametrize(("depth", "dtype"), [
    (100_000, "float32"), (1, "float64"),
    *(pytest.param(d, t, marks=pytest.mark.slow)
      for d, t in [(1, "float32"), (100, "float32"), (100, "float64"), (100_000, "float64")])])
def test_no_nan_on_sparse_parts_at_any_depth(depth, dtype):
    """Dirichlet(0.1) parts at 1 to 10⁵ counts per sample, hierarchical model: every draw of
    every site finite and W, H positive."""
    rng = np.random.default_rng(0)
    W = rng.dirichlet(np.full(20, 0.1), 3).T
    H = rng.dirichlet(np.full(3, 0.3), 15).T * depth
    X = rng.poisson(W @ H)
    X[0, 0] += 1  # never an all-zero matrix
    fit = bnmf.fit(X, 3, model="poisson-hierarchical", method="gibbs", num_warmup=30,
                   num_samples=20, num_chains=2, dtype=dtype)
    for name, value in fit.idata.posterior.data_vars.items():
        assert np.all(np.isfinite(value.values)), name
    assert np.all(fit.idata.posterior["W"].values >= 0)


def test_gibbs_refuses_other_models_and_bad_options():
    X = np.random.default_rng(0).poisson(3.0, (10, 8))
    with pytest.raises(ValueError, match="has no method='gibbs'.*supports method="):
        bnmf.fit(X, 2, model="horseshoe", method="gibbs")
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        bnmf.fit(X, 2, method="gibbs", num_chains=0)
    with pytest.raises(ValueError, match="non-negative integers"):
        gp.allocation(np.zeros(1, int), np.zeros(1, int), np.array([1.5]), jnp.float32)
    with pytest.raises(ValueError, match="orbit_moves must be True or False"):
        bnmf.fit(X, 2, method="gibbs", orbit_moves="yes")
    with pytest.raises(ValueError, match="depth must be True or False"):
        HierarchicalPoissonGamma(depth=1)


def test_hierarchical_model_is_never_silently_replaced():
    """MAP has no mode and CAVI no closed form for the learned shapes: both refuse."""
    X = np.random.default_rng(0).poisson(3.0, (10, 8))
    with pytest.raises(ValueError, match="method='map' has no mode"):
        bnmf.fit(X, 2, model="poisson-hierarchical", method="map")
    with pytest.raises(ValueError, match="has no method='cavi'"):
        bnmf.fit(X, 2, model="poisson-hierarchical", method="cavi")


def test_same_seed_same_draws():
    X, _, _ = simulate(n_features=10, n_samples=8, rank=2, counts_per_sample=100, seed=1)
    opts = dict(method="gibbs", num_warmup=10, num_samples=10, num_chains=2, seed=4)
    a, b = bnmf.fit(X, 2, **opts), bnmf.fit(X, 2, **opts)
    np.testing.assert_array_equal(a.idata.posterior["H"].values, b.idata.posterior["H"].values)
    assert a.info["block_moves"] is True  # on by default for dense counts
    assert a.info["orbit_moves"] is False
    c, d = (bnmf.fit(X, 2, **opts, orbit_moves=True) for _ in range(2))
    np.testing.assert_array_equal(c.idata.posterior["W"].values, d.idata.posterior["W"].values)
    assert c.info["orbit_moves"] is True
    assert not np.array_equal(c.idata.posterior["W"].values, a.idata.posterior["W"].values)


# ------------------------------------------------------------------------ block moves
def test_block_column_density_is_the_models():
    """The block moves' target, log π(log h_j | W) per column, against NumPyro's log density
    of the model in log space (Jacobian Σ log h): differences between two H agree column by
    column (H changed in one column at a time), with and without a mask."""
    from bnmf.inference.gibbs_block import column_log_density
    rng = np.random.default_rng(7)
    F, N, K = 6, 4, 3
    X = rng.poisson(5.0, (F, N)).astype(float)
    model = PoissonGamma(a=0.6, rate_W=1.1, rate_H=0.3)
    W = rng.gamma(1.0, 1.0, (F, K))
    H1, H2 = rng.gamma(1.0, 2.0, (2, K, N))
    a, b = np.full(K, model.a), np.full(K, model.rate_H)
    mask = rng.uniform(size=X.shape) > 0.25
    for weight in (None, mask.astype(float)):
        observed = np.ones(X.shape, bool) if weight is None else mask

        def joint(H, observed=observed):
            values = {"W": W, "H": H.T}
            lp = log_density(model.numpyro_model, (X, jnp.asarray(observed), K), {}, values)[0]
            return float(lp) + np.log(H).sum()

        ours = np.asarray(column_log_density(jnp.log(H2), W, X, weight, a, b)
                          - column_log_density(jnp.log(H1), W, X, weight, a, b))
        for j in range(N):
            H = H1.copy()
            H[:, j] = H2[:, j]
            np.testing.assert_allclose(ours[j], joint(H) - joint(H1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank", [1, 4, 17])
def test_block_linear_algebra_matches_lapack(rank):
    """The block moves' per-column Cholesky factor and triangular solves (written out entry by
    entry up to UNROLLED_MAX_RANK, LAPACK above it) equal NumPy's on random SPD systems."""
    from bnmf.inference.gibbs_block import cholesky_columns, solve_lower, solve_upper
    rng = np.random.default_rng(rank)
    A = rng.normal(size=(7, rank, rank))
    P = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(rank)      # (n, K, K), SPD
    rhs = rng.normal(size=(rank, 7))
    with jax.enable_x64(True):
        L = np.asarray(cholesky_columns(jnp.asarray(np.moveaxis(P, 0, -1))))
        y = np.asarray(solve_lower(jnp.asarray(L), jnp.asarray(rhs)))
        x = np.asarray(solve_upper(jnp.asarray(L), jnp.asarray(rhs)))
    L_np = np.linalg.cholesky(P)
    np.testing.assert_allclose(np.moveaxis(L, -1, 0), L_np, rtol=1e-10, atol=1e-12)
    for j in range(7):
        np.testing.assert_allclose(y[:, j], np.linalg.solve(L_np[j], rhs[:, j]), rtol=1e-9)
        np.testing.assert_allclose(x[:, j], np.linalg.solve(L_np[j].T, rhs[:, j]), rtol=1e-9)


def test_block_moves_alone_leave_the_conditional_invariant():
    """W fixed, rank 2: H's columns from the block moves alone (repeated from one start)
    match the latent-count sweep's draws (tested above against the conjugate posterior and
    the model's density) in mean and sd within Monte Carlo error."""
    from bnmf.inference.gibbs_block import block_columns
    rng = np.random.default_rng(8)
    W = rng.dirichlet(np.full(12, 0.5), 2).T
    X = rng.poisson(W @ rng.gamma(1.0, 60.0, (2, 5))).astype(float)
    a, b = jnp.array([0.7, 1.3]), jnp.array([0.02, 0.05])
    def step(u, key):
        u = block_columns(key, jnp.asarray(W), u, jnp.asarray(X), None, a, b)[0]
        return u, jnp.exp(u)

    block = np.asarray(jax.lax.scan(step, jnp.zeros((2, 5)), jax.random.split(KEY, 3000))[1])
    block = block[200:]
    # the latent-count sweep alone, same conditional (model hyperparameters set to a, b)
    from bnmf.inference import gibbs as g
    from bnmf.models.counts import DenseCounts
    rows, cols = np.nonzero(X)
    alloc = gp.allocation(rows, cols, X[rows, cols], jnp.float64, gp.MAX_TOKENS)
    prior = gp.HyperPrior(1.0, 1.0, 1.0)
    gdata = g.GibbsData(alloc, DenseCounts(jnp.asarray(X), None), prior, prior, jnp.zeros(5))
    state = g.gibbs_init(KEY, jnp.asarray(W), jnp.ones((2, 5)),
                         {"a_W": np.ones(2), "b_W": np.ones(2), "a_H": a, "b_H": b})
    def sweep(state, _):
        state = g.gibbs_step(state, gdata, learn=False, sample_W=False)
        return state, jnp.exp(state.logH)

    ref = np.asarray(jax.lax.scan(sweep, state, None, length=3000)[1])[200:]
    import arviz as az
    ess = lambda d: az.ess(az.convert_to_dataset(d.reshape(1, d.shape[0], -1)))["x"].values
    se = np.sqrt(block.var(axis=0).ravel() / ess(block) + ref.var(axis=0).ravel() / ess(ref))
    assert np.all(np.abs(block.mean(axis=0) - ref.mean(axis=0)).ravel() < 5 * se)
    np.testing.assert_allclose(block.std(axis=0), ref.std(axis=0), rtol=0.15)


def test_block_moves_need_dense_counts():
    import scipy.sparse as sp
    X, _, _ = simulate(n_features=10, n_samples=8, rank=2, counts_per_sample=100, seed=1)
    opts = dict(method="gibbs", num_warmup=10, num_samples=10, num_chains=1, seed=0)
    with pytest.raises(ValueError, match="block_moves=True needs dense counts"):
        bnmf.fit(sp.csr_matrix(X), 2, block_moves=True, **opts)
    assert bnmf.fit(sp.csr_matrix(X), 2, **opts).info["block_moves"] is False
    with pytest.raises(ValueError, match="block_moves must be None, True or False"):
        bnmf.fit(X, 2, block_moves="yes", **opts)


# ------------------------------------------------------------- depths and shear moves
def test_depths_dense_sparse_and_masked():
    """Relative depths: (1 + observed counts) / (1 + observed entries) over its mean, the same
    from SciPy sparse input; an empty sample gets a small positive depth; masked entries are
    not read."""
    import scipy.sparse as sp

    from bnmf.models.counts import sparse_counts
    from bnmf.models.hierarchical import sample_depth
    rng = np.random.default_rng(11)
    X = rng.poisson(rng.gamma(1.0, 20.0, 6), (10, 6)).astype(float)
    X[:, 2] = 0.0
    per_entry = (1 + X.sum(axis=0)) / (1 + X.shape[0])
    expected = per_entry / per_entry.mean()
    np.testing.assert_allclose(sample_depth(jnp.asarray(X)), expected, rtol=1e-6)
    assert sample_depth(jnp.asarray(X))[2] > 0
    sparse = sparse_counts(sp.csr_matrix(X), dtype="float64")
    np.testing.assert_allclose(sample_depth(sparse), expected, rtol=1e-6)
    mask = np.ones(X.shape, bool)
    mask[0, 1] = False
    X2 = X.copy()
    X2[0, 1] = 1e6
    np.testing.assert_allclose(sample_depth(jnp.asarray(X), mask),
                               sample_depth(jnp.asarray(X2), mask), rtol=1e-12)
    assert not np.allclose(sample_depth(jnp.asarray(X), mask), expected)


def test_depth_scaled_H_conditionals_are_the_models():
    """With depths s_j, the sampler's H conditional Gamma(a_k + S_kj, b_k / s_j + (Wᵀ 1)_k)
    and its rate conditional Gamma(α0 + n a_k, β0 + Σ_j H_kj / s_j) against NumPyro's log
    density of the hierarchical model (whose depths come from the same X)."""
    from bnmf.models.hierarchical import sample_depth
    rng = np.random.default_rng(12)
    F, N, K = 6, 5, 2
    X = rng.poisson(rng.gamma(1.0, 8.0, N), (F, N)).astype(float)
    model = HierarchicalPoissonGamma(rate_shape=1.5, rate_rate_W=0.7, rate_rate_H=2.0, depth=True)
    s = np.asarray(sample_depth(jnp.asarray(X)))
    assert s.std() > 0.3  # the depths differ: the test can see them
    extras = {"a_W": np.array([0.4, 1.2]), "b_W": np.array([0.9, 2.5]),
              "a_H": np.array([1.1, 0.8]), "b_H": np.array([0.6, 1.4])}
    W = rng.gamma(1.0, 1.0, (F, K))
    z = _random_split(rng, X, K)
    H1, H2 = rng.gamma(2.0, 1.0, (2, K, N))
    # the sampler's own draw parameters: update_H with the per-entry rates gibbs_step passes
    rate = extras["b_H"][:, None] / s[None, :]
    shape = extras["a_H"][:, None] + z.sum(axis=0).T
    cond = lambda H: np.sum(stats.gamma.logpdf(H, shape, scale=1 / (rate + W.sum(axis=0)[:, None])))
    joint = lambda H: (float(_log_joint(model, X, W, H, extras))
                       + _log_multinomial(z, X, W, H))
    np.testing.assert_allclose(cond(H2) - cond(H1), joint(H2) - joint(H1), rtol=1e-6)
    # rate of H: Gamma(α0 + N a, β0 + Σ_j H / s)
    H = H1
    rate_cond = lambda b: np.sum(stats.gamma.logpdf(
        b, model.rate_shape + N * extras["a_H"],
        scale=1 / (model.rate_rate_H + (H / s[None, :]).sum(axis=1))))
    joint_b = lambda b: float(_log_joint(model, X, W, H, {**extras, "b_H": b}))
    b1, b2 = np.array([0.6, 1.4]), np.array([2.0, 0.3])
    np.testing.assert_allclose(rate_cond(b2) - rate_cond(b1), joint_b(b2) - joint_b(b1),
                               rtol=1e-6)
    # and the sampler's update draws from the per-entry rates: its mean matches
    from bnmf.models.counts import DenseCounts
    counts = DenseCounts(jnp.zeros((F, N)), None)
    draws = np.exp(np.asarray(jax.vmap(lambda k: gp.update_H(
        k, jnp.log(jnp.asarray(W)), jnp.asarray(extras["a_H"]), jnp.asarray(rate),
        jnp.asarray(z.sum(axis=0).T), counts))(jax.random.split(KEY, 4000))))
    full_rate = rate + W.sum(axis=0)[:, None]
    sd = np.sqrt(shape) / full_rate
    assert np.all(np.abs(draws.mean(axis=0) - shape / full_rate) < 5 * sd / np.sqrt(4000))


def test_shear_keeps_WH_and_its_density_is_the_models():
    """A shear W_l + εW_k, H_k − εH_l keeps W H, and its target log π(ε) − log π(0) equals
    NumPyro's log density of the hierarchical model at the sheared point minus at the
    current one (the likelihood unchanged, the prior with the depths); outside the bounds
    π is 0."""
    from bnmf.inference.gibbs_orbit import log_shift, shear_bounds, shear_log_density
    from bnmf.models.hierarchical import sample_depth
    rng = np.random.default_rng(13)
    F, N, K = 7, 6, 3
    X = rng.poisson(rng.gamma(1.0, 8.0, N), (F, N)).astype(float)
    model = HierarchicalPoissonGamma(rate_rate_W=0.7, rate_rate_H=2.0, depth=True)
    s = np.asarray(sample_depth(jnp.asarray(X)))
    extras = {"a_W": np.array([0.4, 1.2, 2.0]), "b_W": np.array([0.9, 2.5, 1.0]),
              "a_H": np.array([1.1, 0.8, 0.5]), "b_H": np.array([0.6, 1.4, 1.0])}
    W, H = rng.gamma(1.0, 1.0, (F, K)), rng.gamma(1.0, 1.0, (K, N))
    logW, logH = jnp.log(jnp.asarray(W)), jnp.log(jnp.asarray(H))
    rate_H = extras["b_H"][:, None] / s[None, :]
    for k, l in ((0, 1), (2, 0), (1, 2)):
        args = (logW[:, k], logW[:, l], logH[k], logH[l], extras["a_W"][l],
                extras["b_W"][l], extras["a_H"][k], jnp.asarray(rate_H[k]))
        lo, hi = (float(v) for v in shear_bounds(*args[:4]))
        assert lo < 0 < hi
        for eps in (0.6 * lo, 0.3 * hi, 0.97 * hi):
            W2, H2 = W.copy(), H.copy()
            W2[:, l] = np.exp(log_shift(logW[:, l], logW[:, k], eps))
            H2[k] = np.exp(log_shift(logH[k], logH[l], -eps))
            np.testing.assert_allclose(W2 @ H2, W @ H, rtol=1e-5)  # float32
            lhs = float(shear_log_density(eps, *args) - shear_log_density(0.0, *args))
            rhs = float(_log_joint(model, X, W2, H2, extras) - _log_joint(model, X, W, H, extras))
            np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)
        for eps in (1.01 * lo, 1.01 * hi):
            assert shear_log_density(eps, *args) == -np.inf


def test_shear_moves_leave_the_prior_invariant():
    """The likelihood is constant along the orbits, so shear moves alone keep any prior of
    independent gamma entries invariant: exact prior draws, sheared, are still prior draws
    (Kolmogorov–Smirnov per entry; shapes below and above 1, per-entry rates of H)."""
    from bnmf.inference.gibbs_orbit import shear_moves
    rng = np.random.default_rng(14)
    F, N, K, n = 3, 2, 3, 4000
    a_W, b_W = np.array([0.6, 1.5, 3.0]), np.array([1.0, 2.0, 0.5])
    a_H = np.array([2.0, 0.7, 1.2])
    rate_H = np.array([[1.0, 0.5], [2.0, 1.0], [0.8, 3.0]])
    W = rng.gamma(a_W, 1 / b_W, (n, F, K))
    H = rng.gamma(a_H[:, None], 1 / rate_H, (n, K, N))
    move = jax.jit(jax.vmap(lambda key, lw, lh: shear_moves(
        key, lw, lh, jnp.asarray(a_W), jnp.asarray(b_W), jnp.asarray(a_H),
        jnp.asarray(rate_H))))
    logW, logH = move(jax.random.split(KEY, n), jnp.log(jnp.asarray(W)), jnp.log(jnp.asarray(H)))
    W2, H2 = np.exp(np.asarray(logW)), np.exp(np.asarray(logH))
    assert np.mean(np.abs(W2 - W) > 1e-6 * W) > 0.5  # the moves move
    p_values = [stats.kstest(W2[:, i, k], "gamma", (a_W[k], 0, 1 / b_W[k])).pvalue
                for i in range(F) for k in range(K)]
    p_values += [stats.kstest(H2[:, k, j], "gamma", (a_H[k], 0, 1 / rate_H[k, j])).pvalue
                 for k in range(K) for j in range(N)]
    # 15 tests: all above 1e-3 unless the moves change the distribution
    assert min(p_values) > 1e-3, np.round(p_values, 4)


def test_rescaling_density_is_the_models():
    """log π(t) of rescaling components (W_k e^t, H_k e^−t) against NumPyro's log density:
    with fixed rates, log p(X, W(t), H(t)) + (F − N) t; with learned rates integrated out,
    log p(X, W(t), H(t), a, b) − log p(b | a, W(t), H(t)) + (F − N) t, for any b (the
    depths in H's rates, and the Jacobian, included)."""
    from bnmf.inference.gibbs_orbit import scale_log_density
    from bnmf.models.hierarchical import sample_depth
    rng = np.random.default_rng(15)
    F, N, K = 7, 5, 2
    X = rng.poisson(rng.gamma(1.0, 8.0, N), (F, N)).astype(float)
    W, H = rng.gamma(1.0, 1.0, (F, K)), rng.gamma(1.0, 1.0, (K, N))
    t1, t2 = np.array([0.3, -0.8]), np.array([-0.5, 1.1])
    moved = lambda t: (W * np.exp(t)[None, :], H * np.exp(-t)[:, None])
    a_W, a_H = np.array([0.4, 1.7]), np.array([1.1, 0.6])
    # fixed rates: the poisson model
    fixed = PoissonGamma(a=0.7, rate_W=1.3, rate_H=0.4)
    lhs = lambda t: float(np.sum(scale_log_density(
        jnp.asarray(t), jnp.log(jnp.asarray(W.sum(0))), jnp.log(jnp.asarray(H.sum(1))), F, N,
        0.7, 1.3, 0.7, 0.4, None, None, False)))
    rhs = lambda t: float(_log_joint(fixed, X, *moved(t))) + (F - N) * t.sum()
    np.testing.assert_allclose(lhs(t2) - lhs(t1), rhs(t2) - rhs(t1), rtol=1e-5)
    # learned rates: the hierarchical model, rates integrated out
    model = HierarchicalPoissonGamma(rate_shape=1.5, rate_rate_W=0.7, rate_rate_H=2.0, depth=True)
    s = np.asarray(sample_depth(jnp.asarray(X)))
    prior_W = gp.HyperPrior(1.0, model.rate_shape, model.rate_rate_W)
    prior_H = gp.HyperPrior(1.0, model.rate_shape, model.rate_rate_H)
    lhs = lambda t: float(np.sum(scale_log_density(
        jnp.asarray(t), jnp.log(jnp.asarray(W.sum(0))),
        jnp.log(jnp.asarray((H / s[None, :]).sum(1))), F, N, jnp.asarray(a_W), None,
        jnp.asarray(a_H), None, prior_W, prior_H, True)))

    def rhs(t, b_W, b_H):
        W_t, H_t = moved(t)
        extras = {"a_W": a_W, "b_W": b_W, "a_H": a_H, "b_H": b_H}
        conditional = (stats.gamma.logpdf(b_W, 1.5 + F * a_W, scale=1 / (0.7 + W_t.sum(0)))
                       + stats.gamma.logpdf(b_H, 1.5 + N * a_H,
                                            scale=1 / (2.0 + (H_t / s[None, :]).sum(1))))
        return (float(_log_joint(model, X, W_t, H_t, extras)) - conditional.sum()
                + (F - N) * t.sum())

    for b_W, b_H in ((np.array([0.9, 2.5]), np.array([0.6, 1.4])),
                     (np.array([3.0, 0.2]), np.array([1.5, 0.1]))):
        np.testing.assert_allclose(lhs(t2) - lhs(t1), rhs(t2, b_W, b_H) - rhs(t1, b_W, b_H),
                                   rtol=1e-4)  # float32


def test_rescaling_moves_leave_the_hierarchical_prior_invariant():
    """Exact draws of (b, W, H) from the hierarchical prior (shapes fixed, depths s), rescaled
    with the rates integrated out and b_W, b_H then redrawn from their conditionals, are still
    prior draws: two-sample KS against fresh prior draws, per component, for W's and H's
    column sums and entries and for the rates."""
    from bnmf.inference.gibbs_orbit import scale_moves
    rng = np.random.default_rng(16)
    F, N, K, n = 4, 3, 2, 4000
    a_W, a_H, s = np.array([0.6, 2.0]), np.array([1.5, 0.8]), np.array([0.5, 1.0, 2.0])
    prior_W, prior_H = gp.HyperPrior(1.0, 2.0, 1.5), gp.HyperPrior(1.0, 3.0, 0.5)

    def prior_draws(rng):
        b_W = rng.gamma(2.0, 1 / 1.5, (n, K))
        b_H = rng.gamma(3.0, 1 / 0.5, (n, K))
        W = rng.gamma(a_W, 1 / b_W[:, None, :], (n, F, K))
        H = rng.gamma(a_H[None, :, None], s[None, None, :] / b_H[:, :, None], (n, K, N))
        return b_W, b_H, W, H

    b_W, b_H, W, H = prior_draws(rng)
    move = jax.jit(jax.vmap(lambda key, lw, lh, bw, bh: scale_moves(
        key, lw, lh, jnp.asarray(a_W), bw, jnp.asarray(a_H), bh, jnp.log(jnp.asarray(s)),
        prior_W, prior_H, True)))
    keys = jax.random.split(KEY, n)
    logW, logH, b_W2 = move(keys, jnp.log(jnp.asarray(W)), jnp.log(jnp.asarray(H)),
                            jnp.asarray(b_W), jnp.asarray(b_H))
    W2, H2 = np.exp(np.asarray(logW)), np.exp(np.asarray(logH))
    b_H2 = rng.gamma(3.0 + N * a_H, 1 / (0.5 + (H2 / s).sum(axis=2)))  # the sweep's next draw
    assert np.mean(np.abs(np.log(W2[:, 0] / W[:, 0])) > 1e-3) > 0.5  # the moves move
    ref_b_W, ref_b_H, ref_W, ref_H = prior_draws(np.random.default_rng(17))
    p_values = []
    for k in range(K):
        for ours, ref in ((np.asarray(b_W2)[:, k], ref_b_W[:, k]), (b_H2[:, k], ref_b_H[:, k]),
                          (W2[:, :, k].sum(1), ref_W[:, :, k].sum(1)),
                          (H2[:, k].sum(1), ref_H[:, k].sum(1)), (W2[:, 0, k], ref_W[:, 0, k]),
                          (H2[:, k, 2], ref_H[:, k, 2])):
            p_values.append(stats.ks_2samp(ours, ref).pvalue)
    assert min(p_values) > 1e-3, np.round(p_values, 4)
