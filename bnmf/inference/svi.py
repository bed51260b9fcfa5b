"""Stochastic variational inference (SVI) in log space, compiled end to end.

The guide lives on the unconstrained ``u`` of every site (``log`` of a positive site, a real
site as it is; the model's :class:`~bnmf.models.base.Site` supports say which):

* ``guide="normal"`` (default): mean-field normal in u, i.e. independent log-normal factors;
* ``guide="lowrank"``: a normal in u with covariance ``diag(d²) + L Lᵀ`` (``L`` of rank
  ``guide_rank``), which keeps correlations between W and H entries.

The objective is the ELBO ``E_q[log p(X, exp(u)) + Σu] + H[q]`` (``Σu`` is the log-Jacobian of
``exp``), with the model's log joint from NumPyro's ``log_density`` traced inside one compiled
step; the reparameterised gradient is followed by optax's Adam, with a step size decaying
tenfold over ``max_steps``. The guide starts at the MAP, so optimisation only has to find the
spread.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from ..models.base import to_constrained, to_unconstrained
from .common import (
    Problem,
    RawPosterior,
    key_from_seed,
    layout_unravel,
    log_joint_unconstrained,
    site_layout,
    to_bnmf_layout,
)
from .driver import cached_program, drive
from .map import posterior_start

__all__ = ["GUIDES", "fit_svi"]

GUIDES = ("normal", "lowrank")
_LOG_2PI_E = math.log(2 * math.pi) + 1.0


def _guide_init(kind: str, loc, init_scale: float, guide_rank: int, key):
    log_scale = jnp.full_like(loc, math.log(init_scale))
    if kind == "normal":
        return {"loc": loc, "log_scale": log_scale}
    factor = 0.01 * init_scale * jax.random.normal(key, (loc.size, guide_rank), loc.dtype)
    return {"loc": loc, "log_scale": log_scale, "factor": factor}


def _guide_sample(params, key):
    """One draw of u from the guide."""
    key_diag, key_factor = jax.random.split(key)
    u = params["loc"] + jnp.exp(params["log_scale"]) * jax.random.normal(
        key_diag, params["loc"].shape, params["loc"].dtype)
    if "factor" in params:
        eta = jax.random.normal(key_factor, (params["factor"].shape[1],), params["loc"].dtype)
        u = u + params["factor"] @ eta
    return u


def _guide_entropy(params):
    """Entropy of the guide's normal distribution over u."""
    n = params["loc"].size
    entropy = 0.5 * n * _LOG_2PI_E + jnp.sum(params["log_scale"])
    if "factor" in params:
        scaled = params["factor"] * jnp.exp(-params["log_scale"])[:, None]
        core = jnp.eye(scaled.shape[1], dtype=scaled.dtype) + scaled.T @ scaled
        entropy = entropy + 0.5 * jnp.linalg.slogdet(core)[1]
    return entropy


def averaged_chunk(loss_fn, optimizer, chunk: int):
    """``chunk`` optimizer steps on ``loss_fn(params, key, *args)`` as one scanned function.

    Returns ``run(carry, *args) -> (carry, losses)`` with ``carry = (params, opt_state, key,
    average)``; ``average`` comes back as the chunk's mean iterate (Polyak averaging) and
    ``losses`` has shape (chunk,). Shared by ``fit_svi`` and the vmapped restarts.
    """

    def run(carry, *args):
        def step(carry, _):
            params, opt_state, key, total = carry
            key, key_step = jax.random.split(key)
            loss, grads = jax.value_and_grad(loss_fn)(params, key_step, *args)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            total = jax.tree.map(jnp.add, total, params)
            return (params, opt_state, key, total), loss

        params, opt_state, key, _ = carry
        zero = jax.tree.map(jnp.zeros_like, params)
        (params, opt_state, key, total), losses = lax.scan(
            step, (params, opt_state, key, zero), None, length=chunk)
        return (params, opt_state, key, jax.tree.map(lambda t: t / chunk, total)), losses

    return run


def neg_elbo(params, key, problem: Problem, unravel, num_particles: int):
    """Negative ELBO of the guide ``params`` from ``num_particles`` draws (one per key split
    from ``key``): shared by :func:`fit_svi` and the vmapped restarts."""
    keys = jax.random.split(key, num_particles)
    expected = jax.vmap(
        lambda k: log_joint_unconstrained(problem, unravel, _guide_sample(params, k)))(keys)
    return -(expected.mean() + _guide_entropy(params))


