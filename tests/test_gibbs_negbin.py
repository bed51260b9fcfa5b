"""The negative-binomial Gibbs sampler: its augmentation and φ conditional against the model's
own density, its draws against NUTS and the truth, masks, numerics and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import aligned_cosines
from numpyro.infer.util import log_density
from scipy import stats

import bnmf
from bnmf.data import prepare
from bnmf.fitting import fit_data
from bnmf.inference import gibbs_negbin as gn
from bnmf.models import NegativeBinomial
from bnmf.models.negbin import DISPERSIONS

# short chains on purpose: their convergence warnings are not what these tests check
pytestmark = pytest.mark.filterwarnings("ignore::bnmf.BnmfWarning")
PHI_SHAPES = {"feature": lambda F, N: (F,), "sample": lambda F, N: (N,), "shared": lambda F, N: ()}


def _nb_data(F=40, N=150, K=3, seed=0, counts=2000.0, phi_range=(2.0, 50.0)):
    """NB counts with one φ per feature, log-uniform on ``phi_range``: X, W, H, φ."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, (F, K))
    W /= W.sum(axis=0)
    H = rng.dirichlet(np.ones(K), N).T * counts
    phi = np.exp(rng.uniform(*np.log(phi_range), F))
    X = rng.poisson(rng.gamma(phi[:, None], (W @ H) / phi[:, None])).astype(float)
    return X, W, H, phi


def _x64(on: bool):
    jax.config.update("jax_enable_x64", on)


# ------------------------------------------------------------------ the sweep's mathematics
def test_multiplier_augmentation_is_the_models_likelihood():
    """For any multiplier g: log Poisson(x | g μ) + log Gamma(g | φ, φ) − log p(g | x, μ, φ)
    is log NB(x | μ, φ) of NumPyro's NegativeBinomial2, the model's likelihood: the conditional
    of g is the right one and the augmentation marginalizes to the model."""
    _x64(True)
    try:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.negative_binomial(2, 0.05, 500).astype(float))
        mu = jnp.asarray(rng.gamma(1.0, 40.0, 500))
        phi = jnp.asarray(np.exp(rng.uniform(np.log(0.05), np.log(1e5), 500)))
        g = jnp.asarray(rng.gamma(2.0, 0.5, 500))
        shape, rate = gn.multiplier_conditional(x, mu, phi)
        augmented = (dist.Poisson(g * mu).log_prob(x) + dist.Gamma(phi, phi).log_prob(g)
                     - dist.Gamma(shape, rate).log_prob(g))
        reference = dist.NegativeBinomial2(mu, phi).log_prob(x)
        np.testing.assert_allclose(augmented, reference, rtol=1e-7, atol=1e-6)
    finally:
        _x64(False)


@pytest.mark.parametrize("dispersion", DISPERSIONS)
@pytest.mark.parametrize("masked", [False, True])
def test_dispersion_conditional_is_the_models_log_density(dispersion, masked):
    """Σ over groups of the slice draw's target in u = log φ equals the NumPyro model's
    log density plus the Jacobian Σ u, up to a constant free of φ (checked at three φ)."""
    _x64(True)
    try:
        rng = np.random.default_rng(1)
        F, N, K = 7, 9, 2
        model = NegativeBinomial(a=1.3, rate_W=0.7, rate_H=1.1, dispersion=dispersion,
                                 phi_shape=1.5, phi_rate=0.02)
        W, H = rng.gamma(2.0, 1.0, (F, K)), rng.gamma(2.0, 1.0, (K, N))
        X = rng.negative_binomial(3, 0.3, (F, N)).astype(float)
        M = rng.uniform(size=(F, N)) < 0.7 if masked else np.ones((F, N), bool)
        mean = jnp.asarray(W @ H)
        gaps = []
        for seed in range(3):
            phi = np.random.default_rng(10 + seed).gamma(2.0, 3.0, PHI_SHAPES[dispersion](F, N))
            u = np.log(np.reshape(phi, -1))
            target = sum(float(gn.dispersion_log_density(
                jnp.asarray(u[g]), gn.by_group(jnp.asarray(X), dispersion)[g],
                gn.by_group(jnp.asarray(M), dispersion)[g], gn.by_group(mean, dispersion)[g],
                model)) for g in range(u.size))
            values = {"W": jnp.asarray(W), "H": jnp.asarray(H.T), "phi": jnp.asarray(phi)}
            ld = float(log_density(model.numpyro_model, (jnp.asarray(X), jnp.asarray(M), K),
                                   {}, values)[0])
            gaps.append(target - (ld + u.sum()))
        # NumPyro's NB density goes through JAX's log-beta, off by up to ~1e-6 an entry in
        # float64 (tests/test_negbin.py); the prior's φ terms alone move the gap by > 0.1
        np.testing.assert_allclose(gaps, gaps[0], rtol=0, atol=1e-4)
    finally:
        _x64(False)


