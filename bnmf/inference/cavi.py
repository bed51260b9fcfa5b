r"""Coordinate-ascent variational inference (CAVI): the driver of a model's ``"cavi"`` capability.

The mathematics is the model's (:class:`bnmf.models.base.CaviFamily`); for Poisson–gamma NMF
(Cemgil 2009, in :mod:`bnmf.models.poisson`):

The Poisson–gamma model is conditionally conjugate once each count is split into latent
sources ``S_ijk ~ Poisson(W_ik H_kj)`` with ``Σ_k S_ijk = X_ij``. The mean-field family
``q(W) q(H) q(S)`` with gamma factors

.. math::

    q(W_{ik}) = \mathrm{Gamma}(\alpha^W_{ik}, \beta^W_{ik}), \quad
    q(H_{kj}) = \mathrm{Gamma}(\alpha^H_{kj}, \beta^H_{kj})

then has closed-form coordinate updates. With ``L^W = exp E[log W]`` (and ``L^H``),
``Σ_ij = M_ij X_ij / (L^W L^H)_ij`` (M the mask):

.. math::

    \alpha^W = a + L^W \odot (\Sigma L^{H\top}), \quad
    \beta^W = b_W + M\,E[H]^\top, \qquad
    \alpha^H = a + L^H \odot (L^{W\top} \Sigma), \quad
    \beta^H = b_H + E[W]^\top M.

Each sweep costs the same four (n_features × n_samples × rank) products as one multiplicative
MAP update, and never decreases the bound (returned as ``elbo``)

.. math::

    \mathcal{L} = \sum_{ij} M_{ij}\big[X_{ij}\log (L^W L^H)_{ij} - (E[W]E[H])_{ij}
    - \log X_{ij}!\big] - \mathrm{KL}(q(W)\,\|\,p(W)) - \mathrm{KL}(q(H)\,\|\,p(H)),

the evidence lower bound with ``q(S)`` optimised out (a lower bound on the mean-field ELBO of
``q(W) q(H)`` alone, by Jensen's inequality).

Reference: A. T. Cemgil, "Bayesian inference for nonnegative matrix factorisation models",
Computational Intelligence and Neuroscience, 2009.
"""

from __future__ import annotations

import numpy as np

from ..models.base import capability, model_name
from ..models.poisson import GammaFactors, cavi_elbo, draw_factors, gamma_kl
from ..options import check_integer
from .common import Problem, RawPosterior, shard_problem
from .driver import compiled_step, drive
from .map import CHUNK, map_start
from .minibatch import stochastic_cavi_factors

__all__ = ["GammaFactors", "cavi_elbo", "cavi_factors", "draw_factors", "fit_cavi", "gamma_kl"]


def cavi_factors(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    max_iter: int = 2000,
    tol: float = 1e-6,
    progress: bool | None = None,
    devices: int | None = None,
):
    """Run CAVI to convergence; return (GammaFactors, losses, iterations, converged).

    ``losses`` is the negative bound after every chunk of 10 sweeps (non-increasing).
    """
    state, losses, iterations, converged = cavi_state(
        problem, init=init, seed=seed, max_iter=max_iter, tol=tol, progress=progress,
        devices=devices)
    return capability(problem.model, "cavi").factors(state), losses, iterations, converged


def cavi_state(problem: Problem, *, init="nndsvda", seed=0, max_iter=2000, tol=1e-6,
               progress=None, devices=None):
    """:func:`cavi_factors` returning the capability's state (factors and negative bound)."""
    family = capability(problem.model, "cavi")
    W0, H0 = map_start(problem, init, seed)
    problem, W0, H0 = shard_problem(problem, W0, H0, devices)
    model = problem.model
    aux = family.prepare(problem)
    state = family.init(W0, H0, aux, model, problem.W_fixed)
    program = compiled_step(family.step, (), False)
    return drive(lambda s, n: program(s, aux, model, n), state, max_iter, CHUNK, tol,
                 progress, "CAVI", exact_steps=True)


