"""NUTS (NumPyro) for small problems: the reference posterior bnmf's other methods are judged by."""

from __future__ import annotations

import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_value

from .common import Problem, RawPosterior, key_from_seed, to_bnmf_layout
from .map import posterior_start

__all__ = ["fit_nuts"]


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

    Chains run one after another (``chain_method="sequential"``), so results do not depend on
    the number of devices. Returns draws of shape (num_chains, num_samples, ...); ``losses``
    holds the potential energy of each draw, and ``info`` the number of divergences.
    """
    init_values = posterior_start(problem, init, seed)
    kernel = NUTS(problem.model.numpyro_model, init_strategy=init_to_value(values=init_values),
                  target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="sequential", progress_bar=bool(progress))
    mcmc.run(key_from_seed(seed), *problem.model_args(), **problem.model_kwargs(),
             extra_fields=("potential_energy", "diverging"))
    draws = to_bnmf_layout(mcmc.get_samples(group_by_chain=True), problem)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    info = {"algorithm": "nuts", "num_chains": num_chains,
            "divergences": int(np.asarray(extra["diverging"]).sum())}
    return RawPosterior(draws=draws, losses=np.asarray(extra["potential_energy"]).ravel(),
                        elbo=None, info=info)
