"""The Fit: ArviZ layout, normalization, alignment, intervals, predictive density, save/load."""

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
from helpers import fit_seeing_hidden_values, simulate

import bnmf
from bnmf.fitting import default_method
from bnmf.models import HierarchicalPoissonGamma, GaussianHalfNormal, Horseshoe, PoissonGamma
from bnmf.posterior import align_draws, align_permutation, arviz_group_names, normalize


@pytest.fixture(scope="module")
def labelled():
    X, W, H = simulate(30, 40, rank=3, counts_per_sample=800, seed=11)
    return pd.DataFrame(X, index=[f"g{i}" for i in range(30)],
                        columns=[f"cell{j}" for j in range(40)])


@pytest.fixture(scope="module")
def svi_fit(labelled):
    return bnmf.fit(labelled, 3, method="svi", seed=0, progress=False, num_draws=300)


def test_idata_dims_coords_and_groups(svi_fit, labelled):
    posterior = svi_fit.idata.posterior
    assert posterior["W"].dims == ("chain", "draw", "feature", "component")
    assert posterior["H"].dims == ("chain", "draw", "component", "observation")
    assert posterior.sizes["chain"] * posterior.sizes["draw"] >= 100
    assert list(posterior["feature"].values) == list(labelled.index)
    assert list(posterior["observation"].values) == list(labelled.columns)
    assert "sample" not in posterior.dims
    assert {"posterior", "observed_data", "constant_data", "sample_stats"} <= set(
        arviz_group_names(svi_fit.idata))
    assert svi_fit.idata.constant_data["mask"].values.all()
    attrs = posterior.attrs
    # model=None: the hierarchical count model, with the reason recorded
    assert attrs["model"] == "poisson-hierarchical" and attrs["method"] == "svi"
    assert attrs["seed"] == 0
    assert attrs["bnmf_version"]


def test_default_method_is_nuts_on_small_problems_and_says_why(labelled):
    fit = bnmf.fit(labelled, 2, progress=False, num_warmup=60, num_samples=60, num_chains=1)
    assert fit.method == "nuts" and fit.num_draws == 60
    assert fit.info["method_choice"].startswith("nuts: small problem")
    # options only SVI accepts make the default SVI, with its ELBO
    fit = bnmf.fit(labelled, 2, progress=False, num_draws=150, max_steps=500, min_steps=100)
    assert fit.method == "svi" and fit.num_draws == 150 and fit.elbo is not None
    assert fit.info["method_choice"].startswith("svi")


@pytest.mark.parametrize(("method", "options", "expected"), [
    (None, {}, "poisson-hierarchical"), ("gibbs", {}, "poisson-hierarchical"),
    ("nuts", {}, "poisson-hierarchical"), ("svi", {"max_steps": 10}, "poisson-hierarchical"),
    ("map", {}, "poisson"), ("cavi", {}, "poisson"),
    (None, {"batch_size": 10}, "poisson"),            # an option only CAVI accepts
    ("gibbs", {"a": 0.5}, "poisson"),                 # the poisson model's hyperparameter
    ("gibbs", {"shape_scale": 0.5}, "poisson-hierarchical")])
def test_default_model_follows_the_method(method, options, expected):
    """model=None fits the hierarchical count model unless the method needs the conjugate
    prior or the poisson model's hyperparameters are given; the reason names the model."""
    model, why = bnmf.fitting.default_model(method, options)
    assert model == expected and why.startswith(expected + ":")


