"""Inference for network NMF (:mod:`bnmf.models.network`): ECM for the MAP, a Gibbs sampler with
latent edge counts, and NUTS on the dense model for small graphs (the reference).

Each is a pure function of (model, graph arrays, rank, options, seed) returning a
:class:`~bnmf.inference.common.RawPosterior` whose draws are the membership sites with leading
(chain, draw) dims. Sweeps run in compiled chunks; the model is an argument of the compiled
programs (a pytree), so graphs of the same size reuse them.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..models.network import GraphArrays, NetworkGamma, dense_pairs, log_joint, sweep
from .common import RawPosterior, key_from_seed

__all__ = [
    "NUTS_MAX_NODES",
    "fit_network_gibbs",
    "fit_network_map",
    "fit_network_nuts",
    "network_start",
]

NUTS_MAX_NODES = 300  # the dense model has n² / 2 pairs


def network_start(model: NetworkGamma, n_nodes: int, rank: int, seed: int, restarts: int,
                  dtype) -> dict:
    """Random starting memberships, (restarts, n_nodes, rank) per site: exponential draws
    around the prior mean, which breaks the symmetry between communities."""
    rng = np.random.default_rng(seed)
    mean = float(model.prior_mean())
    return {name: jnp.asarray(rng.exponential(mean, (restarts, n_nodes, rank)) + 0.01 * mean,
                              dtype)
            for name in model.sites}


@partial(jax.jit, static_argnames=("n_steps", "log_space"))
def _ecm_chunk(sites, model, g, *, n_steps: int, log_space: bool):
    """``n_steps`` ECM sweeps of a batch of starts; returns the sites and each sweep's
    log joint, (restarts, n_steps)."""
    def one(sites):
        def step(sites, _):
            sites = sweep(jax.random.PRNGKey(0), model, g, sites, "ecm", log_space)
            return sites, log_joint(model, g, sites, log_space)
        return lax.scan(step, sites, None, length=n_steps)
    return jax.vmap(one)(sites)


def fit_network_map(model: NetworkGamma, g: GraphArrays, rank: int, *, seed: int = 0,
                    restarts: int = 8, max_iter: int = 3000, tol: float = 1e-7,
                    chunk: int = 50, dtype=jnp.float32) -> RawPosterior:
    """MAP memberships by ECM from ``restarts`` random starts (one batched program); the
    start reaching the highest log joint is returned.

    Shapes a ≥ 1 take the mode of the density of W itself; a < 1, whose density is unbounded at
    0, the mode over log W (``info["mode_space"]``). Stops when every start's log joint
    changes by less than ``tol`` (relative) over a chunk of sweeps, or after ``max_iter``.
    """
    log_space = bool(model.a < 1)
    sites = network_start(model, g.n_nodes, rank, seed, restarts, dtype)
    traces, previous, converged = [], None, False
    iterations = 0
    while iterations < max_iter:
        sites, trace = _ecm_chunk(sites, model, g, n_steps=chunk, log_space=log_space)
        trace = np.asarray(trace, np.float64)
        traces.append(trace)
        iterations += chunk
        current = trace[:, -1]
        if previous is not None and np.all(
                np.abs(current - previous) <= tol * np.maximum(np.abs(current), 1.0)):
            converged = True
            break
        previous = current
    trace = np.concatenate(traces, axis=1)
    best = int(np.nanargmax(trace[:, -1]))
    draws = {name: np.asarray(value[best])[None, None] for name, value in sites.items()}
    info = {"algorithm": "ecm", "iterations": iterations, "converged": converged,
            "restarts": restarts, "best_restart": best,
            "restart_log_joints": [float(v) for v in trace[:, -1]],
            "mode_space": "log" if log_space else "constrained"}
    return RawPosterior(draws=draws, losses=-trace[best], elbo=None, info=info)


@partial(jax.jit, static_argnames=("num_warmup", "num_samples", "thin"))
def _gibbs_chains(keys, sites, model, g, *, num_warmup: int, num_samples: int, thin: int):
    """Gibbs chains (vmapped over ``keys``) from ``sites``: draws (chains, num_samples, ...)
    and the log joint of each draw."""
    def chain(key, sites):
        def sweep_once(carry, _):
            key, sites = carry
            key, sub = jax.random.split(key)
            return (key, sweep(sub, model, g, sites, "gibbs")), None

        def run(carry, n):
            return lax.scan(sweep_once, carry, None, length=n)[0]

        carry = run((key, sites), num_warmup) if num_warmup else (key, sites)

        def draw(carry, _):
            carry = run(carry, thin)
            return carry, (carry[1], log_joint(model, g, carry[1]))

        return lax.scan(draw, carry, None, length=num_samples)[1]
    return jax.vmap(chain, in_axes=(0, None))(keys, sites)


def fit_network_gibbs(model: NetworkGamma, g: GraphArrays, rank: int, *, start: dict,
                      seed: int = 0, num_warmup: int = 500, num_samples: int = 500,
                      num_chains: int = 2, thin: int = 1) -> RawPosterior:
    """Exact Gibbs sampling with latent edge counts (:func:`bnmf.models.network.sweep`), every
    chain started at ``start`` (the MAP: one labelling of the communities to align to).
    ``losses`` holds the negative log joint of every draw."""
    keys = jax.random.split(key_from_seed(seed), num_chains)
    draws, lj = _gibbs_chains(keys, start, model, g, num_warmup=num_warmup,
                              num_samples=num_samples, thin=thin)
    draws = {name: np.asarray(value) for name, value in draws.items()}
    lj = np.asarray(lj, np.float64)
    info = {"algorithm": "gibbs", "num_chains": num_chains, "num_warmup": num_warmup,
            "thin": thin}
    return RawPosterior(draws=draws, losses=-lj.ravel(), elbo=None, info=info)


def fit_network_nuts(model: NetworkGamma, graph, rank: int, *, start: dict, seed: int = 0,
                     num_warmup: int = 500, num_samples: int = 500, num_chains: int = 2,
                     target_accept: float = 0.8, dtype=jnp.float32) -> RawPosterior:
    """NUTS (NumPyro) on the dense model over every pair, chains started at ``start``; the
    reference posterior for small graphs (at most :data:`NUTS_MAX_NODES` nodes)."""
    from numpyro.infer import MCMC, NUTS, init_to_value

    row, col, value, observed = dense_pairs(graph)
    args = (graph.n_nodes, rank, jnp.asarray(row), jnp.asarray(col),
            jnp.asarray(value, dtype), jnp.asarray(observed))
    kernel = NUTS(model.numpyro_model, target_accept_prob=target_accept,
                  init_strategy=init_to_value(values={k: jnp.asarray(v) for k, v in
                                                      start.items()}))
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="sequential", progress_bar=False)
    mcmc.run(key_from_seed(seed), *args, extra_fields=("potential_energy", "diverging"))
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    draws = {name: np.asarray(samples[name]) for name in model.sites}
    info = {"algorithm": "nuts", "num_chains": num_chains,
            "divergences": int(np.asarray(extra["diverging"]).sum())}
    return RawPosterior(draws=draws, losses=np.asarray(extra["potential_energy"]).ravel(),
                        elbo=None, info=info)
