"""Maximum a posteriori (MAP) point estimates.

Which mode is found (a MAP depends on the parameterisation):

* models with the ``"map_update"`` capability (:class:`bnmf.models.base.MapUpdate`; the
  mathematics lives in the model's file). ``poisson`` (gamma priors, shape ``a`` ≥ 1) and
  ``gaussian``: the mode of p(W, H | X) in the
  constrained space, by closed-form majorize–minimize updates that never increase the negative
  log joint: multiplicative updates with the gamma prior folded in for Poisson (Cemgil 2009;
  Févotte & Idier 2011), and ridge-penalised HALS with extrapolation of H (Ang & Gillis
  2019; masked multiplicative updates when entries are missing) with an exact noise update for
  Gaussian. The extrapolated sequence is not monotone itself: the best iterate is kept and
  returned, so the reported losses never rise. On fully observed counts (dense or sparse) the
  Poisson updates start from a least-squares warm-up (a few of the same HALS updates on ½‖X − WH‖²),
  which is near the KL optimum and which multiplicative updates alone approach slowly.
* ``poisson`` with shape ``a`` < 1: the gamma density is unbounded at 0, so no constrained mode
  exists. The mode is taken over log W and log H instead (the Jacobian adds 1 to the shape).
* every model without the ``"map_update"`` capability (``horseshoe``): the mode of the density of W and H in the constrained
  space jointly with the log of the model's scales (horseshoe τ, λ, c², noise σ), by Adam on
  log-parameterised sites. Taking the factors in the constrained space lets true zeros shrink to
  zero (a log-space mode of W ~ HalfNormal(s) sits at s, never at 0); taking the scales in log
  space keeps the joint density bounded (p(W=0 | λ) ∝ 1/λ is unbounded as λ → 0, the Jacobian
  λ cancels it).
"""

from __future__ import annotations

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
    models_with,
    to_constrained,
    to_unconstrained,
)
from ..models.counts import to_scipy
from ..models.poisson import LEAST_SQUARES_WARMUP
from ..options import check_integer
from .common import (
    Problem,
    RawPosterior,
    floor_positive,
    layout_unravel,
    log_joint_unconstrained,
    n_observed,
    shard_problem,
    site_layout,
    sparse_starting_point,
    starting_point,
    to_device,
)
from .driver import cached_program, compiled_step, drive

__all__ = ["fit_map", "map_start", "posterior_start"]

CHUNK = 10  # closed-form updates per compiled chunk: the loss is read every CHUNK updates
# Default stopping rule of the closed-form updates: the negative log joint fell by less than
# this many nats per observed entry over a chunk of CHUNK updates, i.e. further updates no
# longer change the fit's log density meaningfully. Measured (experiments/results/stopping.md,
# from the fit's own start, 2,000 updates traced): it stops after 80 / 30 updates on Poisson
# 96 × 2,000 / 1,000 × 2,000 (the former rule, a relative change < 1e-6, after 290 / 200) and
# 40 / 40 on Gaussian 1,000 × 1,000 / 500 × 2,000 (50 / 60), each time at an objective below
# scikit-learn's final one (by 2.9%, 3.2%, 0.030%, 0.020%; the best of 2,000 updates is 3.0%,
# 3.2%, 0.032%, 0.023% below it).
MAP_TOL_PER_ENTRY = 1e-4
ADAM_TOL = 1e-6  # Adam (no closed-form updates): relative change of the chunk-mean loss


def check_warmup(warmup) -> int:
    """``warmup`` as an int (TypeError unless an integer, ValueError if negative)."""
    return check_integer("warmup", warmup, 0)


def check_sparse(problem: Problem, method: str) -> None:
    """SciPy sparse counts go only to models with the ``"sparse_counts"`` capability."""
    if problem.sparse and not has_capability(problem.model, "sparse_counts"):
        names = " or ".join(f"model={name!r}" for name in models_with("sparse_counts"))
        raise ValueError(
            f"sparse input is fitted in O(nnz) only for {names} (got "
            f"{model_name(problem.model)!r}, method={method!r}); pass X.toarray() for this "
            "model."
        )


# ------------------------------------------------------------------------ generic (log space)
FACTOR_SITES = ("W", "H")  # sites whose mode the generic MAP takes in the constrained space


