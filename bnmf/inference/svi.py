"""Stochastic variational inference (SVI) with NumPyro guides and optax.

The default guide is mean-field normal over the unconstrained (log) parameters, i.e. log-normal
factors for W and H (``AutoNormal``); ``guide="lowrank"`` adds a low-rank covariance
(``AutoLowRankMultivariateNormal``). The guide starts at the MAP, so optimisation only has to
find the spread, and the step size decays tenfold over ``max_steps``.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from jax import lax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_value

from .common import Problem, RawPosterior, key_from_seed, run_chunks
from .map import posterior_start

__all__ = ["fit_svi", "GUIDES"]

GUIDES = ("normal", "lowrank")


def make_guide(model_fn, kind: str, init_values: dict, guide_rank: int | None, init_scale: float):
    """The autoguide for ``kind``, started at ``init_values``."""
    loc = init_to_value(values=init_values)
    if kind == "normal":
        return AutoNormal(model_fn, init_loc_fn=loc, init_scale=init_scale)
    if kind == "lowrank":
        return AutoLowRankMultivariateNormal(model_fn, init_loc_fn=loc, init_scale=init_scale,
                                             rank=guide_rank)
    raise ValueError(f"guide must be one of {GUIDES}, got {kind!r}.")


def fit_svi(
    problem: Problem,
    *,
    guide: str = "normal",
    guide_rank: int | None = None,
    init: str = "nndsvda",
    seed: int = 0,
    max_steps: int = 3000,
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
        Mean-field log-normal, or a low-rank multivariate normal in log space.
    guide_rank : int, optional
        Rank of the low-rank guide's covariance (NumPyro's default when None).
    max_steps : int
        Maximum number of optimisation steps.
    tol : float
        Relative change of the mean loss over 100 steps under which it stops (noise-aware).
    num_particles : int
        Monte Carlo samples per ELBO gradient.
    num_draws : int
        Posterior draws returned (one chain).
    elbo_particles : int
        Monte Carlo samples of the final ELBO estimate.

    Returns
    -------
    RawPosterior with draws of shape (1, num_draws, ...), the loss trace (negative ELBO) and the
    final ELBO estimate.
    """
    key_start, key_init, key_elbo, key_draws = jax.random.split(key_from_seed(seed), 4)
    init_values = posterior_start(problem, init, seed)
    model_fn = problem.model.numpyro_model
    auto = make_guide(model_fn, guide, init_values, guide_rank, init_scale)
    schedule = optax.exponential_decay(learning_rate, max(max_steps, 1), 0.1)
    svi = SVI(model_fn, auto, optax.adam(schedule), Trace_ELBO(num_particles=num_particles))
    args, kwargs = problem.model_args(), problem.model_kwargs()
    state = svi.init(key_init, *args, **kwargs)
    chunk = 100

    @jax.jit
    def step_chunk(state):
        return lax.scan(lambda s, _: svi.update(s, *args, **kwargs), state, None, length=chunk)

    state, losses, iterations, converged = run_chunks(
        step_chunk, state, max_steps, chunk, tol, progress, "SVI", noisy=True
    )
    params = svi.get_params(state)
    single = Trace_ELBO(num_particles=1)

    @jax.jit
    def elbo_estimate(key):
        keys = jax.random.split(key, elbo_particles)
        return -lax.map(lambda k: single.loss(k, params, model_fn, auto, *args, **kwargs),
                        keys).mean()

    elbo = float(elbo_estimate(key_elbo))
    samples = auto.sample_posterior(key_draws, params, *args, sample_shape=(num_draws,), **kwargs)
    draws = {name: np.asarray(value)[None] for name, value in samples.items()}
    draws["H"] = np.swapaxes(draws["H"], -1, -2)
    if problem.W_fixed is not None:
        draws["W"] = np.broadcast_to(np.asarray(problem.W_fixed),
                                     (1, num_draws) + problem.W_fixed.shape).copy()
    info = {"algorithm": f"svi-{guide}", "iterations": iterations, "converged": converged,
            "learning_rate": learning_rate, "num_particles": num_particles}
    return RawPosterior(draws=draws, losses=losses, elbo=elbo, info=info)
