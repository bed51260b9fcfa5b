"""Label switching between Gibbs chains: chains that run in different component orders give
the same aligned posterior, and their diagnostics read as one posterior, not as unmixed chains."""

import numpy as np
import pytest
from helpers import simulate

import bnmf
from bnmf.inference import gibbs

# chain c runs with its components in this order (chain 0 as the MAP gave them)
ORDERS = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]


def _permuted_starts(original):
    def starts(*args, **kwargs):
        Ws, Hs = original(*args, **kwargs)
        return ([W[:, ORDERS[c % 3]] for c, W in enumerate(Ws)],
                [H[ORDERS[c % 3]] for c, H in enumerate(Hs)])
    return starts


@pytest.fixture(scope="module")
def fits():
    X, W_true, _ = simulate(n_features=30, n_samples=40, rank=3, counts_per_sample=800, seed=11)
    opts = {"model": "poisson", "method": "gibbs", "num_warmup": 100, "num_samples": 200,
            "num_chains": 3, "seed": 4}
    plain = bnmf.fit(X, 3, **opts)
    patch = pytest.MonkeyPatch()
    original = gibbs.chain_starts
    patch.setattr(gibbs, "chain_starts", _permuted_starts(original))
    try:
        switched = bnmf.fit(X, 3, **opts)
    finally:
        patch.undo()
    return plain, switched, W_true


def test_switched_chains_are_realigned(fits):
    """Every chain's mean of normalized W matches chain 0's, component by component, although
    chains 1 and 2 ran with their labels rotated: without alignment the per-chain means would
    differ by whole parts (cosine well below 0.99)."""
    _, switched, W_true = fits
    W = switched.idata.posterior["W"].values  # (chain, draw, feature, component)
    means = W.mean(axis=1)
    for c in range(1, means.shape[0]):
        cos = (means[c] * means[0]).sum(0) / np.linalg.norm(means[c], axis=0) / np.linalg.norm(
            means[0], axis=0)
        assert cos.min() > 0.99, (c, cos)
    # the parts themselves are the truth's (so the alignment matched real parts, not noise)
    perm = bnmf.posterior.align_permutation(means.mean(0), W_true)
    assert np.min((means.mean(0)[:, perm] * W_true).sum(0) / np.linalg.norm(
        means.mean(0)[:, perm], axis=0) / np.linalg.norm(W_true, axis=0)) > 0.97


def test_switched_chains_give_the_same_posterior(fits):
    """Posterior means of W from rotated and unrotated chains agree within Monte Carlo error,
    and the rotated run's R-hat is the unrotated one's (short chains of this sampler have R-hat
    of 1.0–1.4; a label switch left in would put most entries far above that, the chains'
    means differing by whole parts)."""
    plain, switched, _ = fits
    a = plain.idata.posterior["W"].values
    b = switched.idata.posterior["W"].values
    perm = bnmf.posterior.align_permutation(b.mean(axis=(0, 1)), a.mean(axis=(0, 1)))
    b = b[..., perm]
    sd = np.sqrt(a.var(axis=(0, 1)) + b.var(axis=(0, 1)))
    # 600 draws of each with autocorrelation: 50 effective draws is a safe floor here
    assert np.mean(np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))) < 5 * sd / np.sqrt(50)) > 0.99
    rhat = switched.idata.sample_stats["rhat_W"].values
    plain_rhat = plain.idata.sample_stats["rhat_W"].values
    assert np.nanmedian(rhat) < min(np.nanmedian(plain_rhat) + 0.05, 1.1)
    assert np.nanmax(rhat) < np.nanmax(plain_rhat) + 0.2
    assert switched.info["diagnostics"]["rhat_max_W"] == pytest.approx(float(np.nanmax(rhat)))
