"""BayesianNMF: scikit-learn's layout and protocol around bnmf.fit."""

import numpy as np
import pytest
from helpers import aligned_cosines, generalized_kl, simulate
from sklearn.base import clone
from sklearn.decomposition import NMF
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from bnmf import BayesianNMF

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
    # Grid search over ranks in a pipeline, scored by bnmf's reconstruction (any scorer works).
    pipe = make_pipeline(BayesianNMF(method="map", options={"progress": False}))
    search = GridSearchCV(pipe, {"bayesiannmf__n_components": [2, 3]}, cv=2,
                          scoring=lambda model, X, y=None: -generalized_kl(
                              X, model.inverse_transform(model.transform(X))))
    search.fit(X_SK)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)), scores
    assert search.best_params_["bayesiannmf__n_components"] == 3  # the true rank fits better


def test_errors_name_the_problem(fitted):
    est, _ = fitted
    with pytest.raises(ValueError, match="not fitted yet"):
        BayesianNMF().transform(X_SK)
    with pytest.raises(ValueError, match="X has 29 features"):
        est.transform(X_SK[:, :29])
    with pytest.raises(ValueError, match="negative"):
        BayesianNMF(method="map").fit(-X_SK)
    with pytest.raises(ValueError, match="rank"):
        BayesianNMF(n_components=100, method="map").fit(X_SK)
