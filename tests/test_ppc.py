"""Posterior predictive checks, the log_likelihood group and ArviZ's loo / compare on bnmf fits."""

import arviz as az
import matplotlib
import numpy as np
import pytest
from helpers import simulate
from scipy.special import logsumexp

import bnmf
from bnmf.posterior import ARVIZ_MAJOR, arviz_group, arviz_group_names

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def data():
    X, W, H = simulate(30, 40, rank=3, counts_per_sample=800, seed=11)
    return X, W, H


@pytest.fixture(scope="module")
def cavi_fit(data):
    return bnmf.fit(data[0], 3, method="cavi", seed=0, progress=False, num_draws=200)


def _elpd_and_p(result):
    """(elpd_loo, p_loo) of ArviZ's ELPDData, 0.x (a Series) or 1.x (a dataclass)."""
    if ARVIZ_MAJOR >= 1:
        return float(result.elpd), float(result.p)
    return float(result["elpd_loo"]), float(result["p_loo"])


@pytest.mark.parametrize("model", ["poisson", "gaussian"])
def test_replicates_follow_the_models_own_likelihood(data, model):
    """At a point estimate, replicated X has the likelihood's moments: Poisson mean = variance
    = W H; Gaussian mean W H and standard deviation sigma."""
    fit = bnmf.fit(data[0], 3, model=model, method="map", seed=0)
    draws = 100
    X_rep = fit.posterior_predictive(draws, seed=3).replicated_data().astype(np.float64)
    assert X_rep.shape == (draws, 30, 40)
    WH = np.asarray(fit.W) @ np.asarray(fit.H)
    if model == "poisson":
        assert np.array_equal(X_rep, np.round(X_rep)) and X_rep.min() >= 0
        z = (X_rep.mean(axis=0) - WH) / np.sqrt(np.maximum(WH, 1e-3) / draws)
        assert np.abs(z).max() < 5.5
        np.testing.assert_allclose(X_rep.var(axis=0).sum(), WH.sum(), rtol=0.04)
    else:
        sigma = float(arviz_group(fit.idata, "posterior")["sigma"].values.ravel()[0])
        z = (X_rep.mean(axis=0) - WH) / (sigma / np.sqrt(draws))
        assert np.abs(z).max() < 5.5
        np.testing.assert_allclose(X_rep.std(axis=0).mean(), sigma, rtol=0.04)


def test_group_is_seeded_and_survives_save_load(cavi_fit, tmp_path):
    ppc = cavi_fit.posterior_predictive(100, seed=1)
    assert "posterior_predictive" in arviz_group_names(ppc.idata)
    assert "posterior_predictive" not in arviz_group_names(cavi_fit.idata)   # a new Fit
    group = arviz_group(ppc.idata, "posterior_predictive")
    assert group["X"].dims == ("chain", "draw", "feature", "observation")
    assert "X" in arviz_group(ppc.idata, "observed_data")        # observed beside replicated
    again = cavi_fit.posterior_predictive(100, seed=1).replicated_data()
    np.testing.assert_array_equal(again, ppc.replicated_data())
    assert not np.array_equal(cavi_fit.posterior_predictive(100, seed=2).replicated_data(),
                              again)
    both = ppc.with_log_likelihood()
    both.save(tmp_path / "fit.nc")
    back = bnmf.load(tmp_path / "fit.nc")
    np.testing.assert_array_equal(back.replicated_data(), ppc.replicated_data())
    np.testing.assert_array_equal(arviz_group(back.idata, "log_likelihood")["X"].values,
                                  arviz_group(both.idata, "log_likelihood")["X"].values)
    with pytest.raises(ValueError, match="num_draws must be a positive integer"):
        cavi_fit.posterior_predictive(0)
    with pytest.raises(ValueError, match="has no posterior_predictive group"):
        cavi_fit.replicated_data()