@cached_program
def _adam_map_programs(problem_structure, layout: tuple, learning_rate: float, chunk: int):
    """(optimizer, unravel, compiled ``step_chunk(carry, problem)``) of :func:`_generic_map`
    for one kind of problem (``jax.tree.structure``: rank, model structure, W fixed or not),
    site layout and step size. The data and the model's hyperparameters are arguments, not
    constants of a closure, so a later fit with the same kind of model and shapes (other data
    too) reuses the compiled chunk."""
    del problem_structure  # the cache key: the chunk is traced for one problem structure
    unravel = layout_unravel(layout)
    optimizer = optax.adam(learning_rate)
    dtype = jnp.dtype(layout[0][2])
    u_bound = -0.45 * float(np.log(np.finfo(dtype).tiny))

    @jax.jit
    def step_chunk(carry, problem):
        loss_fn = lambda u: -log_joint_unconstrained(
            problem, unravel, u, constrained_sites=FACTOR_SITES)

        def step(carry, _):
            u, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(u)
            updates, opt_state = optimizer.update(grads, opt_state, u)
            # Shrunk sites drift towards 0, and the horseshoe's τ and λ along their ridge (only
            # τλ is well determined) towards 0 and ∞: keep exp(u) and its square finite normal
            # floats (else HalfNormal(0) or Cauchy(∞) gives NaN). At ±u_bound they are 0 or ∞
            # in effect (e^-39 ≈ 1e-17 in float32).
            u = jnp.clip(optax.apply_updates(u, updates), -u_bound, u_bound)
            return (u, opt_state), loss

        return lax.scan(step, carry, None, length=chunk)

    return optimizer, unravel, step_chunk


def _generic_map(problem: Problem, init_values: dict, max_iter, tol, progress, learning_rate):
    """Adam over u = log(sites) on -log p(X, W, H, scales) - Σ log(scales) (see module doc)."""
    u0 = ravel_pytree(to_unconstrained(problem.model, init_values))[0]
    chunk = 50
    optimizer, unravel, step_chunk = _adam_map_programs(
        jax.tree.structure(problem), site_layout(init_values), float(learning_rate), chunk)
    (u, _), losses, iterations, converged = drive(
        lambda carry: step_chunk(carry, problem), (u0, optimizer.init(u0)), max_iter, chunk,
        tol, progress, "MAP (Adam)"
    )
    return to_constrained(problem.model, unravel(u)), losses, iterations, converged


# ------------------------------------------------------------------------------- public
def map_start(problem: Problem, init: str, seed: int):
    """Starting W (n_features, rank) and H (rank, n_samples) as arrays of X's dtype."""
    fixed = problem.W_fixed is not None
    if problem.sparse:
        X = to_scipy(problem.X)
        hidden = (np.asarray(problem.X.hidden_rows), np.asarray(problem.X.hidden_cols))
        if not fixed:
            W, H = sparse_starting_point(X, hidden, problem.rank, init, seed)
        observed_mean = X.sum() / (X.shape[0] * X.shape[1] - hidden[0].size)
    else:
        # in the fit's precision (float32 by default): a float64 copy of a large X costs more
        # than the start itself
        X, M = np.asarray(problem.X), np.asarray(problem.mask)
        if not fixed:
            W, H = starting_point(X, M, problem.rank, init, seed)
        observed_mean = X.mean() if M.all() else X[M].mean()  # no boolean copy of X
    if fixed:
        # W given: H flat at the data's scale (a factorization start would also cap the rank
        # at min(X.shape), while a refit may use more reference parts than samples)
        W = np.asarray(problem.W_fixed, dtype=np.float64)
        H = np.full((problem.rank, X.shape[1]),
                    observed_mean / max(W.sum(axis=0).mean(), 1e-300))
    dtype = problem.X.dtype
    return to_device(W, dtype), to_device(H, dtype)


def fit_map(
    problem: Problem,
    *,
    init: str = "nndsvda",
    seed: int = 0,
    max_iter: int = 2000,
    tol: float | None = None,
    progress: bool | None = None,
    learning_rate: float = 0.02,
    W_start=None,
    H_start=None,
    devices: int | None = None,
    warmup: int = LEAST_SQUARES_WARMUP,
) -> RawPosterior:
    """MAP estimate of W and H (and the model's other sites).

    Parameters
    ----------
    problem : Problem
    init : {"nndsvda", "random"}
        Starting point (ignored when ``W_start``/``H_start`` are given).
    max_iter : int
        Maximum number of updates: exactly that many closed-form updates (the loss is
        checked every 10), or Adam steps rounded up to a whole chunk of 50 for models without
        closed-form updates; ``info["iterations"]`` says how many ran.
    tol : float, optional
        Closed-form updates stop when the negative log joint falls by less than ``tol`` nats
        per observed entry over a chunk of 10 (default ``MAP_TOL_PER_ENTRY`` = 1e-4: further
        updates no longer change the fit meaningfully; measured to stop below scikit-learn's
        final objective); Adam stops when the chunk-mean loss changes by less than ``tol``
        relative (default 1e-6). 0 runs ``max_iter`` updates.
    learning_rate : float
        Adam step size for models without closed-form updates.
    devices : int, optional
        Shard the sample axis over this many of ``jax.devices()`` (dense X; it must divide
        the number of samples). Same result as one device, to float rounding.
    warmup : int
        ``poisson`` with fully observed X (dense or sparse): the MM updates start after this many
        extrapolated HALS updates of the least-squares objective from the starting point
        (:func:`least_squares_warmup`; not for ``W_start``/``H_start`` given, nor for masked
        X); 0 turns it off. ``info["least_squares_warmup"]`` says how many ran.

    Returns
    -------
    RawPosterior with one chain of one draw; ``info`` says which algorithm and mode space ran.
    """
    model = problem.model
    warmup = check_warmup(warmup)
    check_sparse(problem, "map")
    started_here = W_start is None or H_start is None
    if started_here:
        W_start, H_start = map_start(problem, init, seed)
    problem, W_start, H_start = shard_problem(problem, W_start, H_start, devices)
    if has_capability(model, "map_update"):
        values, losses, iterations, converged, info = _closed_form_map(
            problem, W_start, H_start, max_iter, tol, progress,
            warmup if started_here else 0)
    else:
        values, losses, iterations, converged, info = _adam_map(
            problem, W_start, H_start, init, seed, max_iter, tol, progress, learning_rate)
    draws = {name: np.asarray(value)[None, None] for name, value in values.items()}
    info = {**info, "iterations": iterations, "converged": converged}
    return RawPosterior(draws=draws, losses=losses, elbo=None, info=info)


