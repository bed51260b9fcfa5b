"""Gibbs sampling of negative-binomial NMF (model ``"negbin"``), exact through its gamma–Poisson
mixture.

``X_ij ~ NB(μ_ij, φ)`` with μ = W H is ``X_ij ~ Poisson(g_ij μ_ij)`` with a multiplier
``g_ij ~ Gamma(φ, φ)`` (mean 1) per entry. Given the multipliers the model is Poisson–gamma
NMF whose entries are weighted by g, so every conditional is a known law and one sweep is:

1. φ | W, H, X, the multipliers integrated out, per group (feature, sample or shared): one
   slice draw in log φ (Neal 2003) of ``Σ M log NB + log p(φ) + log φ``, the model's own
   :func:`~bnmf.models.negbin.dispersion_objective`;
2. ``g_ij | φ, W, H, X ~ Gamma(φ + X_ij, φ + μ_ij)`` on observed entries; with step 1 an
   exact draw from p(φ, g | W, H, X). Drawing φ given g instead would couple the two: at
   large φ the g are all near 1 and pin φ to a narrow band that moves slowly;
3. the latent counts z | W, H (:func:`~bnmf.inference.gibbs_poisson.latent_sums`; g cancels
   from the split ``p_ijk ∝ W_ik H_kj``);
4. ``W_ik | z, g, H ~ Gamma(a + Σ_j z_ijk, b_W + Σ_j M_ij g_ij H_kj)``, then H alike;
5. with ``block_moves``, W's rows | H, g and H's columns | W, g by the exact independence
   Metropolis–Hastings steps of :mod:`bnmf.inference.gibbs_block`, without the latent counts:
   given g the likelihood in μ is ``Σ M (X log μ − g μ)``, the Poisson one of pseudo-counts
   X / g with weights g, which is what those steps take.

W and H are kept in log space (tiny gamma shapes do not underflow). A sweep costs the split,
O(nnz · rank), two dense products with M ∘ g, O(n_features · n_samples · rank), and the NB
log-likelihood of every entry once per evaluation of the slice draw (about 6–10). Dense X only:
the multipliers live on every observed entry, zeros included.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..models.base import register_capability
from ..models.counts import DenseCounts
from ..models.negbin import (
    NegativeBinomial,
    broadcast_dispersion,
    dispersion_objective,
    negbin_mean,
)
from .common import Problem, RawPosterior, floor_positive, key_from_seed, progress_bar
from .gibbs import (
    _check_count,
    _entries,
    check_chain_counts,
    map_starts,
    sample_in_chunks,
    thinned_draws,
)
from .gibbs_block import block_update_H, block_update_W
from .gibbs_orbit import slice_stepping_out
from .gibbs_poisson import MAX_TOKENS, Allocation, allocation, latent_sums, log_gamma_draw
from .gibbs_poisson import update_H as gamma_update_H
from .gibbs_poisson import update_W as gamma_update_W

__all__ = ["NegBinGibbsData", "NegBinGibbsState", "dispersion_log_density",
           "fit_negbin_gibbs", "multiplier_conditional", "negbin_sweep", "update_dispersion"]

# Initial bracket of φ's slice draw, in log φ (stepped out from there: at most 16 widths).
PHI_WIDTH = 1.0


class NegBinGibbsState(NamedTuple):
    """One chain: log factors, the dispersions φ (the model's dispersion shape), its key."""

    logW: jax.Array   # (n_features, rank)
    logH: jax.Array   # (rank, n_samples)
    phi: jax.Array    # (n_features,), (n_samples,) or ()
    key: jax.Array


class NegBinGibbsData(NamedTuple):
    """What a sweep reads: the bucketed non-zero counts, X and its bool mask (n_features,
    n_samples; X is 0 where masked)."""

    alloc: Allocation
    X: jax.Array
    M: jax.Array


def by_group(A, dispersion: str):
    """The entries of A (n_features, n_samples) as rows of φ groups: (F, N), (N, F) or
    (1, F · N)."""
    if dispersion == "feature":
        return A
    if dispersion == "sample":
        return A.T
    return A.reshape(1, -1)


def dispersion_log_density(u, x, m, mean, model: NegativeBinomial):
    """log p(log φ = u | W, H, X) up to a constant for one group: its counts ``x``, bool mask
    ``m`` and NB means ``mean`` (L,), u a scalar. The model's MAP objective of φ negated."""
    return -dispersion_objective(x[None], m[None], mean[None], jnp.exp(u)[None], "feature",
                                 model.phi_shape, model.phi_rate)[0]


def update_dispersion(key, phi, X, M, mean, model: NegativeBinomial):
    """φ | W, H, X (multipliers integrated out): one slice draw in log φ per group, the
    groups independent. ``mean`` = W H (n_features, n_samples); returns φ of φ's shape."""
    dispersion = model.dispersion
    u0 = jnp.log(jnp.reshape(phi, (-1,)))
    width = jnp.asarray(PHI_WIDTH, u0.dtype)

    def one(key, u, x, m, mu):
        return u + slice_stepping_out(
            key, lambda t: dispersion_log_density(u + t, x, m, mu, model), width)

    u = jax.vmap(one)(jax.random.split(key, u0.shape[0]), u0, by_group(X, dispersion),
                      by_group(M, dispersion), by_group(mean, dispersion))
    return jnp.reshape(jnp.exp(u), jnp.shape(phi))


def multiplier_conditional(X, mean, phi_b):
    """Shape and rate of g_ij | φ, W, H, X: Gamma(φ + X_ij, φ + μ_ij); ``phi_b`` broadcasts
    against X (n_features, n_samples)."""
    return phi_b + X, phi_b + mean


def block_pseudo_counts(X, M, g):
    """(X / g, M ∘ g) (n_features, n_samples): the Poisson pseudo-counts and weights whose
    weighted Poisson likelihood ``Σ g (X/g log μ − μ)`` is the NB model's given the
    multipliers g (0 where masked, and where X is 0, so an underflowed g is never divided
    by)."""
    tiny = jnp.finfo(g.dtype).tiny
    return jnp.where(M & (X > 0), X / jnp.maximum(g, tiny), 0.0), jnp.where(M, g, 0.0)


def negbin_sweep(state: NegBinGibbsState, data: NegBinGibbsData, model: NegativeBinomial,
                 *, sample_W: bool, block: bool = True) -> NegBinGibbsState:
    """One sweep: (φ, g) | W, H; z | W, H; W | z, g, H (unless W is fixed); H | z, g, W;
    with ``block``, W's rows | H, g and H's columns | W, g (random numbers from the
    non-partitionable threefry, as :func:`bnmf.inference.gibbs.gibbs_step` explains)."""
    with jax.threefry_partitionable(False):
        key, k_phi, k_g, k_split, k_W, k_H, k_bW, k_bH = jax.random.split(state.key, 8)
        mean = negbin_mean(jnp.exp(state.logW), jnp.exp(state.logH))
        phi = update_dispersion(k_phi, state.phi, data.X, data.M, mean, model)
        shape, rate = multiplier_conditional(data.X, mean, broadcast_dispersion(phi, model.dispersion))
        g = jnp.where(data.M, jnp.exp(log_gamma_draw(k_g, shape, rate)), 0.0)
        counts = DenseCounts(data.X, g)  # M ∘ g weights the exposures of W and H
        S_W, S_H = latent_sums(k_split, state.logW, state.logH, data.alloc)
        rank = state.logW.shape[1]
        dtype = state.logW.dtype
        a, b_W, b_H = (jnp.full((rank,), v, dtype) for v in (model.a, model.rate_W, model.rate_H))
        logW = state.logW
        if sample_W:
            logW = gamma_update_W(k_W, state.logH, a, b_W, S_W, counts)
        logH = gamma_update_H(k_H, logW, a, b_H, S_H, counts)
        if block:
            pseudo, weight = block_pseudo_counts(data.X, data.M, g)
            if sample_W:
                logW, _ = block_update_W(k_bW, logW, logH, a, b_W, pseudo, weight)
            logH, _ = block_update_H(k_bH, logW, logH, a, b_H, pseudo, weight)
    return NegBinGibbsState(logW, logH, phi, key)


@partial(jax.jit, static_argnames=("sample_W", "block"))
def _chunk(states, data, model, thin, *, sample_W, block):
    """:data:`~bnmf.inference.gibbs.CHUNK` draws of every chain, ``thin`` (traced) sweeps
    apart: (states, draws)."""
    return thinned_draws(partial(negbin_sweep, data=data, model=model, sample_W=sample_W,
                                 block=block), states, thin)


def fit_negbin_gibbs(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    thin: int = 1,
    max_tokens: int = MAX_TOKENS,
    map_iter: int = 500,
    block_moves: bool = True,
    progress: bool | None = None,
) -> RawPosterior:
    """Sample the posterior of the ``negbin`` model (W, H, φ) exactly, by Gibbs sweeps through
    its gamma–Poisson mixture (this module's docstring).

    Parameters
    ----------
    problem : Problem
        Dense X of counts with its mask (SciPy sparse input: ValueError), a resolved
        :class:`~bnmf.models.NegativeBinomial`; W may be fixed (``W_fixed``).
    init : {"nndsvda", "random"}
        Start of the first chain's MAP (the model's own MM updates); the other chains start
        from MAP fits of seeded random starts (label switching is undone by alignment).
    num_warmup, num_samples, thin : int
        Burn-in sweeps (rounded up to a multiple of 50: ``info["num_warmup"]`` says how many
        ran), then ``num_samples`` draws kept ``thin`` sweeps apart, per chain.
    num_chains : int
        Chains, run together in one compiled program.
    max_tokens : int
        Counts up to this are split token by token, larger ones by binomials.
    map_iter : int
        Most updates of each starting MAP fit.
    block_moves : bool
        After each sweep, move W's rows and H's columns given the multipliers by exact
        independence Metropolis–Hastings steps without the latent counts (step 5 of this
        module's docstring): the latent counts alone mix slowly.

    Returns
    -------
    RawPosterior with draws (num_chains, num_samples, ...) of W, H and ``phi``; ``losses``
    is empty.
    """
    model = problem.model
    if not isinstance(model, NegativeBinomial):
        raise TypeError(f"the negative-binomial Gibbs sampler needs model 'negbin', got "
                        f"{getattr(model, 'name', model)!r}.")
    if problem.sparse:
        raise ValueError("method='gibbs' of model 'negbin' needs dense X (its multipliers live "
                         "on every entry): pass a dense array (e.g. X.toarray()).")
    num_warmup, num_samples, num_chains, thin = check_chain_counts(num_warmup, num_samples,
                                                                   num_chains, thin)
    max_tokens = _check_count("max_tokens", max_tokens, 1)
    map_iter = _check_count("map_iter", map_iter, 1)
    dtype = problem.X.dtype
    rows, cols, values = _entries(problem)
    M = (jnp.ones(problem.X.shape, bool) if problem.mask is None
         else jnp.asarray(problem.mask, bool))
    data = NegBinGibbsData(allocation(rows, cols, values, dtype, max_tokens),
                           jnp.where(M, problem.X, 0.0).astype(dtype), M)
    sample_W = problem.W_fixed is None
    if not isinstance(block_moves, bool):
        raise ValueError(f"block_moves must be True or False, got {block_moves!r}.")  # noqa: TRY004

    starts, map_iterations = map_starts(problem, num_chains, init, seed, map_iter,
                                        ("W", "H", "phi"))
    stacked = {name: jnp.asarray(np.stack([s[name] for s in starts]), dtype)
               for name in ("W", "H", "phi")}
    states = NegBinGibbsState(jnp.log(floor_positive(stacked["W"])),
                              jnp.log(floor_positive(stacked["H"])),
                              floor_positive(stacked["phi"]),
                              jax.random.split(key_from_seed(seed), num_chains))
    if not sample_W:  # a fixed W is used as given (zeros only floored to the smallest float)
        logW = jnp.log(jnp.maximum(jnp.asarray(problem.W_fixed, dtype), jnp.finfo(dtype).tiny))
        states = states._replace(logW=jnp.broadcast_to(logW, states.logW.shape))

    bar = progress_bar(num_warmup + num_samples * thin, "Gibbs sweeps (negbin)", progress)
    states, done, joined = sample_in_chunks(
        lambda states, thin: _chunk(states, data, model, thin, sample_W=sample_W,
                                      block=block_moves), states,
        num_warmup, num_samples, thin, bar, ("logW", "logH", "phi"))
    draws = {"W": np.exp(joined["logW"]), "H": np.exp(joined["logH"]), "phi": joined["phi"]}
    if not sample_W:
        W = np.asarray(problem.W_fixed)
        draws["W"] = np.broadcast_to(W, draws["H"].shape[:2] + W.shape).copy()
    info = {"algorithm": "gibbs", "sampler": "negbin-gamma-poisson", "num_chains": num_chains,
            "num_warmup": done, "num_samples": num_samples, "thin": thin,
            "sample_W": sample_W, "block_moves": block_moves,
            "map_iterations": map_iterations}
    return RawPosterior(draws=draws, losses=np.zeros(0), elbo=None, info=info)


# method="gibbs" of the negbin model (METHOD_CAPABILITY["gibbs"] of bnmf.models.base)
register_capability(NegativeBinomial, "gibbs_sweep", fit_negbin_gibbs)