@pytest.mark.parametrize("model, shape, rank, options, fixed_W, expected", [
    (PoissonGamma(), (96, 21), 5, {}, False, "nuts"),
    (PoissonGamma(), (96, 500), 5, {}, False, "gibbs"),          # too many latent entries
    (PoissonGamma(), (96, 200), 1, {}, True, "nuts"),             # W fixed: only H is latent
    (PoissonGamma(), (2000, 20), 2, {}, True, "gibbs"),          # too many data entries
    (HierarchicalPoissonGamma(), (96, 500), 5, {}, False, "gibbs"),
    (PoissonGamma(), (96, 500), 5, {"num_draws": 100}, False, "cavi"),  # options CAVI takes
    (PoissonGamma(), (96, 21), 5, {"max_steps": 10}, False, "svi"),
    (PoissonGamma(), (96, 500), 5, {"batch_size": 50}, False, "cavi"),
    (GaussianHalfNormal(), (96, 500), 5, {}, False, "gibbs"),
    (GaussianHalfNormal(), (30, 40), 3, {}, False, "nuts"),
    (Horseshoe(), (30, 40), 3, {}, False, "svi"),                # NUTS calibration not measured
])
def test_default_method_rule(model, shape, rank, options, fixed_W, expected):
    method, why = default_method(model, shape, rank, options, fixed_W)
    assert method == expected and why.startswith(expected)


def test_every_draw_is_normalized_and_reconstruction_kept(svi_fit):
    W = svi_fit.idata.posterior["W"].values
    np.testing.assert_allclose(W.sum(axis=2), 1.0, rtol=1e-5)
    assert isinstance(svi_fit.W, pd.DataFrame) and isinstance(svi_fit.H, pd.DataFrame)
    np.testing.assert_allclose(svi_fit.W.sum(axis=0), 1.0, rtol=1e-5)


def test_normalize_keeps_product():
    rng = np.random.default_rng(0)
    W, H = rng.gamma(1, 1, (2, 5, 4, 3)), rng.gamma(1, 1, (2, 5, 3, 6))
    Wn, Hn = normalize(W, H)
    np.testing.assert_allclose(Wn @ Hn, W @ H, rtol=1e-12)
    np.testing.assert_allclose(Wn.sum(axis=-2), 1.0)


def test_alignment_undoes_label_switching():
    rng = np.random.default_rng(1)
    W = rng.dirichlet(np.ones(20), 4).T  # (20, 4), distinct parts
    H = rng.gamma(1, 1, (4, 7))
    perms = [rng.permutation(4) for _ in range(6)]
    draws = {"W": np.stack([W[:, p] for p in perms]).reshape(2, 3, 20, 4),
             "H": np.stack([H[p] for p in perms]).reshape(2, 3, 4, 7)}
    aligned = align_draws(draws)
    reference = aligned["W"][0, 0]
    for c in range(2):
        for d in range(3):
            np.testing.assert_array_equal(aligned["W"][c, d], reference)
            np.testing.assert_allclose(aligned["W"][c, d] @ aligned["H"][c, d], W @ H, rtol=1e-12)
    p = rng.permutation(4)
    assert np.array_equal(W[:, p][:, align_permutation(W[:, p], W)], W)


def test_alignment_leaves_aligned_draws_uncopied():
    rng = np.random.default_rng(2)
    W = rng.dirichlet(np.ones(20), 4).T
    draws = {"W": np.broadcast_to(W, (2, 3, 20, 4)) * rng.uniform(0.9, 1.1, (2, 3, 20, 4)),
             "H": rng.gamma(1, 1, (2, 3, 4, 7))}
    aligned = align_draws(draws)
    # one labelling already: the very same arrays come back (no copy of every draw)
    assert aligned["W"] is draws["W"] and aligned["H"] is draws["H"]
    draws["W"][1, 2] = draws["W"][1, 2][:, [1, 0, 2, 3]]
    assert not np.shares_memory(align_draws(draws)["W"], draws["W"])


def test_interval_contains_mean_and_has_shapes(svi_fit):
    bounds = svi_fit.interval(0.9)
    for name, mean in (("W", svi_fit.W), ("H", svi_fit.H)):
        lower, upper = bounds[name]
        assert lower.shape == mean.shape == upper.shape
        assert np.all(lower.values <= mean.values) and np.all(mean.values <= upper.values)
        assert np.all(lower.values < upper.values)
    narrow = svi_fit.interval(0.5)["W"]
    assert np.all(narrow[1].values - narrow[0].values <= bounds["W"][1].values - bounds["W"][0].values)
    with pytest.raises(ValueError, match="prob must be a number strictly between"):
        svi_fit.interval(1.5)