@pytest.mark.parametrize("masked", [False, True])
def test_block_target_is_the_models_conditional_given_the_multipliers(masked):
    """The block moves' target for H's columns, from the pseudo-counts X / g and weights g,
    equals log p(H | W, g, X) of the augmented model (Poisson(X | g μ) on observed entries
    and the gamma prior of log H, Jacobian included) up to a constant free of H."""
    from bnmf.inference.gibbs_block import column_log_density
    _x64(True)
    try:
        rng = np.random.default_rng(3)
        F, N, K = 9, 7, 3
        W = jnp.asarray(rng.gamma(1.0, 1.0, (F, K)))
        X = jnp.asarray(rng.negative_binomial(2, 0.2, (F, N)).astype(float))
        M = jnp.asarray(rng.uniform(size=(F, N)) < 0.75 if masked else np.ones((F, N), bool))
        X = jnp.where(M, X, 0.0)
        g = jnp.asarray(rng.gamma(2.0, 0.5, (F, N)))
        a, b = jnp.asarray([0.7, 1.2, 2.0]), jnp.asarray([0.5, 1.0, 3.0])
        pseudo, weight = gn.block_pseudo_counts(X, M, g)
        gaps = []
        for seed in range(3):
            u = jnp.asarray(np.random.default_rng(20 + seed).normal(0.0, 1.0, (K, N)))
            mean = W @ jnp.exp(u)
            reference = (jnp.sum(jnp.where(M, dist.Poisson(g * mean).log_prob(X), 0.0), axis=0)
                         + jnp.sum(dist.Gamma(a[:, None], b[:, None]).log_prob(jnp.exp(u))
                                   + u, axis=0))
            gaps.append(np.asarray(column_log_density(u, W, pseudo, weight, a, b) - reference))
        np.testing.assert_allclose(gaps[1], gaps[0], atol=1e-9)
        np.testing.assert_allclose(gaps[2], gaps[0], atol=1e-9)
    finally:
        _x64(False)


def test_dispersion_update_leaves_its_conditional_invariant():
    """Started from exact draws of φ's conditional (the posterior of one shared φ given W H
    and the counts, drawn on a fine grid), one update_dispersion step keeps that law (KS)."""
    rng = np.random.default_rng(2)
    model = NegativeBinomial(a=1.0, rate_W=1.0, rate_H=1.0, dispersion="shared",
                             phi_shape=1.0, phi_rate=0.01)
    mean = jnp.asarray(rng.gamma(2.0, 5.0, (6, 8)), jnp.float32)
    X = jnp.asarray(rng.poisson(rng.gamma(4.0, np.asarray(mean) / 4.0)), jnp.float32)
    M = jnp.ones(X.shape, bool)
    grid = np.linspace(-4.0, 8.0, 6001)
    logp = np.array([float(gn.dispersion_log_density(jnp.float32(u), X.reshape(-1),
                                                     M.reshape(-1), mean.reshape(-1), model))
                     for u in grid])
    p = np.exp(logp - logp.max())
    cdf = np.cumsum(p) / p.sum()
    start = np.interp(rng.uniform(size=2000), cdf, grid)
    step = jax.jit(jax.vmap(lambda k, u: jnp.log(gn.update_dispersion(
        k, jnp.exp(u), X, M, mean, model))))
    moved = np.asarray(step(jax.random.split(jax.random.PRNGKey(3), 2000),
                            jnp.asarray(start, jnp.float32)))
    law = lambda v: np.interp(v, grid, cdf)
    assert stats.kstest(start, law).pvalue > 1e-3  # the reference draws themselves
    assert stats.kstest(moved, law).pvalue > 1e-3
    assert np.mean(np.abs(moved - start) > 1e-6) > 0.9  # and it does move


