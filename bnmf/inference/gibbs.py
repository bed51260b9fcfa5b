"""Gibbs sampling of Poisson–gamma NMF: several chains in one compiled program.

An ``(init, step)`` pair over a :class:`GibbsState`: :func:`gibbs_init` builds the state of one
chain from a starting W, H; :func:`gibbs_step` is one sweep of exact full conditionals
(:mod:`bnmf.inference.gibbs_poisson`): split the counts, draw W, its shapes and rates, H, its
shapes and rates. :func:`fit_gibbs` starts every chain from its own MAP restart, ``vmap``s the
chains, runs burn-in and then keeps every ``thin``-th sweep, in compiled chunks between which a
progress bar advances.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..models import PoissonGamma
from ..models.base import capability, register_capability
from ..models.counts import DenseCounts, SparseCounts
from ..models.hierarchical import HierarchicalPoissonGamma
from ..models.poisson import poisson_counts
from .common import Problem, RawPosterior, floor_positive, key_from_seed, progress_bar
from .gibbs_block import block_update_H, block_update_W
from .gibbs_orbit import scale_moves, shear_moves
from .gibbs_poisson import (
    MAX_TOKENS,
    Allocation,
    HyperPrior,
    allocation,
    latent_sums,
    update_H,
    update_shape_rate,
    update_W,
)
from .map import fit_map

__all__ = ["GIBBS_MODELS", "GibbsState", "fit_gibbs", "gibbs_init", "gibbs_step"]

GIBBS_MODELS = ("poisson", "poisson-hierarchical")
# Sweeps per compiled chunk (one dispatch and one progress update each).
CHUNK = 50


class GibbsState(NamedTuple):
    """One chain: log factors, per-component shapes and rates (fixed or learned), its key."""

    logW: jax.Array   # (n_features, rank)
    logH: jax.Array   # (rank, n_samples)
    a_W: jax.Array    # (rank,)
    b_W: jax.Array
    a_H: jax.Array
    b_H: jax.Array
    key: jax.Array


class GibbsData(NamedTuple):
    """What a sweep reads: the bucketed counts, the mask products' data, the hyperpriors."""

    alloc: Allocation
    counts: object        # DenseCounts or SparseCounts (for M Hᵀ, Wᵀ M)
    prior_W: HyperPrior
    prior_H: HyperPrior
    log_depth: jax.Array  # (n_samples,): H_kj's prior rate is b_k / depth_j


def check_gibbs_problem(problem: Problem) -> bool:
    """Whether the model's hyperparameters are learned; ValueError (naming the methods the
    model supports) for a model without the ``"gibbs_prior"`` capability."""
    return _gibbs_prior(problem).learned


def _gibbs_prior(problem: Problem):
    """The model's :class:`~bnmf.models.base.GibbsPrior` at the problem's rank."""
    return capability(problem.model, "gibbs_prior")(problem.model, problem.rank)


def gibbs_init(key, W, H, hyper: dict) -> GibbsState:
    """State of one chain from W (n_features, rank), H (rank, n_samples) (floored away from
    0) and hyperparameters ``{"a_W", "b_W", "a_H", "b_H"}`` of shape (rank,)."""
    return GibbsState(jnp.log(floor_positive(W)), jnp.log(floor_positive(H)),
                      *(jnp.asarray(hyper[k], W.dtype) for k in ("a_W", "b_W", "a_H", "b_H")),
                      key)