def test_map_fit_has_one_draw_and_no_interval(labelled):
    fit = bnmf.fit(labelled, 3, method="map", progress=False)
    assert fit.num_draws == 1 and fit.elbo is None
    with pytest.raises(ValueError, match="point estimate and has no credible interval"):
        fit.interval()


def test_log_likelihood_is_the_posterior_predictive_density(svi_fit, labelled):
    lpd = svi_fit.log_likelihood()
    assert lpd.shape == labelled.shape and np.all(np.isfinite(lpd))
    # Independent computation with SciPy from the stored draws
    W = svi_fit.idata.posterior["W"].values.reshape(-1, 30, 3)
    H = svi_fit.idata.posterior["H"].values.reshape(-1, 3, 40)
    pmf = st.poisson.pmf(labelled.values[None], (W.astype(float) @ H.astype(float)))
    np.testing.assert_allclose(lpd, np.log(pmf.mean(axis=0)), rtol=2e-4, atol=1e-5)
    # held-out entries: a mask selects what is scored, the rest is NaN
    mask = np.zeros(labelled.shape, bool)
    mask[::3, ::4] = True
    held = svi_fit.log_likelihood(labelled.values, mask=mask)
    assert np.all(np.isnan(held[~mask])) and np.allclose(held[mask], lpd[mask])
    with pytest.raises(ValueError, match="fitted matrix"):
        svi_fit.log_likelihood(labelled.values[:, :5])


@pytest.mark.parametrize("model", ["poisson", "gaussian"])
def test_masked_entries_do_not_influence_the_fit(labelled, model):
    X = labelled.values.copy()
    mask = np.ones(X.shape, bool)
    mask[2, 3] = mask[7, 11] = False
    mask[:, 5] = np.arange(X.shape[0]) % 3 != 0
    options = {"method": "map", "progress": False, "dtype": "float64"}
    a = bnmf.fit(X, 3, model=model, mask=mask, **options)
    # 1e6 reaches the inference at the masked entries (validation would have zeroed them)
    b = fit_seeing_hidden_values(X, 3, mask, value=1e6, model=model, **options)
    np.testing.assert_allclose(b.W, a.W, rtol=1e-8)
    np.testing.assert_allclose(b.H, a.H, rtol=1e-8)


@pytest.mark.parametrize("method", ["map", "svi", "nuts"])
def test_save_load_round_trip_is_exact(tmp_path, labelled, method):
    options = {"map": {}, "svi": {"num_draws": 100, "max_steps": 400, "min_steps": 100},
               "nuts": {"num_warmup": 50, "num_samples": 50, "num_chains": 2}}[method]
    fit = bnmf.fit(labelled.iloc[:12, :15], 2, method=method, progress=False, **options)
    path = tmp_path / "fit.nc"
    fit.save(path)
    loaded = bnmf.load(path)
    for name in ("W", "H"):
        np.testing.assert_array_equal(loaded.idata.posterior[name].values,
                                      fit.idata.posterior[name].values)
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(fit, name))
    np.testing.assert_array_equal(loaded.losses, fit.losses)
    assert loaded.model == fit.model and loaded.method == method and loaded.elbo == fit.elbo
    assert loaded.info == fit.info
    np.testing.assert_array_equal(loaded.log_likelihood(), fit.log_likelihood())


def test_unlabelled_input_gives_arrays_and_integer_coords():
    X, _, _ = simulate(15, 20, rank=2, seed=12)
    fit = bnmf.fit(X, 2, method="map", progress=False)
    assert isinstance(fit.W, np.ndarray) and fit.W.shape == (15, 2)
    assert list(fit.idata.posterior["observation"].values) == list(range(20))


def test_nuts_chains_are_aligned(labelled):
    fit = bnmf.fit(labelled.iloc[:15, :20], 2, method="nuts", num_warmup=100, num_samples=100,
                   num_chains=2, progress=False)
    W = fit.idata.posterior["W"].values
    assert W.shape[:2] == (2, 100)
    chain_means = W.mean(axis=1)
    assert np.abs(chain_means[0] - chain_means[1]).max() < 0.05
    assert not jax.config.jax_enable_x64
