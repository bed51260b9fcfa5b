"""Inference for joint multi-view NMF (:mod:`bnmf.models.multiview`).

The MAP runs the model's ``"map_update"`` capability (majorize–minimize updates, shared H)
through the one driver (:func:`bnmf.inference.driver.drive`), from an NMF start of the views
stacked over features. SVI and NUTS are the generic ones (:func:`bnmf.inference.svi.fit_svi`,
:func:`bnmf.inference.nuts.fit_nuts`) on the model's NumPyro program; they start from this
MAP through the ``"posterior_start"`` capability registered here.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..data import floor_positive
from ..models.base import capability, register_capability, to_numpyro_layout
from ..models.multiview import MultiView
from .common import Problem, RawPosterior, starting_point
from .driver import compiled_step, drive
from .map import CHUNK, MAP_TOL_PER_ENTRY

__all__ = ["fit_multiview_map", "multiview_start"]


def multiview_start(problem: Problem, init: str = "nndsvda", seed: int = 0):
    """Starting W ({view: (n_features_v, rank)}) and H (rank, n_samples) in X's dtype.

    The NMF start of :func:`~bnmf.inference.common.starting_point` (NNDSVDa or random) on
    the views stacked over features, each divided by its observed mean so that every view
    weighs alike (a view at a tenth of another's depth still shapes H); W's rows then get
    their view's scale back, and H is rescaled to mean 1 per component (its prior mean)."""
    names = list(problem.model.view_names)
    X = {v: np.asarray(problem.X[v], np.float64) for v in names}
    M = {v: np.asarray(problem.mask[v]) for v in names}
    means = {v: float(X[v][M[v]].mean()) if M[v].any() else 1.0 for v in names}
    means = {v: m if m > 0 else 1.0 for v, m in means.items()}
    stacked = np.vstack([np.where(M[v], X[v], 0.0) / means[v] for v in names])
    mask = np.vstack([M[v] for v in names])
    W, H = starting_point(stacked, mask, problem.rank, init, seed)
    scale = np.maximum(H.mean(axis=1), 1e-300)
    H, W = H / scale[:, None], W * scale[None, :]
    bounds = np.cumsum([0] + [X[v].shape[0] for v in names])
    dtype = problem.X[names[0]].dtype
    W_views = {v: jnp.asarray(W[bounds[i]:bounds[i + 1]] * means[v], dtype)
               for i, v in enumerate(names)}
    return W_views, jnp.asarray(H, dtype)


def observed_entries(problem: Problem) -> int:
    """Number of observed entries over every view."""
    return sum(int(np.count_nonzero(np.asarray(m))) for m in problem.mask.values())


def fit_multiview_map(problem: Problem, *, init: str = "nndsvda", seed: int = 0,
                      max_iter: int = 2000, tol: float | None = None,
                      progress: bool | None = None) -> RawPosterior:
    """MAP of the multi-view model by its closed-form MM updates (never raising the negative
    log joint), from :func:`multiview_start`.

    ``max_iter`` updates at most; stops when the negative log joint falls by less than ``tol``
    nats per observed entry (over every view) over a chunk of 10 updates (default
    :data:`~bnmf.inference.map.MAP_TOL_PER_ENTRY`). Returns one chain of one draw of every
    site (bnmf layout) and the loss trace."""
    model = problem.model
    updates = capability(model, "map_update")
    aux = updates.prepare(problem)
    W, H = multiview_start(problem, init, seed)
    state = updates.init(W, H, aux, model)
    program = compiled_step(updates.step, (True,), False)
    state, losses, iterations, converged = drive(
        lambda s, n: program(s, aux, model, n), state, max_iter, CHUNK,
        MAP_TOL_PER_ENTRY if tol is None else tol, progress, "MAP (multi-view)",
        exact_steps=True, scale=observed_entries(problem))
    draws = {name: np.asarray(value)[None, None] for name, value in updates.values(state).items()}
    info = {**updates.describe(problem), "iterations": iterations, "converged": converged,
            "relaxation_fell_back": bool(np.asarray(state.relaxation) == 1.0)}
    return RawPosterior(draws=draws, losses=losses, elbo=None, info=info)


def _posterior_start(problem: Problem, init: str, seed: int, max_iter: int = 500) -> dict:
    """Every site of the NumPyro program (its layout), from the MAP, floored away from 0."""
    start = fit_multiview_map(problem, init=init, seed=seed, max_iter=max_iter, tol=1e-5,
                              progress=False)
    values = {name: floor_positive(jnp.asarray(draw[0, 0])) for name, draw in start.draws.items()}
    return to_numpyro_layout(problem.model, values)


register_capability(MultiView, "posterior_start", _posterior_start)