def gibbs_step(state: GibbsState, data: GibbsData, *, learn: bool, sample_W: bool,
               block: bool = False, orbit: bool = False) -> GibbsState:
    """One sweep: z | W, H; W | z, H; (a_W, b_W) | W; H | z, W; (a_H, b_H) | H; with
    ``orbit`` (and W sampled), moves along the orbits of W H, which leave the likelihood
    unchanged (:mod:`bnmf.inference.gibbs_orbit`): each component rescaled before
    (a_H, b_H) | H, then shears of one component into another; with ``block`` (dense
    counts), then W's rows | H
    and H's columns | W by exact independence Metropolis–Hastings steps without the latent
    counts (:mod:`bnmf.inference.gibbs_block`).

    Its random numbers come from the non-partitionable threefry (JAX's counter layout before
    0.5, as good a stream): on CPU the partitionable one took 10–30× longer for the same
    number of bits, and the split's bits are most of a sweep."""
    with jax.threefry_partitionable(False):
        key, k_split, k_W, k_hW, k_H, k_hH, k_bW, k_bH, k_s, k_c = jax.random.split(
            state.key, 10)
        S_W, S_H = latent_sums(k_split, state.logW, state.logH, data.alloc)
        logW, a_W, b_W = state.logW, state.a_W, state.b_W
        if sample_W:
            logW = update_W(k_W, state.logH, a_W, b_W, S_W, data.counts)
            if learn:
                a_W, b_W = update_shape_rate(k_hW, a_W, logW, 0, data.prior_W)
        inverse_depth = jnp.exp(-data.log_depth)[None, :]
        logH = update_H(k_H, logW, state.a_H, state.b_H[:, None] * inverse_depth, S_H,
                        data.counts)
        a_H, b_H = state.a_H, state.b_H
        if orbit and sample_W:  # rescale components (with learned rates: b_W redrawn)
            logW, logH, b_W = scale_moves(k_c, logW, logH, a_W, b_W, a_H, b_H,
                                          data.log_depth, data.prior_W, data.prior_H, learn)
        if learn:  # (a, b) | H / depth: those are the Gamma(a_k, b_k) entries
            a_H, b_H = update_shape_rate(k_hH, a_H, logH - data.log_depth[None, :], 1,
                                         data.prior_H)
        rate_H = b_H[:, None] * inverse_depth
        if orbit and sample_W:
            logW, logH = shear_moves(k_s, logW, logH, a_W, b_W, a_H, rate_H)
        if block:
            X, weight = data.counts.X, data.counts.weight
            if sample_W:
                logW, _ = block_update_W(k_bW, logW, logH, a_W, b_W, X, weight)
            logH, _ = block_update_H(k_bH, logW, logH, a_H, rate_H, X, weight)
    return GibbsState(logW, logH, a_W, b_W, a_H, b_H, key)


def over_chains(fn, states):
    """``fn`` on every chain of ``states`` (leading chain axis), in one compiled program:
    ``vmap`` on accelerators; ``lax.map`` (one chain after another) on CPU, where the chains'
    arrays side by side fall out of cache (measured at 96 × 2,000 rank 10, 4 chains: 67 ms
    a sweep per chain mapped, 104 vmapped, 51 for one chain alone; compilation 24 s vs 37)."""
    if jax.default_backend() == "cpu":
        return jax.lax.map(fn, states)
    return jax.vmap(fn)(states)


def thinned_draws(sweep, states, thin):
    """:data:`CHUNK` draws of every chain (``states`` with a leading chain axis, run by
    :func:`over_chains`), ``thin`` (traced) ``sweep``s apart: (states, draws), the draws
    batched (chain, draw) with their keys left out. For use inside a jitted chunk."""
    def one(state):
        def draw(s, _):
            s = jax.lax.fori_loop(0, thin, lambda _, x: sweep(x), s)
            return s, s._replace(key=jnp.zeros((), jnp.uint32))
        return jax.lax.scan(draw, state, None, length=CHUNK)

    return over_chains(one, states)


@partial(jax.jit, static_argnames=("learn", "sample_W", "block", "orbit"))
def _draws(states, data, thin, *, learn, sample_W, block, orbit):
    """:data:`CHUNK` draws of every chain, ``thin`` (traced) sweeps apart: (states, draws)
    with draws a GibbsState batched (chain, draw), keys left out."""
    return thinned_draws(partial(gibbs_step, data=data, learn=learn, sample_W=sample_W,
                                 block=block, orbit=orbit), states, thin)


