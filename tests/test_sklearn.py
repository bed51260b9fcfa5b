"""BayesianNMF: scikit-learn's layout and protocol around bnmf.fit."""

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import aligned_cosines, generalized_kl, simulate
from scipy import stats
from sklearn.base import clone
from sklearn.decomposition import NMF
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import bnmf
from bnmf import BayesianNMF
from bnmf.inference.activities import poisson_activities
from bnmf.inference.common import numerics

X_FS, W_TRUE, H_TRUE = simulate(30, 50, rank=3, counts_per_sample=1000, seed=11)
X_SK = X_FS.T  # scikit-learn's samples × features


@pytest.fixture(scope="module")
def fitted():
    est = BayesianNMF(n_components=3, method="map", dtype="float64",
                      options={"max_iter": 3000, "tol": 1e-9, "progress": False})
    activities = est.fit_transform(X_SK)
    return est, activities


def test_layout_and_scale_convention(fitted):
    est, activities = fitted
    assert activities.shape == (50, 3) and est.components_.shape == (3, 30)
    np.testing.assert_allclose(est.components_.sum(axis=1), 1.0, rtol=1e-6)
    assert est.n_features_in_ == 30 and est.n_components_ == 3
    # The parts are bnmf's W, transposed; they recover the truth.
    assert aligned_cosines(est.components_.T, W_TRUE)[0].min() > 0.98


def test_reconstruction_matches_sklearn_kl_objective(fitted):
    est, activities = fitted
    ours = generalized_kl(X_SK, est.inverse_transform(activities))
    ref = NMF(3, solver="mu", beta_loss="kullback-leibler", init="nndsvda", max_iter=3000,
              tol=1e-8, random_state=0)
    theirs = generalized_kl(X_SK, ref.fit_transform(X_SK) @ ref.components_)
    assert ours <= 1.01 * theirs, (ours, theirs)


def test_transform_with_fixed_parts_gives_the_fitted_activities(fitted):
    est, activities = fitted
    again = est.transform(X_SK[:10])
    np.testing.assert_allclose(again, activities[:10], rtol=0.02, atol=0.5)
    posterior = est.transform_fit(X_SK[:10])
    np.testing.assert_allclose(np.asarray(posterior.W), est.components_.T, rtol=1e-6)


def test_params_clone_and_grid_search():
    est = BayesianNMF(n_components=2, method="map", options={"progress": False})
    assert est.get_params()["n_components"] == 2
    copy = clone(est).set_params(n_components=3)
    assert copy.n_components == 3 and est.n_components == 2
    assert "n_components=3" in repr(copy)
    with pytest.raises(ValueError, match="invalid parameter 'rank'"):
        est.set_params(rank=3)


def test_errors_name_the_problem(fitted):
    est, _ = fitted
    with pytest.raises(ValueError, match="not fitted yet"):
        BayesianNMF().transform(X_SK)
    with pytest.raises(ValueError, match="X has 29 features"):
        est.transform(X_SK[:, :29])
    with pytest.raises(ValueError, match="Negative values in data passed to BayesianNMF.fit"):
        BayesianNMF(method="map").fit(-X_SK)
    with pytest.raises(ValueError, match="non-integer values"):
        BayesianNMF(method="map").fit(X_SK + 0.5)
    with pytest.raises(ValueError, match="H must have shape"):
        est.inverse_transform(np.ones((4, 2)))
    with pytest.raises(ValueError, match="rank"):
        BayesianNMF(n_components=100, method="map").fit(X_SK)


# Every scikit-learn estimator check, for both models' MAP fits; none is expected to fail. Few
# iterations keep the ~45 checks per model to seconds each (most of it is compiling the fit for
# each check's own data shape). require_counts=False: the checks feed non-integer values.
CHECKED = [
    BayesianNMF(model="poisson", method="map", require_counts=False,
                options={"progress": False, "max_iter": 100, "warmup": 0}),
    BayesianNMF(model="gaussian", method="map", options={"progress": False, "max_iter": 100}),
]


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("model", ["poisson", "gaussian"])
def test_transform_of_a_subset_is_the_rows_of_the_whole(fitted, model):
    est = fitted[0] if model == "poisson" else BayesianNMF(
        n_components=3, model="gaussian", method="map", options={"progress": False}).fit(X_SK)
    whole = est.transform(X_SK)
    rows = [7, 3, 40, 12, 0]
    np.testing.assert_allclose(est.transform(X_SK[rows]), whole[rows], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.transform(X_SK[::-1]), whole[::-1], rtol=1e-10, atol=1e-12)
    # the priors and parts are those of the fit, so the training samples get the fit's
    # activities back (to the fit's convergence)
    np.testing.assert_allclose(whole, est.fit_.H.T, rtol=2e-3, atol=1e-3 * whole.max())


def test_nan_marks_missing_entries(fitted):
    est, _ = fitted
    X = X_SK[:6].astype(float)
    X[2, 5] = np.nan
    got = est.transform(X)
    # sample 2 without feature 5: its activities solved with that feature left out entirely
    keep = np.arange(X.shape[1]) != 5
    x = X[2, keep][:, None]
    with numerics("float64"):
        H, _ = poisson_activities(x, np.ones_like(x, bool), est._W_raw[keep], est.model_.a,
                                  est.model_.rate_H, log_space=False)
    expected = np.asarray(H)[:, 0] * est._W_raw.sum(axis=0)
    np.testing.assert_allclose(got[2], expected, rtol=1e-6)
    np.testing.assert_allclose(got[[0, 1, 3, 4, 5]], est.transform(X_SK[[0, 1, 3, 4, 5]]))
    # a fit with NaN equals bnmf.fit with the same entries masked
    X_fit = X_SK.astype(float)
    X_fit[4, 9] = np.nan
    options = {"progress": False, "max_iter": 300}
    ours = BayesianNMF(n_components=3, method="map", dtype="float64", options=options).fit(X_fit)
    theirs = bnmf.fit(X_fit.T, 3, method="map", missing="mask", dtype="float64", **options)
    np.testing.assert_allclose(ours.components_, np.asarray(theirs.W).T)


def test_score_is_the_mean_held_out_log_predictive_density_per_entry(fitted):
    est, _ = fitted
    held_out = simulate(30, 20, rank=3, counts_per_sample=1000, seed=12)[0].T
    # by hand: activities fitted to one half of the features (NaN hides the other half) score
    # the other half with scipy's Poisson density, and the other way round
    first = np.random.default_rng(0).permutation(30) % 2 == 0
    total = 0.0
    for half in (first, ~first):
        hidden = held_out.astype(float)
        hidden[:, ~half] = np.nan
        rate = est.inverse_transform(est.transform(hidden))
        total += stats.poisson.logpmf(held_out[:, ~half], rate[:, ~half]).sum()
    expected = total / held_out.size
    assert est.score(held_out) == pytest.approx(expected, rel=1e-9)
    assert est.score(sp.csr_matrix(held_out)) == pytest.approx(expected, rel=1e-9)
    # a held-out score: below the density of the entries the activities were fitted to
    fitted_rate = est.inverse_transform(est.transform(held_out))
    assert est.score(held_out) < stats.poisson.logpmf(held_out, fitted_rate).mean()


def test_grid_search_scores_by_score_and_finds_the_rank():
    # in a pipeline, with the default scoring: BayesianNMF.score on the held-out samples
    pipe = make_pipeline(BayesianNMF(method="map", options={"progress": False}))
    search = GridSearchCV(pipe, {"bayesiannmf__n_components": [1, 3, 5]}, cv=2)
    search.fit(X_SK)
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_["bayesiannmf__n_components"] == 3, scores