@cached_program
def _svi_programs(problem_structure, layout: tuple, num_particles: int,
                  learning_rate: float, max_steps: int, elbo_particles: int, chunk: int):
    """The optimizer and compiled programs of :func:`fit_svi` for one kind of problem
    (``jax.tree.structure`` of the :class:`Problem`: rank, model structure, W fixed or not),
    site layout and set of options: ``step_chunk(carry, problem)``, ``elbo_estimate(params,
    key, problem)`` and ``draw(params, keys)``. The data and the model's hyperparameters
    are arguments, not constants of a closure, so a later fit with the same kind of model and
    shapes (other data, whose empirical-Bayes scales differ; the same data with another seed)
    reuses the compiled programs instead of compiling them again (≈3 s at 50 × 200 on 2 CPU
    cores)."""
    del problem_structure  # the cache key: the programs are traced for one problem structure
    unravel = layout_unravel(layout)
    optimizer = optax.adam(optax.exponential_decay(learning_rate, max(max_steps, 1), 0.1))

    def loss(params, key, problem):
        return neg_elbo(params, key, problem, unravel, num_particles)

    @jax.jit
    def elbo_estimate(params, key, problem):
        return -lax.map(lambda k: loss(params, k, problem),
                        jax.random.split(key, elbo_particles)).mean()

    @jax.jit
    def draw(params, keys, model):
        return jax.vmap(lambda k: to_constrained(model, unravel(_guide_sample(params, k))))(keys)

    return optimizer, jax.jit(averaged_chunk(loss, optimizer, chunk)), elbo_estimate, draw


def fit_svi(
    problem: Problem,
    *,
    guide: str = "normal",
    guide_rank: int = 4,
    init: str = "nndsvda",
    seed: int = 0,
    max_steps: int = 5000,
    min_steps: int = 2000,
    tol: float = 1e-5,
    learning_rate: float = 0.02,
    num_particles: int = 1,
    num_draws: int = 1000,
    elbo_particles: int = 32,
    init_scale: float = 0.05,
    progress: bool | None = None,
) -> RawPosterior:
    """Fit a variational posterior and draw from it.

    Parameters
    ----------
    problem : Problem
    guide : {"normal", "lowrank"}
        Mean-field log-normal, or a low-rank-plus-diagonal normal in log space.
    guide_rank : int
        Rank of the low-rank guide's covariance factor.
    max_steps : int
        Maximum number of optimisation steps, rounded up to a whole chunk of 100 (the
        compiled unit; ``info["iterations"]`` says how many ran).
    min_steps : int
        Steps taken before convergence may be declared (the spread settles after the mean).
    tol : float
        Relative change of the mean loss over 100 steps under which it stops (noise-aware).
    num_particles : int
        Monte Carlo samples per ELBO gradient.
    num_draws : int
        Posterior draws returned (one chain).
    elbo_particles : int
        Monte Carlo samples of the final ELBO estimate.
    init_scale : float
        Initial standard deviation of the guide in log space.

    Returns
    -------
    RawPosterior with draws of shape (1, num_draws, ...), the loss trace (negative ELBO per
    step) and the final ELBO estimate.
    """
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}.")
    key_guide, key_steps, key_elbo, key_draws = jax.random.split(key_from_seed(seed), 4)
    init_values = posterior_start(problem, init, seed)
    loc = ravel_pytree(to_unconstrained(problem.model, init_values))[0]
    params = _guide_init(guide, loc, init_scale, guide_rank, key_guide)
    chunk = 100
    optimizer, step_chunk, elbo_estimate, draw = _svi_programs(
        jax.tree.structure(problem), site_layout(init_values), num_particles,
        float(learning_rate), max_steps, elbo_particles, chunk)

    # The chunk's average iterate (Polyak averaging) removes most of the stochastic jitter
    # that the last iterate carries, so posterior means are not off by optimisation noise.
    (_, _, _, params), losses, iterations, converged = drive(
        lambda carry: step_chunk(carry, problem), (params, optimizer.init(params), key_steps,
                                                 params),
        max_steps, chunk, tol, progress, "SVI", noisy=True, min_iter=min(min_steps, max_steps),
    )

    elbo = float(elbo_estimate(params, key_elbo, problem))
    samples = draw(params, jax.random.split(key_draws, num_draws), problem.model)
    draws = to_bnmf_layout({name: value[None] for name, value in samples.items()}, problem)
    info = {"algorithm": f"svi-{guide}", "iterations": iterations, "converged": converged,
            "learning_rate": learning_rate, "num_particles": num_particles}
    return RawPosterior(draws=draws, losses=losses, elbo=elbo, info=info)