def _entries(problem: Problem):
    """Host (rows, cols, counts) of the non-zero observed counts."""
    if isinstance(problem.X, SparseCounts):
        c = problem.X
        return np.asarray(c.rows), np.asarray(c.cols), np.asarray(c.values)
    X, M = np.asarray(problem.X), np.asarray(problem.mask)
    rows, cols = np.nonzero((X != 0) & M)
    return rows, cols, X[rows, cols]


def _priors(problem: Problem, dtype):
    prior = _gibbs_prior(problem)
    return tuple(HyperPrior(*(jnp.asarray(v, dtype) for v in hyper))
                 for hyper in (prior.hyper_W, prior.hyper_H))


def _start_model(problem: Problem, observed_mean: float) -> PoissonGamma:
    """The plain Poisson–gamma model (shape 1, balanced rates) whose MAP starts the chains."""
    rate = 1.0 / np.sqrt(observed_mean / problem.rank)
    return PoissonGamma(a=1.0, rate_W=rate, rate_H=rate)


def _depth(problem: Problem, dtype) -> jax.Array:
    """The model's relative sample depths (n_samples,), ones where it has none."""
    depth = _gibbs_prior(problem).depth
    if depth is None:
        return jnp.ones(problem.X.shape[1], dtype)
    return jnp.asarray(depth(problem.X, problem.mask), dtype)


def _start_hyper(problem: Problem, W, H, depth) -> dict:
    return _gibbs_prior(problem).start(W, H / np.asarray(depth)[None, :])


def chain_starts(problem: Problem, num_chains: int, init: str, seed: int, max_iter: int = 500):
    """W, H of each chain: MAP restarts of the plain Poisson–gamma model (the first from
    ``init``, the others from seeded random starts), stacked (chain, ...)."""
    values = _entries(problem)[2]
    n_observed = (problem.X.shape[0] * problem.X.shape[1] - problem.X.hidden_rows.shape[0]
                  if isinstance(problem.X, SparseCounts) else int(np.asarray(problem.mask).sum()))
    start_problem = Problem(problem.X, problem.mask, problem.rank,
                            _start_model(problem, max(float(values.sum()) / n_observed, 1e-12)),
                            problem.W_fixed)
    Ws, Hs = [], []
    for c in range(num_chains):
        run = fit_map(start_problem, init=init if c == 0 else "random", seed=seed + c,
                      max_iter=max_iter, tol=1e-5, progress=False)
        Ws.append(np.asarray(run.draws["W"][0, 0]))
        Hs.append(np.asarray(run.draws["H"][0, 0]))
    return Ws, Hs


def map_starts(problem: Problem, num_chains: int, init: str, seed: int, map_iter: int,
               names: tuple) -> tuple[list, list]:
    """Each chain's start from a MAP fit of the model itself (the first from ``init``, the
    others from seeded random starts): a list of ``{name: array}`` for the sites ``names``,
    and the updates each fit ran."""
    starts, iterations = [], []
    for c in range(num_chains):
        run = fit_map(problem, init=init if c == 0 else "random", seed=seed + c,
                      max_iter=map_iter, progress=False)
        starts.append({name: np.asarray(run.draws[name][0, 0]) for name in names})
        iterations.append(int(run.info["iterations"]))
    return starts, iterations