def test_dispersion_check_flags_overdispersed_counts(data, cavi_fit):
    """Poisson counts pass; gamma–Poisson (negative binomial) counts of the same means do not."""
    _, W, H = data
    table = cavi_fit.posterior_predictive(100, seed=0).dispersion_check(prob=0.9)
    assert list(table.columns) == ["mean", "observed", "lower", "median", "upper", "p_value",
                                   "above"]
    assert table.attrs["fraction_above"] <= 0.15
    rng = np.random.default_rng(3)
    overdispersed = rng.poisson(rng.gamma(2.0, W @ H / 2.0)).astype(float)
    fit = bnmf.fit(overdispersed, 3, method="cavi", seed=0, progress=False, num_draws=200)
    table = fit.posterior_predictive(100, seed=0).dispersion_check(prob=0.9)
    assert table.attrs["fraction_above"] >= 0.5
    assert (table.loc[table["above"], "p_value"] < 0.05).all()


def test_arviz_loo_runs_and_agrees_with_log_likelihood(cavi_fit):
    fit = cavi_fit.with_log_likelihood()
    ll = arviz_group(fit.idata, "log_likelihood")["X"]
    assert ll.dims == ("chain", "draw", "feature", "observation")
    # per-draw log-likelihoods average (in density) to the log posterior predictive density
    flat = ll.values.reshape((-1,) + ll.shape[2:])
    lpd = logsumexp(flat, axis=0) - np.log(flat.shape[0])
    np.testing.assert_allclose(lpd, cavi_fit.log_likelihood(), rtol=1e-10, atol=1e-10)
    result = az.loo(fit.idata)                               # ArviZ's own call, as users make it
    elpd, p_loo = _elpd_and_p(result)
    # lppd = elpd_loo + p_loo is the in-sample log predictive density
    np.testing.assert_allclose(elpd + p_loo, cavi_fit.log_likelihood().sum(), rtol=1e-8)
    assert elpd < cavi_fit.log_likelihood().sum() and p_loo > 0
    assert _elpd_and_p(cavi_fit.loo()) == pytest.approx((elpd, p_loo), rel=1e-12)


def test_masked_fit_has_observed_entries_and_compare_ranks_the_true_rank(data):
    X = data[0]
    mask = np.ones(X.shape, bool)
    mask[::7, ::5] = False
    fits = {rank: bnmf.fit(X, rank, method="cavi", mask=mask, seed=0, progress=False,
                           num_draws=150) for rank in (2, 3)}
    ll = arviz_group(fits[3].with_log_likelihood().idata, "log_likelihood")["X"]
    assert ll.dims == ("chain", "draw", "entry") and ll.sizes["entry"] == mask.sum()
    flat = ll.values.reshape(-1, ll.shape[-1])
    lpd = logsumexp(flat, axis=0) - np.log(flat.shape[0])
    rows, cols = ll["entry_feature"].values, ll["entry_observation"].values
    np.testing.assert_allclose(lpd, fits[3].log_likelihood()[rows, cols], rtol=1e-10)
    table = bnmf.compare({"rank 2": fits[2], "rank 3": fits[3]})
    assert table.index[0] == "rank 3"
    with pytest.raises(ValueError, match="is a point estimate"):
        bnmf.compare({"a": fits[3], "b": bnmf.fit(X, 2, method="map", mask=mask)})
    with pytest.raises(ValueError, match="loo needs posterior draws"):
        bnmf.fit(X, 2, method="map").loo()


def test_ppc_and_dispersion_plots(cavi_fit):
    from bnmf.plotting import plot_dispersion, plot_ppc

    ppc = cavi_fit.posterior_predictive(100, seed=0)
    figure = plot_ppc(ppc, max_panels=4)
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 4
    assert "outside their 90% interval" in figure._suptitle.get_text()
    grouped = plot_ppc(ppc, features=[0, 5], groups=np.repeat(["a", "b"], 20))
    assert [t.get_text() for t in grouped.axes[0].get_xticklabels()] == ["a", "b"]
    figure = plot_dispersion(ppc)
    assert "consistent with the fitted likelihood" in figure.axes[0].get_title()
    with pytest.raises(ValueError, match="one label per sample"):
        plot_ppc(ppc, groups=["a", "b"])
    with pytest.raises(ValueError, match=r"features \[99\] are not in the fit"):
        plot_ppc(ppc, features=[99])