def fit_cavi(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    max_iter: int = 2000,
    tol: float = 1e-6,
    num_draws: int = 1000,
    progress: bool | None = None,
    devices: int | None = None,
    batch_size: int | None = None,
    epochs: int = 10,
    local_sweeps: int = 20,
) -> RawPosterior:
    """Variational posterior of the Poisson–gamma model by CAVI with gamma factors.

    Parameters
    ----------
    problem : Problem
        Its model must have the ``"cavi"`` capability (``poisson``); ``W_fixed`` and masks
        work.
    init : {"nndsvda", "random"}
        Starting means of q(W), q(H) (the MAP's starting point).
    max_iter : int
        Maximum number of sweeps (each updates q(W) then q(H)); the bound is checked every
        10 (``info["iterations"]`` says how many ran).
    tol : float
        Stop when the bound changes by less than ``tol`` relative over 10 sweeps.
    num_draws : int
        Posterior draws returned (one chain), sampled from the gamma factors.
    devices : int, optional
        Shard the sample axis over this many of ``jax.devices()`` (it must divide the number
        of samples; in minibatch mode, ``batch_size``). Full sweeps need dense X; minibatches
        are dense blocks of either. Same result as one device, to float rounding.
    batch_size : int, optional
        Minibatch (stochastic) CAVI over samples with this many samples per step, for data
        too large for full sweeps (:mod:`bnmf.inference.minibatch`): memory is bounded by
        ``n_features × batch_size``. ``max_iter`` and ``tol`` are then unused.
    epochs : int
        Passes over the samples in minibatch mode.
    local_sweeps : int
        Sweeps of a minibatch's q(H) per step in minibatch mode.

    Returns
    -------
    RawPosterior with draws W (1, num_draws, n_features, rank) and H (1, num_draws, rank,
    n_samples), the negative bound per chunk of 10 sweeps (per step in minibatch mode: a
    noisy minibatch estimate) as ``losses`` and the final bound as ``elbo``.

    Raises
    ------
    ValueError
        If the model has no ``"cavi"`` capability (the message names the methods it
        supports), or an option is out of range.
    """
    check_integer("num_draws", num_draws, 1)
    family = capability(problem.model, "cavi")
    if batch_size is None:
        factors, losses, iterations, converged = cavi_factors(
            problem, init=init, seed=seed, max_iter=max_iter, tol=tol, progress=progress,
            devices=devices)
        elbo = float(-losses[-1])
        info = {"algorithm": family.algorithm, "iterations": iterations,
                "converged": converged}
    else:
        factors, losses, steps, elbo = _minibatch(problem, init, seed, batch_size, epochs,
                                                local_sweeps, devices, progress)
        info = {"algorithm": f"{family.algorithm}-minibatch", "iterations": steps,
                "converged": True, "batch_size": int(batch_size), "epochs": int(epochs),
                "local_sweeps": int(local_sweeps)}
    draws = {name: value[None] for name, value in
             family.draw(factors, int(seed), int(num_draws)).items()}
    return RawPosterior(draws=draws, losses=losses, elbo=elbo, info=info)


def _positive_int(name: str, value, upper: int | None = None) -> int:
    value = check_integer(name, value, 1)
    if upper is not None and value > upper:
        raise ValueError(f"{name}={value} exceeds the number of samples ({upper}); use at most "
                         f"{upper}.")
    return int(value)


def _minibatch(problem: Problem, init, seed, batch_size, epochs, local_sweeps, devices,
               progress=None):
    family = capability(problem.model, "cavi")
    if family.minibatch_step is None:
        raise ValueError(f"model {model_name(problem.model)!r} has no minibatch CAVI; fit "
                         "without batch_size.")
    n_samples = problem.X.shape[1]
    batch_size = _positive_int("batch_size", batch_size, n_samples)
    epochs = _positive_int("epochs", epochs)
    local_sweeps = _positive_int("local_sweeps", local_sweeps)
    if problem.W_fixed is not None:
        raise ValueError("batch_size= (minibatch CAVI) learns W; with W fixed, samples are "
                         "independent: fit without batch_size.")
    if devices is not None and not isinstance(devices, bool) and isinstance(
            devices, (int, np.integer)) and devices > 0 and batch_size % devices:
        raise ValueError(f"devices={devices} must divide batch_size={batch_size} so that every "
                         "device holds the same number of a minibatch's columns.")
    W0, H0 = map_start(problem, init, seed)
    return stochastic_cavi_factors(problem, W0, H0, batch_size=batch_size, epochs=epochs,
                                   local_sweeps=local_sweeps, seed=int(seed), devices=devices,
                                   progress=progress)
