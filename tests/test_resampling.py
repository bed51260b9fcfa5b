"""Cohort bootstrap of the parts: resampled cohorts in one batch, matched to the full-data fit."""

import matplotlib
import numpy as np
import pytest
from helpers import aligned_cosines, simulate

import bnmf
from bnmf.resampling import resample_masks

matplotlib.use("Agg")


def test_each_member_observes_exactly_its_resample():
    rng = np.random.default_rng(0)
    resamples = rng.integers(0, 25, size=(30, 25))
    multiplicities = np.stack([np.bincount(r, minlength=25) for r in resamples])
    columns, observed = resample_masks(multiplicities)
    assert columns.size == multiplicities.max(axis=0).sum()
    for b in range(30):
        np.testing.assert_array_equal(np.bincount(columns[observed[b]], minlength=25),
                                      multiplicities[b])


@pytest.fixture(scope="module")
def rare_part():
    """Three parts, the third active in only 3 of 40 samples."""
    X, W, H = simulate(30, 40, rank=3, counts_per_sample=800, seed=11)
    H = H.copy()
    H[2] = 0.0
    H[2, :3] = 600.0
    X = np.random.default_rng(0).poisson(W @ H).astype(float)
    fit = bnmf.fit(X, 3, method="cavi", seed=0, progress=False, num_draws=200)
    result = bnmf.bootstrap(X, 3, n_boot=30, fit=fit, seed=0)
    return X, W, fit, result


def test_refits_are_fits_of_the_resampled_cohorts(rare_part):
    X, _, fit, result = rare_part
    assert result.W.shape == (30, 30, 3) and result.resamples.shape == (30, 40)
    assert result.converged.all()
    np.testing.assert_allclose(result.W.sum(axis=1), 1.0, rtol=1e-6)
    for b in (0, 7):
        direct = bnmf.fit(X[:, result.resamples[b]], 3, method="map", seed=0)
        cos, _ = aligned_cosines(result.W[b], np.asarray(direct.W))
        # the two common parts agree to rounding; the rare one, with its flatter likelihood,
        # to the tolerance of the two algorithms' stopping rules
        assert np.sort(cos)[1] > 0.999 and cos.min() > 0.95
    # same seed, same resamples and parts
    again = bnmf.bootstrap(X, 3, n_boot=30, fit=fit, seed=0)
    np.testing.assert_array_equal(again.resamples, result.resamples)
    np.testing.assert_allclose(again.W, result.W, rtol=1e-6)


def test_a_part_carried_by_few_samples_is_less_stable_than_the_posterior_says(rare_part):
    _, W_true, fit, result = rare_part
    table = result.table
    assert list(table.columns) == ["refit_cosine", "cosine_mean", "cosine_q05", "cosine_min",
                                   "stability", "bootstrap_width", "posterior_width",
                                   "width_ratio"]
    _, matched = aligned_cosines(np.asarray(fit.W), W_true)
    rare, common = matched[2], [matched[0], matched[1]]
    assert (table.loc[common, "stability"] == 1.0).all()
    assert (table.loc[common, "refit_cosine"] > 0.99).all()
    assert table.loc[rare, "cosine_q05"] < table.loc[common, "cosine_q05"].min()
    assert table.loc[rare, "width_ratio"] > table.loc[common, "width_ratio"].max()
    lower, upper = result.interval()
    assert lower.shape == (30, 3) and (np.asarray(upper) >= np.asarray(lower)).all()
    from bnmf.plotting import plot_bootstrap

    figure = plot_bootstrap(result, top=8)
    assert figure.axes[rare].get_title().startswith(f"part {rare}: stability "
                                                    f"{table.loc[rare, 'stability']:.2f}")


def test_bad_input_is_refused(rare_part):
    X, _, fit, _ = rare_part
    with pytest.raises(ValueError, match=r"method must be one of \('map', 'svi'\)"):
        bnmf.bootstrap(X, 3, method="nuts", fit=fit)
    with pytest.raises(ValueError, match="n_boot must be an integer ≥ 2"):
        bnmf.bootstrap(X, 3, n_boot=1, fit=fit)
    with pytest.raises(ValueError, match=r"fit was made from data of shape \(30, 40\)"):
        bnmf.bootstrap(X[:, :20], 3, fit=fit)
    with pytest.raises(ValueError, match="fit has rank 3 but rank=2"):
        bnmf.bootstrap(X, 2, fit=fit)
    with pytest.raises(ValueError, match="min_cosine must lie in"):
        bnmf.bootstrap(X, 3, fit=fit, min_cosine=1.5)


@pytest.mark.slow
def test_svi_refits(rare_part):
    X, W_true, fit, _ = rare_part
    result = bnmf.bootstrap(X, 3, n_boot=6, fit=fit, method="svi", seed=1, max_steps=600,
                            min_steps=200)
    assert result.settings["method"] == "svi" and result.W.shape == (6, 30, 3)
    _, matched = aligned_cosines(np.asarray(fit.W), W_true)
    assert (result.table.loc[[matched[0], matched[1]], "cosine_min"] > 0.95).all()
