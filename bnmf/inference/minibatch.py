"""Minibatch (stochastic) variational inference over samples: the host loop of a ``"cavi"``
capability's minibatch steps (the Poisson–gamma model's, in :mod:`bnmf.models.poisson`).

Stochastic VI in the sense of Hoffman et al. (2013), on CAVI's gamma factors
(:mod:`bnmf.inference.cavi`): q(W) is global, each sample's q(H_j) is local. One step takes a
minibatch B of ``batch_size`` samples, runs ``local_sweeps`` CAVI sweeps of q(H_B) with q(W)
held, forms the q(W) update that CAVI would make if the whole data looked like B repeated
``N / |B|`` times, and moves q(W)'s natural parameters (shape, rate) a step ρ_t = (t + τ)^(-κ)
towards it. A sample's local factors are stored (rank × n_samples, small) and updated only when
visited. Memory is bounded by the minibatch: only ``n_features × batch_size`` of X is dense at
a time, whatever the number of samples (a SciPy sparse X is sliced by columns on the host).

After the last epoch, one pass updates every sample's q(H_j) against the final q(W) and sums
the collapsed bound block by block, so ``elbo`` and the draws describe one consistent q.

Reference: M. D. Hoffman, D. M. Blei, C. Wang, J. Paisley, "Stochastic variational
inference", JMLR 14 (2013); P. Gopalan, J. M. Hofman, D. M. Blei, "Scalable recommendation
with hierarchical Poisson factorization", UAI 2015.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln as scipy_gammaln

from ..models.base import capability
from ..models.counts import to_scipy
from .common import Problem, check_devices, progress_bar, shard_over_samples, to_device
from .driver import cached_program

__all__ = ["stochastic_cavi_factors"]

DELAY, DECAY = 1.0, 0.51  # step size ρ_t = (t + DELAY)^(-DECAY); Robbins–Monro needs DECAY ∈ (0.5, 1]
# (on a 30 × 400 test, 0.51 got closest to full CAVI of DECAY in {0.51, 0.6, 0.7, 0.8})


@cached_program
def _minibatch_programs(step, final_block):
    """The compiled minibatch step and final-block functions of a ``"cavi"`` capability."""
    return (jax.jit(step, static_argnames=("n_sweeps",)),
            jax.jit(final_block, static_argnames=("n_sweeps",)))


class _Blocks:
    """Dense column blocks of X (and of the mask) on demand, from a dense or sparse Problem."""

    def __init__(self, problem: Problem):
        self.dtype = problem.X.dtype
        if problem.sparse:
            self.csc = to_scipy(problem.X).tocsc()
            hidden = (np.asarray(problem.X.hidden_rows), np.asarray(problem.X.hidden_cols))
            self.hidden = None
            if hidden[0].size:
                import scipy.sparse as sp

                self.hidden = sp.csc_matrix((np.ones(hidden[0].size, bool), hidden),
                                            shape=self.csc.shape)
            self.dense = None
        else:
            self.dense = problem.X
            self.mask = None if problem.fully_observed else problem.mask
        self.full = problem.fully_observed

    def log_factorials(self) -> float:
        if self.dense is None:
            return float(np.sum(scipy_gammaln(self.csc.data + 1.0)))
        X = np.asarray(self.dense, np.float64)
        terms = scipy_gammaln(X + 1.0)
        return float(terms.sum() if self.mask is None else terms[np.asarray(self.mask)].sum())

    def get(self, columns: np.ndarray, pad_to: int | None = None):
        """(X_block, M_block or None) for ``columns``, padded with unobserved zero columns."""
        n_pad = 0 if pad_to is None else pad_to - columns.size
        if self.dense is None:
            X = self.csc[:, columns].toarray()
            M = None if self.hidden is None else ~self.hidden[:, columns].toarray()
        else:
            X = np.asarray(self.dense[:, columns])
            M = None if self.mask is None else np.asarray(self.mask[:, columns])
        if n_pad:
            X = np.pad(X, ((0, 0), (0, n_pad)))
            M = np.ones((X.shape[0], columns.size), bool) if M is None else M
            M = np.pad(M, ((0, 0), (0, n_pad)))
        return (jnp.asarray(X, self.dtype),
                None if M is None else jnp.asarray(M, self.dtype))


def stochastic_cavi_factors(problem: Problem, W0, H0, *, batch_size: int, epochs: int,
                            local_sweeps: int, seed: int, devices: int | None = None,
                            progress: bool | None = None):
    """Minibatch CAVI from starting means W0 (n_features, rank), H0 (rank, n_samples).

    With ``devices``, each minibatch's columns (and their local factors) are split over that
    many devices and q(W) is replicated; ``batch_size`` must be a multiple of ``devices``.
    ``progress`` shows a bar over the steps of every epoch and the final pass (None: when
    stderr is a terminal).

    Returns (GammaFactors, losses, steps, elbo): ``losses`` holds the negative minibatch
    estimate of the bound per step, ``elbo`` the bound of the final factors over all data.
    """
    devices = check_devices(devices, batch_size)

    def place(*column_blocks):
        """Minibatch arrays onto the devices, split by column (no-op on one device)."""
        blocks = [b for b in column_blocks if b is not None]
        placed = iter(shard_over_samples(devices, *blocks)[0])
        return [None if b is None else next(placed) for b in column_blocks]

    model = problem.model
    family = capability(model, "cavi")
    _step, _final_block = _minibatch_programs(family.minibatch_step,
                                              family.minibatch_final_block)
    n_samples = H0.shape[1]
    dtype = problem.X.dtype
    hyper = to_device(model.hyper(), dtype)
    factors = family.minibatch_init(W0, H0, model)
    # q(W) is global: one copy on every device.
    _, (shape_W, rate_W) = shard_over_samples(devices, replicated=(factors.shape_W,
                                                                   factors.rate_W))
    shape_H, rate_H = np.array(factors.shape_H), np.array(factors.rate_H)  # host copies
    blocks = _Blocks(problem)
    rng = np.random.default_rng([seed, 0x5B1])
    scale = jnp.asarray(n_samples / batch_size, dtype)
    n_batches = n_samples // batch_size
    losses, t = [], 0
    n_final = -(-n_samples // batch_size)
    bar = progress_bar(epochs * n_batches + n_final, "CAVI minibatches", progress)
    for epoch in range(epochs):
        bar.set_postfix(epoch=f"{epoch + 1}/{epochs}")
        order = rng.permutation(n_samples)
        for b in range(n_batches):
            columns = np.sort(order[b * batch_size:(b + 1) * batch_size])
            X_block, M_block = blocks.get(columns)
            rho = jnp.asarray((t + DELAY) ** (-DECAY), dtype)
            X_block, M_block, sH, rH = place(X_block, M_block, jnp.asarray(shape_H[:, columns]),
                                             jnp.asarray(rate_H[:, columns]))
            shape_W, rate_W, sH, rH, estimate = _step(
                shape_W, rate_W, sH, rH, X_block, M_block, hyper, scale, rho,
                n_sweeps=local_sweeps)
            shape_H[:, columns], rate_H[:, columns] = np.asarray(sH), np.asarray(rH)
            losses.append(-float(estimate))
            t += 1
            bar.update(1)
    # Final pass: every q(H_j) against the final q(W); the bound summed block by block.
    bound = -blocks.log_factorials() - float(family.global_kl(shape_W, rate_W, model))
    for start in range(0, n_samples, batch_size):
        columns = np.arange(start, min(start + batch_size, n_samples))
        X_block, M_block = blocks.get(columns, pad_to=batch_size)
        pad = batch_size - columns.size
        sH = np.pad(shape_H[:, columns], ((0, 0), (0, pad)), constant_values=1.0)
        rH = np.pad(rate_H[:, columns], ((0, 0), (0, pad)), constant_values=1.0)
        X_block, M_block, sH, rH = place(X_block, M_block, jnp.asarray(sH), jnp.asarray(rH))
        sH, rH, part = _final_block(shape_W, rate_W, sH, rH, X_block, M_block, hyper,
                                    n_sweeps=local_sweeps)
        shape_H[:, columns] = np.asarray(sH)[:, :columns.size]
        rate_H[:, columns] = np.asarray(rH)[:, :columns.size]
        bound += float(part)
        bar.update(1)
    bar.close()
    factors = factors._replace(shape_W=shape_W, rate_W=rate_W, shape_H=jnp.asarray(shape_H),
                               rate_H=jnp.asarray(rate_H))
    return factors, np.asarray(losses), t, bound
