"""Many fits of one rank at once: restarts and cross-validation folds batched with ``jax.vmap``.

Rank selection fits the same model many times at one rank: from several starting points
(restarts) and on several training masks (folds). Every member of such a batch has the same
shapes, so one compiled program runs them all: ``vmap`` over a leading batch axis of starting
points, masks and random keys. The building blocks are those of :mod:`bnmf.inference.map` and
:mod:`bnmf.inference.svi` (the multiplicative/HALS chunks, the log-space guide and its entropy),
so a member of a batch follows the same algorithm as :func:`~bnmf.inference.fit_map` or
:func:`~bnmf.inference.fit_svi` with a masked problem.

Differences from the single fits, and why:

* every member runs the masked updates (the capability's ``prepare_masked``): members differ
  in their masks, and one program serves them all (for Poisson the masked update equals the full one on a full
  mask; for Gaussian it is the masked multiplicative MM instead of HALS, same objective;
  and Poisson members start without :func:`~bnmf.inference.map.fit_map`'s least-squares
  warm-up, which needs fully observed X, as a masked single fit does);
* the batch stops when every member has converged (members that converged earlier keep
  stepping, which does not hurt an MM or a converged SVI).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from ..models.base import (
    capability,
    has_capability,
    model_name,
    supported_methods,
    to_constrained,
    to_unconstrained,
)
from .common import (
    Problem,
    RawPosterior,
    floor_positive,
    key_from_seed,
    layout_unravel,
    site_layout,
    starting_point,
    to_bnmf_layout,
    to_device,
)
from .driver import cached_program, compiled_step, drive
from .map import CHUNK
from .svi import GUIDES, _guide_init, _guide_sample, averaged_chunk, neg_elbo

__all__ = ["BatchFit", "batch_starts", "fit_map_batch", "fit_svi_batch", "keys_for", "member_raw"]


class BatchFit(NamedTuple):
    """Result of a batch of fits at one rank (leading axis B = members).

    Attributes
    ----------
    values : dict of arrays
        Point estimates in bnmf's layout: ``W`` (B, n_features, rank), ``H`` (B, rank,
        n_samples) and the model's other sites. For SVI, the guide's median exp(loc).
    losses : ndarray of shape (B, n_steps)
        Optimisation trace per member (negative log joint for MAP, negative ELBO for SVI).
    elbo : ndarray of shape (B,) or None
        Final ELBO estimate per member (SVI).
    converged : ndarray of bool, shape (B,)
    iterations : int
        Steps taken (the same for every member).
    guide : dict of arrays or None
        SVI guide parameters with a leading B axis (``loc``, ``log_scale``, ...).
    unravel : callable or None
        Maps a flat ``u`` (one member's) to the dict of log-site values (NumPyro layout).
    sampler : callable or None
        ``sampler(guide_of_one_member, keys, model)``: one draw of every site per key (NumPyro
        layout), compiled once for the batch.
    """

    values: dict
    losses: np.ndarray
    elbo: np.ndarray | None
    converged: np.ndarray
    iterations: int
    guide: dict | None = None
    unravel: Callable | None = None
    sampler: Callable | None = None


def batch_starts(X: np.ndarray, masks: np.ndarray, rank: int, inits, seeds, dtype):
    """Starting W (B, n_features, rank) and H (B, rank, n_samples), one per member.

    ``masks`` is (B, n_features, n_samples); ``inits`` and ``seeds`` give each member's
    ``init`` ("nndsvda" or "random") and seed, as in :func:`~bnmf.inference.common.starting_point`.
    """
    Ws, Hs = zip(*(starting_point(X, m, rank, init, int(s))
                   for m, init, s in zip(masks, inits, seeds)))
    return to_device(np.stack(Ws), dtype), to_device(np.stack(Hs), dtype)


# ------------------------------------------------------------------------------------ MAP
@cached_program
def _batch_programs(prepare_masked, init):
    """Compiled per-member ``prepare_masked`` and ``init`` of a ``"map_update"`` capability,
    vmapped over the members' masks (and starts)."""
    prepare = jax.jit(jax.vmap(prepare_masked, in_axes=(None, 0, None)))
    start = jax.jit(jax.vmap(init, in_axes=(0, 0, 0, None)))
    return prepare, start


def map_updates_for_batch(model):
    """The ``"map_update"`` capability of ``model``, or a ValueError saying that batched MAP
    restarts and folds need one (never another model's updates in its place)."""
    if not has_capability(model, "map_update"):
        raise ValueError(
            f"method='map' fits restarts and folds with closed-form MAP updates, which model "
            f"{model_name(model)!r} does not have; it supports method="
            f"{list(supported_methods(model))}: use method='svi' for this model."
        )
    return capability(model, "map_update")


def fit_map_batch(X, masks, rank: int, model, W0, H0, *, max_iter: int = 2000,
                  tol: float = 1e-6) -> BatchFit:
    """MAP fits of a batch of masks and starts with the model's closed-form updates, all at
    once (one ``vmap``-ed program).

    Parameters
    ----------
    X : jax array of shape (n_features, n_samples)
        Data, 0 where unobserved (shared by every member).
    masks : jax bool array of shape (B, n_features, n_samples)
        Each member's training mask (True = seen by the fit).
    rank : int
    model : a resolved model with the ``"map_update"`` capability
        (a ValueError names the methods of a model without one).
    W0, H0 : jax arrays of shape (B, n_features, rank), (B, rank, n_samples)
        Starting points.

    Returns
    -------
    BatchFit with ``values`` W, H (and the model's other sites, e.g. ``sigma``) per member.
    """
    updates = map_updates_for_batch(model)
    prepare, start = _batch_programs(updates.prepare_masked, updates.init)
    aux = prepare(X, masks, model)
    state = start(W0, H0, aux, model)
    program = compiled_step(updates.step, (True,), True)
    state, losses, iterations, converged = drive(
        lambda s, n: program(s, aux, model, n), state, max_iter, CHUNK, tol, False, "MAP batch",
        exact_steps=True)
    return BatchFit(values=dict(updates.values(state)), losses=losses, elbo=None,
                    converged=converged, iterations=iterations)


# ------------------------------------------------------------------------------------ SVI
def _svi_init_values(model, start: BatchFit, X, masks) -> dict:
    """Starting values of every NumPyro site per member (NumPyro layout, floored above 0),
    the batched counterpart of :func:`~bnmf.inference.map.posterior_start`."""
    W = jax.vmap(floor_positive)(start.values["W"])
    H = jax.vmap(floor_positive)(start.values["H"])
    extras = jax.vmap(lambda w, h, m: model.init_extras(w, h, X, m))(W, H, masks)
    extras.update({k: v for k, v in start.values.items() if k in extras})
    return {"W": W, "H": jnp.swapaxes(H, -1, -2), **extras}


def fit_svi_batch(X, masks, rank: int, model, W0, H0, keys, *, guide: str = "normal",
                  guide_rank: int = 4, max_steps: int = 5000, min_steps: int = 2000,
                  tol: float = 1e-5, learning_rate: float = 0.02, num_particles: int = 1,
                  elbo_particles: int = 32, init_scale: float = 0.05,
                  map_iter: int = 500) -> BatchFit:
    """Variational fits of a batch of masks and starts, all in one compiled program.

    Each member follows :func:`~bnmf.inference.fit_svi`: a MAP start (``map_iter`` MM steps),
    then Adam on the ELBO of a log-space normal guide with a decaying step and Polyak-averaged
    iterates. Arguments as :func:`fit_map_batch`, plus ``keys`` (B, 2), one PRNG key per
    member, and the options of :func:`~bnmf.inference.fit_svi`.

    Returns
    -------
    BatchFit with the guide parameters per member, their ``unravel`` and each member's ELBO.
    """
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}.")
    # the MAP start: the model's own closed-form updates, or those of the model it declares
    # as its start ("start_model", e.g. the horseshoe's flat-prior likelihood)
    start_model = (capability(model, "start_model")(model)
                   if has_capability(model, "start_model") else model)
    start = fit_map_batch(X, masks, rank, start_model, W0, H0, max_iter=map_iter, tol=1e-5)
    init_values = _svi_init_values(model, start, X, masks)
    chunk = 100
    optimizer, unravel, batched_chunk, elbo_estimate, sampler = _svi_batch_programs(
        jax.tree.structure(model), rank, site_layout(jax.tree.map(lambda v: v[0], init_values)),
        num_particles, float(learning_rate), max_steps, elbo_particles, chunk)
    locs = jax.vmap(lambda v: ravel_pytree(to_unconstrained(model, v))[0])(init_values)
    key_guide, key_steps, key_elbo = (jnp.stack(k) for k in zip(*(
        jax.random.split(k, 3) for k in keys)))
    params = jax.vmap(lambda loc, k: _guide_init(guide, loc, init_scale, guide_rank, k))(
        locs, key_guide)
    state = (params, jax.vmap(optimizer.init)(params), key_steps, params)
    # Polyak averaging as in fit_svi: the chunk's average iterate is the result.
    (_, _, _, params), losses, iterations, converged = drive(
        lambda s: batched_chunk(s, masks, X, model), state, max_steps, chunk, tol, False,
        "SVI batch", noisy=True, min_iter=min(min_steps, max_steps))

    elbo = np.asarray(elbo_estimate(params, key_elbo, masks, X, model), dtype=np.float64)
    medians = jax.vmap(lambda loc: to_constrained(model, unravel(loc)))(params["loc"])
    values = {name: np.asarray(v) for name, v in medians.items()}
    values["H"] = np.swapaxes(values["H"], -1, -2)
    return BatchFit(values=values, losses=losses, elbo=elbo, converged=converged,
                    iterations=iterations, guide=jax.tree.map(np.asarray, params),
                    unravel=unravel, sampler=sampler)