def sample_in_chunks(chunk, states, num_warmup: int, num_samples: int, thin: int, bar,
                     names: tuple):
    """Run a sampler's compiled ``chunk(states, thin) -> (states, draws)`` (:data:`CHUNK`
    draws of every chain): burn-in through the same program (whole chunks, so ``num_warmup``
    is rounded up to a multiple of CHUNK), then ``num_samples`` draws ``thin`` sweeps apart.
    Returns (states, warm-up sweeps run, ``{name: host array (chain, num_samples, ...)}`` of
    the draws' fields ``names``), advancing the progress ``bar``."""
    done = 0
    while done < num_warmup:
        states, _ = chunk(states, 1)
        done += CHUNK
        bar.update(CHUNK)
    chunks, kept = [], 0
    while kept < num_samples:  # whole chunks of draws; the last one's surplus is dropped
        states, draws = chunk(states, thin)
        n = min(CHUNK, num_samples - kept)
        chunks.append({name: np.asarray(getattr(draws, name)[:, :n]) for name in names})
        kept += n
        bar.update(n * thin)
    bar.close()
    return states, done, {name: np.concatenate([c[name] for c in chunks], axis=1)
                          for name in names}


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}.")
    return int(value)


def check_chain_counts(num_warmup, num_samples, num_chains, thin) -> tuple[int, int, int, int]:
    """The sampler options every Gibbs driver takes, checked (``num_warmup`` ≥ 0, the others
    ≥ 1, integers, not bools) and returned as ints in the same order."""
    return (_check_count("num_warmup", num_warmup, 0), _check_count("num_samples", num_samples, 1),
            _check_count("num_chains", num_chains, 1), _check_count("thin", thin, 1))


def _block_moves(block_moves: bool | None, counts) -> bool:
    """Whether the sweep makes the block moves: ``None`` where the counts are dense."""
    if block_moves not in (None, True, False):
        raise ValueError(f"block_moves must be None, True or False, got {block_moves!r}.")
    dense = isinstance(counts, DenseCounts)
    if block_moves and not dense:
        raise ValueError("block_moves=True needs dense counts: pass X as a dense array, or "
                         "block_moves=None/False for the latent-count sweep alone on sparse X.")
    return dense if block_moves is None else block_moves


