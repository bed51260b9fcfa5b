"""Gibbs sampling of the refit model (:mod:`bnmf.models.refit`): W fixed, cohort share prior.

One sweep, with W fixed: split every non-zero count over the parts (latent counts, as for
Poisson–gamma NMF: :func:`bnmf.inference.gibbs_poisson.latent_sums`, parts outside a sample's
support get none), draw H from its gamma conditional (:func:`bnmf.models.refit.h_conditional`,
in log space, so tiny shapes do not underflow), then each part's share π_k and shape a_k by
random-walk Metropolis steps on their log conditionals (neither prior is conjugate to the
gamma exposures). Chains start at the model's MAP (its ``"map_update"`` capability), run
together (``vmap``) in compiled chunks of :data:`~bnmf.inference.gibbs.CHUNK` sweeps.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..models.base import register_capability
from ..models.counts import mask_left
from ..models.poisson import poisson_counts
from ..models.refit import (
    RefitPoisson,
    h_conditional,
    sample_totals,
    shape_log_conditional,
    share_log_conditional,
)
from .common import Problem, RawPosterior, key_from_seed, progress_bar
from .gibbs import CHUNK, _check_count, _entries, check_chain_counts, sample_in_chunks
from .gibbs_poisson import (
    SHAPE_PROPOSAL,
    SHAPE_STEPS,
    allocation,
    latent_sums,
    log_gamma_draw,
)
from .map import fit_map

__all__ = ["RefitGibbsState", "fit_refit_gibbs", "refit_sweep"]

# Counts up to this are split token by token. Higher than the NMF sampler's MAX_TOKENS: with
# a reference of K parts (65 PCAWG signatures) a binomial split is K − 1 sequential binomial
# draws per entry, slower than the tokens of any count a catalogue's entry usually holds.
REFIT_MAX_TOKENS = 4096
# Random-walk scale on log π_k: c / sqrt(α_π + n a_k), about 2.4 posterior sds (the
# conditional's curvature in log π is about α_π + n a_k).
SHARE_PROPOSAL = 2.4


class RefitGibbsState(NamedTuple):
    logH: jax.Array    # (K, n_samples)
    share: jax.Array   # (K,)
    shape: jax.Array   # (K,)
    key: jax.Array


class RefitGibbsData(NamedTuple):
    """What a sweep reads: the bucketed counts, log W, Wᵀ M and the totals N_j."""

    alloc: object
    logW: jax.Array
    exposure: jax.Array   # Wᵀ M, (K, n_samples)
    totals: jax.Array


def metropolis(key, u, log_density, scale, steps: int):
    """``steps`` random-walk Metropolis steps on each entry of ``u`` (independent targets,
    ``log_density(u)`` elementwise, proposal sd ``scale``); returns the new ``u``."""
    current = log_density(u)
    for k in jax.random.split(key, steps):
        k_move, k_accept = jax.random.split(k)
        proposal = u + scale * jax.random.normal(k_move, u.shape, u.dtype)
        proposed = log_density(proposal)
        log_uniform = jnp.log(jax.random.uniform(k_accept, u.shape, u.dtype,
                                                 minval=jnp.finfo(u.dtype).tiny))
        accept = log_uniform < proposed - current
        u = jnp.where(accept, proposal, u)
        current = jnp.where(accept, proposed, current)
    return u


def refit_sweep(state: RefitGibbsState, data: RefitGibbsData, model: RefitPoisson
                ) -> RefitGibbsState:
    """One sweep: z | H; H | z, π, a; π | H, a; a | H, π (random numbers from the
    non-partitionable threefry, as :func:`bnmf.inference.gibbs.gibbs_step` explains)."""
    with jax.threefry_partitionable(False):
        return _sweep(state, data, model)


def _sweep(state: RefitGibbsState, data: RefitGibbsData, model: RefitPoisson) -> RefitGibbsState:
    key, k_split, k_H, k_share, k_shape = jax.random.split(state.key, 5)
    logH = state.logH
    if model.support is not None:
        logH = jnp.where(model.support, logH, -jnp.inf)   # no counts for absent parts
    _, S_H = latent_sums(k_split, data.logW, logH, data.alloc)
    shape_post, rate_post = h_conditional(model, S_H, data.exposure, state.share, state.shape,
                                          data.totals)
    logH = log_gamma_draw(k_H, shape_post, rate_post)
    n = logH.shape[1]
    share = jnp.exp(metropolis(
        k_share, jnp.log(state.share),
        lambda u: share_log_conditional(model, u, state.shape, logH, data.totals),
        SHARE_PROPOSAL / jnp.sqrt(model.share_shape + n * state.shape), SHAPE_STEPS))
    shape = jnp.exp(metropolis(
        k_shape, jnp.log(state.shape),
        lambda u: shape_log_conditional(model, u, share, logH, data.totals),
        SHAPE_PROPOSAL / np.sqrt(n), SHAPE_STEPS))
    return RefitGibbsState(logH, share, shape, key)


@partial(jax.jit, static_argnames=("length",))
def _chunk(states, data, model, thin, *, length=CHUNK):
    """``length`` draws of every chain, ``thin`` (traced) sweeps apart: (states, draws)."""
    def one(state):
        def draw(s, _):
            s = jax.lax.fori_loop(0, thin, lambda _, x: refit_sweep(x, data, model), s)
            return s, s._replace(key=jnp.zeros((), jnp.uint32))
        return jax.lax.scan(draw, state, None, length=length)

    return jax.vmap(one)(states)


def fit_refit_gibbs(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    thin: int = 1,
    max_tokens: int = REFIT_MAX_TOKENS,
    map_iter: int = 500,
    progress: bool | None = None,
) -> RawPosterior:
    """Sample the refit model's posterior (H, share, shape; W fixed) by Gibbs sweeps.

    Parameters
    ----------
    problem : Problem
        Dense X with its mask, ``W_fixed`` (n_features, K) and a resolved
        :class:`~bnmf.models.refit.RefitPoisson`.
    init : str
        Unused (the chains start at the model's MAP); accepted for the common signature.
    num_warmup, num_samples, thin, num_chains : int
        Burn-in sweeps (rounded up to a multiple of 50: ``info["num_warmup"]`` says how many
        ran), then ``num_samples`` draws ``thin`` sweeps apart, per chain; chains run
        together (``vmap``).
    max_tokens : int
        Counts up to this are split token by token, larger ones by binomials.
    map_iter : int
        Coordinate-ascent updates of the starting MAP.

    Returns
    -------
    RawPosterior with draws (num_chains, num_samples, ...) of H (K, n_samples), ``share``,
    ``shape`` (K,) and the fixed W (a broadcast view); ``losses`` is empty.
    """
    del init
    if not isinstance(problem.model, RefitPoisson):
        raise TypeError(f"the refit Gibbs sampler needs model 'refit', got "
                         f"{getattr(problem.model, 'name', problem.model)!r}.")
    if problem.sparse or problem.W_fixed is None:
        raise ValueError("the refit Gibbs sampler takes dense X and a fixed W (W_fixed).")
    num_warmup, num_samples, num_chains, thin = check_chain_counts(num_warmup, num_samples,
                                                                   num_chains, thin)
    max_tokens = _check_count("max_tokens", max_tokens, 1)
    map_iter = _check_count("map_iter", map_iter, 1)
    model, dtype = problem.model, problem.X.dtype
    rows, cols, values = _entries(problem)
    W = jnp.asarray(problem.W_fixed, dtype)
    data = RefitGibbsData(allocation(rows, cols, values, dtype, max_tokens),
                          jnp.log(jnp.maximum(W, jnp.finfo(dtype).tiny)),
                          mask_left(poisson_counts(problem), W),
                          sample_totals(problem.X, problem.mask))
    start = fit_map(problem, seed=seed, max_iter=map_iter, tol=1e-6, progress=False)
    first = {name: jnp.asarray(start.draws[name][0, 0], dtype) for name in ("H", "share", "shape")}
    keys = jax.random.split(key_from_seed(seed), num_chains)
    one = RefitGibbsState(jnp.log(jnp.maximum(first["H"], jnp.finfo(dtype).tiny)),
                          first["share"], first["shape"], keys[0])
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_chains,) + x.shape), one)
    states = states._replace(key=keys)

    bar = progress_bar(num_warmup + num_samples * thin, "Gibbs sweeps (refit)", progress)
    states, done, joined = sample_in_chunks(
        lambda states, thin: _chunk(states, data, model, thin), states, num_warmup,
        num_samples, thin, bar, ("logH", "share", "shape"))
    H = np.exp(joined["logH"])
    W_np = np.asarray(problem.W_fixed)
    draws = {"H": H, "share": joined["share"], "shape": joined["shape"],
             "W": np.broadcast_to(W_np, H.shape[:2] + W_np.shape)}
    info = {"algorithm": "gibbs", "num_chains": num_chains, "num_warmup": done,
            "num_samples": num_samples, "thin": thin,
            "map_iterations": int(start.info["iterations"])}
    return RawPosterior(draws=draws, losses=np.zeros(0), elbo=None, info=info)


# method="gibbs" of the refit model (METHOD_CAPABILITY["gibbs"] of bnmf.models.base)
register_capability(RefitPoisson, "gibbs_sweep", fit_refit_gibbs)