# ------------------------------------------------------------------ against NUTS, the truth
def test_gibbs_agrees_with_nuts():
    """(About 20 s.) 8 × 10, rank 2, one shared φ: posterior means and sds of normalized W
    and H and of φ from Gibbs and NUTS agree within Monte Carlo error (standard errors from
    each method's bulk ESS and the draws' kurtosis, 5 se for 99% of entries)."""
    import arviz as az
    X, _, _, _ = _nb_data(F=8, N=10, K=2, counts=300.0, seed=5, phi_range=(5.0, 5.0))
    # 4 chains, every 4th sweep: without block moves the sweep mixed slowly (bulk ESS ~230 of
    # 12,000 unthinned draws here), and the sds of the skewed W entries need the tails explored
    opts = {"gibbs": {"num_warmup": 1000, "num_samples": 1500, "thin": 4, "num_chains": 4},
            "nuts": {"num_warmup": 500, "num_samples": 1000, "num_chains": 2}}
    fits = {m: bnmf.fit(X, 2, model="negbin", dispersion="shared", method=m, seed=1,
                        progress=False, **o) for m, o in opts.items()}
    perm = bnmf.posterior.align_permutation(np.asarray(fits["gibbs"].W),
                                            np.asarray(fits["nuts"].W))
    for name in ("W", "H", "phi"):
        stat = {}
        for m, fit in fits.items():
            d = fit.idata.posterior[name].values
            if m == "gibbs" and name == "W":
                d = d[..., perm]
            if m == "gibbs" and name == "H":
                d = d[..., perm, :]
            if name == "phi":
                d = np.log(d)  # heavy right tail: compare on the log scale
            d = d.reshape(d.shape[:2] + (-1,))
            ess = az.ess(az.convert_to_dataset(d))["x"].values
            flat = d.reshape(-1, d.shape[-1])
            stat[m] = (flat.mean(0), flat.std(0), ess,
                       stats.kurtosis(flat, axis=0, fisher=False))
        (mg, sg, eg, kg), (mn, sn, en, kn) = stat["gibbs"], stat["nuts"]
        se = np.sqrt(sg**2 / eg + sn**2 / en)
        assert np.mean(np.abs(mg - mn) < 5 * se) >= 0.99, name
        # se of a sample sd: sd · sqrt((κ − 1) / 4n) for kurtosis κ (3, the normal's, gives
        # the familiar sd / sqrt(2n)); W's and H's small entries are skewed, κ up to ~10
        se_sd = np.sqrt(sg**2 * (kg - 1) / (4 * eg) + sn**2 * (kn - 1) / (4 * en))
        assert np.mean(np.abs(sg - sn) < 5 * se_sd) >= 0.99, name


def test_recovers_known_parts_and_dispersions():
    """NB data (φ per feature in [2, 50]): Hungarian-matched cosines above 0.95, log φ's
    posterior mean correlated with the truth, diagnostics in fit.info, and through method=None
    (the model's exact sampler is its default above NUTS's size)."""
    X, W, _, phi = _nb_data(F=40, N=150, K=3, counts=2000.0, seed=0)
    fit = bnmf.fit(X, 3, model="negbin", num_warmup=200, num_samples=100, num_chains=2,
                   seed=0, progress=False)
    assert fit.info["algorithm"] == "gibbs" and fit.info["sampler"] == "negbin-gamma-poisson"
    assert fit.info["method_choice"].startswith("gibbs")
    cos, _ = aligned_cosines(fit.W, W)
    assert cos.min() > 0.95, cos
    phi_mean = fit.idata.posterior["phi"].mean(("chain", "draw")).values
    assert fit.idata.posterior["phi"].dims == ("chain", "draw", "feature")
    assert np.corrcoef(np.log(phi_mean), np.log(phi))[0, 1] > 0.5
    assert {"rhat_max_W", "ess_min_H"} <= set(fit.info["diagnostics"])


