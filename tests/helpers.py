"""Simulation and comparison helpers shared by the tests."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def simulate(n_features=60, n_samples=80, rank=3, counts_per_sample=2000, likelihood="poisson",
             zero_fraction=0.0, seed=0):
    """Known W (columns sum to 1), H and X ~ Poisson(W H) or W H + Gaussian noise."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(0.5, 1.0, (n_features, rank))
    if zero_fraction:
        W[rng.uniform(size=W.shape) < zero_fraction] = 0.0
        W[rng.integers(n_features, size=rank), np.arange(rank)] += 1.0  # no empty part
    W /= W.sum(axis=0)
    H = rng.dirichlet(np.ones(rank), n_samples).T * counts_per_sample
    mean = W @ H
    if likelihood == "poisson":
        X = rng.poisson(mean).astype(float)
    else:
        X = np.abs(mean + rng.normal(0, 0.05 * mean.mean(), mean.shape))
    return X, W, H


def aligned_cosines(W_est, W_true):
    """Cosine of each true part with its Hungarian-matched estimate."""
    A = np.asarray(W_est) / np.linalg.norm(W_est, axis=0)
    B = np.asarray(W_true) / np.linalg.norm(W_true, axis=0)
    cos = B.T @ A
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols], cols


def generalized_kl(X, WH):
    """Generalized KL divergence D(X || WH), scikit-learn's beta=1 loss."""
    X, WH = np.asarray(X, float), np.asarray(WH, float)
    ratio = np.where(X > 0, X / np.maximum(WH, 1e-300), 1.0)
    return float(np.sum(np.where(X > 0, X * np.log(ratio), 0.0) - X + WH))


def frobenius(X, WH):
    return float(0.5 * np.sum((np.asarray(X) - np.asarray(WH)) ** 2))


def planted_overlapping_graph(n_nodes=150, rank=4, overlap=0.3, strength=0.6, seed=0):
    """An undirected graph from the edge-partition model with planted overlapping communities.

    Every node joins one community with membership ``strength`` times a degree factor
    (Gamma(4, 1/4)); a share ``overlap`` of nodes joins a second one at half that weight.
    Returns (A (n, n) 0/1, true memberships W (n, rank))."""
    rng = np.random.default_rng(seed)
    W = np.zeros((n_nodes, rank))
    first = rng.integers(rank, size=n_nodes)
    W[np.arange(n_nodes), first] = 1.0
    second = (first + rng.integers(1, rank, size=n_nodes)) % rank
    joins = rng.uniform(size=n_nodes) < overlap
    W[np.arange(n_nodes)[joins], second[joins]] = 0.5
    W *= strength * rng.gamma(4.0, 0.25, size=(n_nodes, 1))
    P = 1.0 - np.exp(-W @ W.T)
    A = np.triu((rng.uniform(size=P.shape) < P).astype(float), 1)
    return A + A.T, W


def fit_seeing_hidden_values(X, rank, mask, value=1e6, model="poisson", **options):
    """``bnmf.fit(X, rank, model=model, mask=mask, **options)``, except that ``value`` is
    written into every unobserved entry *after* validation (which zeroes or drops them), so the
    inference itself receives it: a fit that honours the mask gives the same result as
    ``bnmf.fit``; one that lets masked entries in does not. Dense or SciPy sparse ``X``. The
    data-driven priors are resolved from the validated data first, as ``bnmf.fit`` does
    (validated sparse data hold no counts at unobserved entries, which the prior scales rely
    on)."""
    import dataclasses

    import scipy.sparse as sp

    from bnmf.data import check_rank, prepare
    from bnmf.fitting import _split_options, fit_data
    from bnmf.models import get_model

    model_options, options = _split_options(model, options)
    model_obj = get_model(model, **model_options)
    data = prepare(X, mask=mask, counts=model_obj.needs_counts)
    rank = check_rank(rank, data.shape)
    model_obj = model_obj.resolve(data, rank)
    if data.sparse is not None:
        rows, cols = data.hidden
        assert rows.size, "the mask hides nothing"
        planted = sp.coo_matrix((np.full(rows.size, value), (rows, cols)), shape=data.shape)
        poisoned = (data.sparse + planted).tocoo()
        poisoned.sum_duplicates()
        data = dataclasses.replace(data, values=None, mask=None, sparse=poisoned)
    else:
        assert not data.mask.all(), "the mask hides nothing"
        data = dataclasses.replace(data, values=np.where(data.mask, data.values, value))
    return fit_data(data, rank, model_obj, **options)
