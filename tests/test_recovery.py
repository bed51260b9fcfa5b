"""Recovery of known parts on simulated data, against scikit-learn's NMF on the same data.

Slow: each case fits scikit-learn and bnmf (``python -m pytest -m slow``).
"""

import warnings

import numpy as np
import pytest
from helpers import aligned_cosines, simulate
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

import bnmf

pytestmark = pytest.mark.slow

RANK = 3


def sklearn_parts(X, likelihood):
    """scikit-learn's W (features × rank) for X (features × samples): KL-MU or Frobenius-CD."""
    if likelihood == "poisson":
        model = NMF(RANK, solver="mu", beta_loss="kullback-leibler", init="nndsvda",
                    max_iter=2000, tol=1e-6, random_state=0)
    else:
        model = NMF(RANK, solver="cd", init="nndsvda", max_iter=2000, tol=1e-6, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X.T).components_.T


def normalized_at_truth(W_est, W_true):
    """W_est with columns summing to 1, reordered to match W_true's columns."""
    _, cols = aligned_cosines(W_est, W_true)
    W = np.asarray(W_est, float)[:, cols]
    return W / W.sum(axis=0)


CASES = [  # (model, likelihood, counts per sample, zero fraction of W)
    ("poisson", "poisson", 100, 0.0),
    ("poisson", "poisson", 2000, 0.0),
    ("gaussian", "gaussian", 2000, 0.0),
    ("horseshoe", "poisson", 300, 0.5),
    ("horseshoe", "gaussian", 300, 0.5),
]


@pytest.mark.parametrize("method", ["map", "svi"])
@pytest.mark.parametrize("model, likelihood, counts, zero_fraction", CASES)
def test_recovers_parts_at_least_as_well_as_sklearn(model, likelihood, counts, zero_fraction,
                                                    method):
    """Worst aligned cosine over two data sets, bnmf against scikit-learn on the same data."""
    ours, theirs = [], []
    for seed in (1, 2):
        X, W, _ = simulate(60, 80, RANK, counts_per_sample=counts, likelihood=likelihood,
                           zero_fraction=zero_fraction, seed=seed)
        options = {"likelihood": likelihood} if model == "horseshoe" else {}
        fit = bnmf.fit(X, RANK, model=model, method=method, seed=0, progress=False, **options)
        ours.append(aligned_cosines(fit.W, W)[0].min())
        theirs.append(aligned_cosines(sklearn_parts(X, likelihood), W)[0].min())
    assert min(ours) >= 0.95, ours
    # "At least as well": the mean worst cosine, within a rounding margin of 0.002.
    assert np.mean(ours) >= np.mean(theirs) - 0.002, (ours, theirs)


def test_nuts_recovers_parts_on_a_small_problem():
    X, W, _ = simulate(20, 30, 2, counts_per_sample=1000, seed=3)
    fit = bnmf.fit(X, 2, model="poisson", method="nuts", seed=0, progress=False,
                   num_warmup=300, num_samples=300, num_chains=1)
    cos = aligned_cosines(fit.W, W)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = NMF(2, solver="mu", beta_loss="kullback-leibler", init="nndsvda", max_iter=2000,
                  tol=1e-6, random_state=0).fit(X.T).components_.T
    assert cos.min() >= max(0.95, aligned_cosines(ref, W)[0].min() - 0.002), cos


@pytest.mark.parametrize("seed", [1, 2])
def test_horseshoe_map_shrinks_true_zeros_twice_as_hard_as_sklearn(seed):
    """Half of W's entries are exactly zero; the horseshoe's MAP puts at most half of
    scikit-learn's mass on them (both normalized to columns summing to 1)."""
    X, W, _ = simulate(60, 80, RANK, counts_per_sample=300, zero_fraction=0.5, seed=seed)
    zero = W == 0
    fit = bnmf.fit(X, RANK, model="horseshoe", method="map", seed=0, progress=False)
    ours = normalized_at_truth(fit.W, W)[zero]
    theirs = normalized_at_truth(sklearn_parts(X, "poisson"), W)[zero]
    assert ours.mean() <= 0.5 * theirs.mean(), (ours.mean(), theirs.mean())
    # "Near zero": most true zeros are below 1e-4 of their part, more than scikit-learn's.
    assert np.mean(ours < 1e-4) >= max(0.8, np.mean(theirs < 1e-4)), np.mean(ours < 1e-4)