def _closed_form_map(problem: Problem, W, H, max_iter, tol, progress, warmup: int):
    """The model's ``"map_update"`` capability, driven to convergence (``tol`` in nats per
    observed entry and chunk)."""
    model, update_W = problem.model, problem.W_fixed is None
    tol = MAP_TOL_PER_ENTRY if tol is None else tol
    updates = capability(model, "map_update")
    aux = updates.prepare(problem)
    info = dict(updates.describe(problem))
    if updates.warm_start is not None:
        W, H, warm = updates.warm_start(problem, W, H, warmup)
        info["least_squares_warmup"] = warm
    state = updates.init(W, H, aux, model)
    program = compiled_step(updates.step, (update_W,), False)
    state, losses, iterations, converged = drive(
        lambda s, n: program(s, aux, model, n), state, max_iter, CHUNK, tol, progress, "MAP",
        exact_steps=True, scale=n_observed(problem))
    if hasattr(state, "relaxation"):
        info["relaxation_fell_back"] = bool(np.asarray(state.relaxation) == 1.0)
    return updates.values(state), losses, iterations, converged, info


def _adam_map(problem: Problem, W_start, H_start, init, seed, max_iter, tol, progress,
              learning_rate):
    """Adam on the NumPyro program (see the module doc), from the closed-form MAP of the
    model's ``"start_model"`` where it declares one, else from W_start, H_start."""
    model, update_W = problem.model, problem.W_fixed is None
    W0, H0 = W_start, H_start
    if has_capability(model, "start_model"):
        base = Problem(problem.X, problem.mask, problem.rank,
                       capability(model, "start_model")(model), problem.W_fixed)
        start = fit_map(base, init=init, seed=seed, max_iter=200, tol=1e-4, progress=False,
                        W_start=W_start, H_start=H_start).draws
        W0, H0 = start["W"][0, 0], start["H"][0, 0]
    W0, H0 = floor_positive(jnp.asarray(W0)), floor_positive(jnp.asarray(H0))
    init_values = {"H": H0.T, **model.init_extras(W0, H0, problem.X, problem.mask)}
    if update_W:
        init_values["W"] = W0
    values, losses, iterations, converged = _generic_map(
        problem, init_values, max_iter, ADAM_TOL if tol is None else tol, progress,
        learning_rate)
    values = dict(values)
    values["H"] = values["H"].T
    if not update_W:
        values["W"] = problem.W_fixed
    info = {"algorithm": "adam", "mode_space": "constrained factors, log scales"}
    return values, losses, iterations, converged, info


def posterior_start(problem: Problem, init: str, seed: int, max_iter: int = 500) -> dict:
    """Starting values of every NumPyro site, from a MAP fit, for SVI and NUTS.

    Values are in NumPyro's layout (``H`` as (n_samples, rank)) and floored away from 0, since
    both samplers work in log space. A model whose sites are not one W and one H (e.g. the
    multi-view model) gives its own start through its ``"posterior_start"`` capability.
    """
    if has_capability(problem.model, "posterior_start"):
        return capability(problem.model, "posterior_start")(problem, init, seed, max_iter)
    if problem.sparse:
        raise ValueError(
            "sparse input is fitted in O(nnz) by method='map' and method='cavi' only; pass "
            "X.toarray() for SVI or NUTS."
        )
    start = fit_map(problem, init=init, seed=seed, max_iter=max_iter, tol=1e-5, progress=False)
    values = {name: jnp.asarray(draw[0, 0]) for name, draw in start.draws.items()}
    W = floor_positive(values.pop("W"))
    H = floor_positive(values.pop("H"))
    extras = problem.model.init_extras(W, H, problem.X, problem.mask)
    extras.update({k: v for k, v in values.items() if k in extras})
    init_values = {"H": H.T, **extras}
    if problem.W_fixed is None:
        init_values["W"] = W
    return init_values