@cached_program
def _svi_batch_programs(model_structure, rank: int, layout: tuple, num_particles: int,
                        learning_rate: float, max_steps: int, elbo_particles: int, chunk: int):
    """The optimizer, ``unravel`` and compiled programs of :func:`fit_svi_batch` for one kind
    of model (``jax.tree.structure`` of the resolved model), member site layout and set of
    options: ``batched_chunk(state, masks, X, model)``, ``elbo_estimate(params, keys, masks,
    X, model)`` and ``sampler(member_params, keys, model)``. The data and hyperparameters are
    arguments, so another batch of the same shapes (other data, other masks) reuses them."""
    del model_structure  # the cache key: the programs are traced for one model structure
    unravel = layout_unravel(layout)
    optimizer = optax.adam(optax.exponential_decay(learning_rate, max(max_steps, 1), 0.1))

    def loss(params, key, mask, X, model):
        return neg_elbo(params, key, Problem(X, mask, rank, model), unravel, num_particles)

    batched_chunk = jax.jit(jax.vmap(averaged_chunk(loss, optimizer, chunk),
                                     in_axes=(0, 0, None, None)))

    @jax.jit
    @partial(jax.vmap, in_axes=(0, 0, 0, None, None))
    def elbo_estimate(params, key, mask, X, model):
        keys = jax.random.split(key, elbo_particles)
        return -lax.map(lambda k: loss(params, k, mask, X, model), keys).mean()

    @jax.jit
    def sampler(member_params, keys, model):
        return jax.vmap(lambda k: to_constrained(
            model, unravel(_guide_sample(member_params, k))))(keys)

    return optimizer, unravel, batched_chunk, elbo_estimate, sampler


def member_raw(batch: BatchFit, index: int, problem: Problem, *, seed: int = 0,
               num_draws: int = 1000, info: dict | None = None) -> RawPosterior:
    """One member of a batch as a :class:`RawPosterior` (what :func:`bnmf.posterior.build_idata`
    takes): ``num_draws`` guide draws for SVI, the point estimate for MAP."""
    if batch.guide is not None:
        guide = jax.tree.map(lambda v: jnp.asarray(v[index]), batch.guide)
        samples = batch.sampler(guide, jax.random.split(key_from_seed(seed), num_draws),
                                problem.model)
        draws = to_bnmf_layout({k: v[None] for k, v in samples.items()}, problem)
        elbo = float(batch.elbo[index])
    else:
        draws = {k: np.asarray(v[index])[None, None] for k, v in batch.values.items()}
        elbo = None
    member_info = {"iterations": int(batch.iterations),
                   "converged": bool(batch.converged[index]), **(info or {})}
    return RawPosterior(draws=draws, losses=np.asarray(batch.losses[index]), elbo=elbo,
                        info=member_info)


def keys_for(seeds) -> Any:
    """One PRNG key per member, (B, 2), from integer seeds."""
    return jnp.stack([key_from_seed(int(s)) for s in seeds])
