"""NUTS (NumPyro) for small problems: the reference posterior bnmf's other methods are judged by.

NumPyro's NUTS kernel (``numpyro.infer.hmc.hmc``) runs inside one compiled program per kind of
model, shapes and sampler settings, with the data and the model's hyperparameters as its
arguments. ``numpyro.infer.MCMC`` compiles its sampling loop again for every chain and every
call (2.2 s each for two chains at 30 × 60 on 2 CPU cores); here a fit of other data of the
same shapes, and every chain after the first, compile nothing.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc import hmc

from ..models.base import to_constrained, to_unconstrained
from .common import (
    Problem,
    RawPosterior,
    key_from_seed,
    layout_unravel,
    log_joint_unconstrained,
    progress_bar,
    site_layout,
    to_bnmf_layout,
)
from .driver import cached_program
from .map import posterior_start

__all__ = ["fit_nuts"]


@cached_program
def _nuts_chain_program(problem_structure, layout: tuple, num_warmup: int,
                        num_samples: int, target_accept: float, max_tree_depth: int):
    """Compiled ``chain(u0, key, problem) -> (u draws (num_samples, dim),
    potential energies, divergences)``: NumPyro's NUTS with its default adaptation (step size
    and diagonal mass matrix over ``num_warmup`` steps), on the log-space parameters
    ``u`` (flat), from ``u0``."""
    del problem_structure  # the cache key: the program is traced for one problem structure
    unravel = layout_unravel(layout)

    def potential_given(problem):
        return lambda u: -log_joint_unconstrained(problem, unravel, u)

    @jax.jit
    def chain(u0, key, problem):
        # hmc's init and sample kernels share state set by init: one pair per trace
        init_kernel, sample_kernel = hmc(potential_fn_gen=potential_given, algo="NUTS")
        args = (problem,)
        state = init_kernel(u0, num_warmup, target_accept_prob=target_accept,
                            trajectory_length=None, max_tree_depth=max_tree_depth,
                            model_args=args, rng_key=key)
        state = lax.fori_loop(0, num_warmup, lambda _, s: sample_kernel(s, model_args=args),
                              state)

        def draw(state, _):
            state = sample_kernel(state, model_args=args)
            return state, (state.z, state.potential_energy, state.diverging)

        return lax.scan(draw, state, None, length=num_samples)[1]

    return unravel, chain


def fit_nuts(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    target_accept: float = 0.8,
    max_tree_depth: int = 8,
    progress: bool | None = None,
) -> RawPosterior:
    """Sample the posterior with NUTS, every chain started at the MAP.

    Chains run one after another, each from its own key, so results do not depend on the
    number of devices. Returns draws of shape (num_chains, num_samples, ...); ``losses`` holds
    the potential energy of each draw, and ``info`` the number of divergences. ``progress``
    shows finished chains (None: when stderr is a terminal).
    """
    init_values = posterior_start(problem, init, seed)
    u0 = ravel_pytree(to_unconstrained(problem.model, init_values))[0]
    unravel, chain = _nuts_chain_program(
        jax.tree.structure(problem), site_layout(init_values), num_warmup, num_samples,
        float(target_accept), max_tree_depth)
    keys = jax.random.split(key_from_seed(seed), num_chains)
    bar = progress_bar(num_chains, "NUTS chains", progress)
    runs = []
    for key in keys:
        runs.append(chain(u0, key, problem))
        bar.update(1)
    bar.close()
    u, energy, diverging = (np.stack([np.asarray(run[i]) for run in runs]) for i in range(3))
    constrained = jax.vmap(jax.vmap(lambda v: to_constrained(problem.model, unravel(v))))(u)
    draws = to_bnmf_layout({name: np.asarray(v) for name, v in constrained.items()}, problem)
    info = {"algorithm": "nuts", "num_chains": num_chains,
            "divergences": int(diverging.sum())}
    return RawPosterior(draws=draws, losses=energy.ravel(), elbo=None, info=info)