def fit_gibbs(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    thin: int = 1,
    max_tokens: int = MAX_TOKENS,
    block_moves: bool | None = None,
    orbit_moves: bool = False,
    progress: bool | None = None,
) -> RawPosterior:
    """Sample the posterior of the ``poisson`` or ``poisson-hierarchical`` model exactly, by
    latent-count Gibbs sampling (:mod:`bnmf.inference.gibbs_poisson`).

    Parameters
    ----------
    problem : Problem
        Dense X with its mask, or SparseCounts; W may be fixed (``W_fixed``).
    init : {"nndsvda", "random"}
        Start of the first chain's MAP; the other chains start from MAP fits of seeded random
        starts (different restarts: label switching between chains is undone by alignment).
    num_warmup, num_samples, thin : int
        Burn-in sweeps (rounded up to a multiple of 50: ``info["num_warmup"]`` says how many
        ran), then ``num_samples`` draws kept ``thin`` sweeps apart, per chain.
    num_chains : int
        Chains, run together (``vmap``) in one compiled program.
    max_tokens : int
        Counts up to this are split token by token, larger ones by binomials (same
        distribution; only the speed differs).
    block_moves : bool or None
        After each latent-count sweep, move W's rows given H and H's columns given W by exact
        independence Metropolis–Hastings steps (:mod:`bnmf.inference.gibbs_block`): the
        latent counts alone mix slowly at depth. Dense counts only: ``None`` (default) runs
        them on dense X and not on SciPy sparse X (``info["block_moves"]`` says which);
        ``True`` with sparse X raises; ``False`` runs the latent-count sweep alone.
    orbit_moves : bool
        In each sweep, rescale every component and shear components into one another along
        the orbits of W H, which leave the likelihood unchanged, by exact slice draws
        (:mod:`bnmf.inference.gibbs_orbit`): without them the learned rates hardly move and
        chains stay put on the ridge of near-equal W H that dense parts and mixed activities
        make. Any input; none when W is fixed (``info["orbit_moves"]``). Off by default: they
        lifted ESS at 96 × 300 (the module's docstring) and kept coverage on data from the
        prior at 96 × 600 (0.88–0.91 of W), but one 96 × 600 rank 6 fit of flat Dirichlet(1.5)
        parts had not finished after 56 minutes on 2 busy cores, against 3–4 minutes without
        them (not yet diagnosed; ``experiments/results/calibration_gibbs.md``).

    Returns
    -------
    RawPosterior with draws (num_chains, num_samples, ...) of W, H and, for the hierarchical
    model, ``a_W``, ``b_W``, ``a_H``, ``b_H``; ``losses`` is empty.
    """
    learn = check_gibbs_problem(problem)
    num_warmup, num_samples, num_chains, thin = check_chain_counts(num_warmup, num_samples,
                                                                   num_chains, thin)
    max_tokens = _check_count("max_tokens", max_tokens, 1)
    dtype = problem.X.dtype
    rows, cols, values = _entries(problem)
    alloc = allocation(rows, cols, values, dtype, max_tokens)
    prior_W, prior_H = _priors(problem, dtype)
    depth = _depth(problem, dtype)
    data = GibbsData(alloc, poisson_counts(problem), prior_W, prior_H, jnp.log(depth))
    sample_W = problem.W_fixed is None
    block = _block_moves(block_moves, data.counts)
    if not isinstance(orbit_moves, bool):
        raise ValueError(f"orbit_moves must be True or False, got {orbit_moves!r}.")

    Ws, Hs = chain_starts(problem, num_chains, init, seed)
    keys = jax.random.split(key_from_seed(seed), num_chains)
    states = [gibbs_init(k, jnp.asarray(W, dtype), jnp.asarray(H, dtype),
                         _start_hyper(problem, W, H, depth)) for k, W, H in zip(keys, Ws, Hs)]
    states = jax.tree.map(lambda *x: jnp.stack(x), *states)
    if not sample_W:  # a fixed W is used as given (zeros only floored to the smallest float)
        logW = jnp.log(jnp.maximum(jnp.asarray(problem.W_fixed, dtype), jnp.finfo(dtype).tiny))
        states = states._replace(logW=jnp.broadcast_to(logW, states.logW.shape))

    bar = progress_bar(num_warmup + num_samples * thin, "Gibbs sweeps", progress)
    flags = {"learn": learn, "sample_W": sample_W, "block": block, "orbit": orbit_moves}
    states, done, joined = sample_in_chunks(
        lambda states, thin: _draws(states, data, thin, **flags), states, num_warmup,
        num_samples, thin, bar, ("logW", "logH", "a_W", "b_W", "a_H", "b_H"))
    draws = {"W": np.exp(joined["logW"]), "H": np.exp(joined["logH"])}
    if learn:
        names = ("a_H", "b_H") if not sample_W else ("a_W", "b_W", "a_H", "b_H")
        draws.update({name: joined[name] for name in names})
    if not sample_W:
        W = np.asarray(problem.W_fixed)
        draws["W"] = np.broadcast_to(W, draws["H"].shape[:2] + W.shape).copy()
    info = {"algorithm": "gibbs", "num_chains": num_chains, "num_warmup": done,
            "num_samples": num_samples, "thin": thin, "block_moves": block,
            "orbit_moves": orbit_moves and sample_W,
            "split": {"token_slots": 0 if alloc.tokens is None
                      else int(alloc.tokens.entry.size * alloc.tokens.slots.size),
                      "binomial_entries": 0 if alloc.binomial is None
                      else int(alloc.binomial.rows.shape[0])}}
    return RawPosterior(draws=draws, losses=np.zeros(0), elbo=None, info=info)


# The models this sampler serves (those registering a "gibbs_prior"), as capabilities
# (METHOD_CAPABILITY["gibbs"]); the sweeps' mathematics is to move beside the models.
for _model_class in (PoissonGamma, HierarchicalPoissonGamma):
    register_capability(_model_class, "gibbs_sweep", fit_gibbs)