def test_fixed_W():
    X, W, _, _ = _nb_data(F=20, N=15, K=2, counts=500.0, seed=4)
    fit = fit_data(prepare(X), 2, NegativeBinomial(), "gibbs", W_fixed=W, num_warmup=50,
                   num_samples=20, num_chains=2, progress=False)
    draws = fit.idata.posterior["W"].values
    np.testing.assert_allclose(draws, np.broadcast_to(W / W.sum(0), draws.shape), rtol=1e-5)
    assert fit.info["sample_W"] is False
    assert np.all(np.isfinite(fit.idata.posterior["H"].values))


# ------------------------------------------------------------------ data paths, numerics
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_nan_at_any_depth_and_sparsity(dtype):
    """1 to 10⁵ counts per sample, Dirichlet(0.1) parts, dense and masked: every draw finite,
    W, H and φ positive."""
    rng = np.random.default_rng(8)
    W = rng.dirichlet(np.full(30, 0.1), 3).T
    mask = rng.uniform(size=(30, 25)) > 0.2
    for depth in (1.0, 1e5):
        H = rng.gamma(0.8, depth / 0.8, (3, 25))
        X = rng.poisson(rng.gamma(3.0, (W @ H) / 3.0)).astype(float)
        X[0, 0] += 1  # never all zero
        for m in (None, mask):
            fit = bnmf.fit(X, 3, model="negbin", method="gibbs", mask=m, num_warmup=50,
                           num_samples=30, num_chains=2, dtype=dtype, progress=False)
            for name, value in fit.idata.posterior.data_vars.items():
                assert np.all(np.isfinite(value.values)), (depth, name)
            for name in ("W", "H", "phi"):
                assert np.all(fit.idata.posterior[name].values >= 0), (depth, name)
            assert np.all(fit.idata.posterior["phi"].values > 0)


def test_masked_entries_are_never_read():
    X, _, _, _ = _nb_data(F=12, N=10, K=2, counts=200.0, seed=9)
    mask = np.ones(X.shape, bool)
    mask[3, 4] = mask[7, 1] = False
    X2 = X.copy()
    X2[3, 4], X2[7, 1] = 1e4, 0.0
    opts = dict(model="negbin", method="gibbs", mask=mask, num_warmup=20, num_samples=20,
                num_chains=2, seed=3, progress=False)
    a, b = bnmf.fit(X, 2, **opts), bnmf.fit(X2, 2, **opts)
    for name in ("W", "phi"):
        np.testing.assert_array_equal(a.idata.posterior[name].values,
                                      b.idata.posterior[name].values)


def test_bad_options_and_input_raise():
    import scipy.sparse as sp
    X, _, _, _ = _nb_data(F=10, N=8, K=2, counts=100.0, seed=0)

    def fit(X=X, **options):
        return bnmf.fit(X, 2, model="negbin", method="gibbs", progress=False, **options)

    for option, value in (("num_samples", 0), ("num_chains", 0), ("thin", 0),
                          ("num_warmup", -1), ("map_iter", 0), ("num_samples", 2.5),
                          ("num_chains", True)):
        with pytest.raises((ValueError, TypeError), match=f"{option} must be"):
            fit(**{option: value})
    with pytest.raises(ValueError, match="needs dense X"):
        fit(sp.csr_matrix(X))
    with pytest.raises(ValueError, match="block_moves must be True or False"):
        fit(block_moves=None)
    with pytest.raises(TypeError, match="unknown option"):
        fit(orbit_moves=True)
    with pytest.raises(ValueError, match="integer"):
        fit(X + 0.5)


def test_same_seed_same_draws():
    X, _, _, _ = _nb_data(F=10, N=8, K=2, counts=100.0, seed=1)
    opts = dict(model="negbin", method="gibbs", num_warmup=10, num_samples=10,
                num_chains=2, progress=False)
    a, b = bnmf.fit(X, 2, seed=4, **opts), bnmf.fit(X, 2, seed=4, **opts)
    for name in ("W", "H", "phi"):
        np.testing.assert_array_equal(a.idata.posterior[name].values,
                                      b.idata.posterior[name].values)
    c = bnmf.fit(X, 2, seed=5, **opts)
    assert not np.array_equal(a.idata.posterior["H"].values, c.idata.posterior["H"].values)
