"""The one host driver of every iterative method, and the one compile cache.

An inference method is an ``(init, step)`` pair over a NamedTuple state (a pytree): ``init``
builds the state on the host, ``step(state, n_steps)`` is one compiled chunk of updates that
returns the new state and its losses. :func:`drive` runs chunks until convergence or the
step budget, for one fit or for a ``vmap``-ed batch of them (restarts, folds), with one
progress bar and one convergence rule; between chunks Python only reads the losses.

Compiled programs are built by functions decorated with :func:`cached_program`: one cache for
all of them, keyed by the builder and its (hashable) arguments, e.g. the tree structure of the
model, the site layout and the static options. The data and the model's hyperparameters are
arguments of the programs, not constants of a closure, so a later fit of other data of the
same shapes compiles nothing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

__all__ = [
    "cached_program",
    "clear_compile_cache",
    "compiled_step",
    "drive",
    "monotone_fallback",
]

_PROGRAMS: dict = {}  # (builder, arguments) -> what the builder returned


def cached_program(builder: Callable) -> Callable:
    """Cache ``builder(*args)`` (which builds compiled programs) in the one program cache."""

    @functools.wraps(builder)
    def cached(*args):
        key = (builder.__module__, builder.__qualname__, args)
        if key not in _PROGRAMS:
            _PROGRAMS[key] = builder(*args)
        return _PROGRAMS[key]

    return cached


def clear_compile_cache() -> None:
    """Forget every cached program (the next fit traces and compiles again)."""
    _PROGRAMS.clear()
    jax.clear_caches()


def monotone_fallback(step: Callable) -> Callable:
    """``step(state, *args) -> state`` made monotone for states with a ``relaxation`` field.

    An over-relaxed update (``relaxation`` ω ≠ 1) is faster but not monotone by construction.
    A member whose loss rose (or is not finite) is redone from its previous state with ω = 1,
    the plain update, and keeps ω = 1 afterwards; so its losses never rise, and it runs the
    same steps alone or in a batch. The redo sits in a ``lax.cond`` on whether any member
    rose, outside any ``vmap``, so it costs nothing while no member rises."""

    def guarded(state, *args):
        new = step(state, *args)
        if not hasattr(state, "relaxation"):
            return new
        rose = (state.relaxation != 1.0) & ~(new.loss <= state.loss)

        def redo(_):
            plain = state._replace(relaxation=jnp.where(rose, jnp.ones_like(state.relaxation),
                                                        state.relaxation))
            return step(plain, *args)

        return lax.cond(jnp.any(rose), redo, lambda _: new, None)

    return guarded


@cached_program
def compiled_step(step: Callable, static: tuple, batched: bool):
    """``jit`` of ``state, aux, model, n_steps -> (state, state.loss[..., None])`` for a
    capability's ``step(state, aux, model, n_steps, *static)``; with ``batched``, the state
    and ``aux`` carry a leading member axis (``vmap``) and the model is shared. Over-relaxed
    states get :func:`monotone_fallback`."""

    def one(state, aux, model, n_steps):
        return step(state, aux, model, n_steps, *static)

    if batched:
        one = jax.vmap(one, in_axes=(0, 0, None, None))
    guarded = monotone_fallback(one)

    def program(state, aux, model, n_steps):
        state = guarded(state, aux, model, n_steps)
        return state, state.loss[..., None]

    # named after the capability's step (e.g. poisson_mm_step) in profiles and JAX's caches
    program.__name__ = program.__qualname__ = getattr(step, "__name__", "step")
    return jax.jit(program)


def drive(
    step_chunk: Callable,
    state,
    max_iter: int,
    chunk: int,
    tol: float,
    progress: bool | None,
    description: str,
    noisy: bool = False,
    min_iter: int = 0,
    exact_steps: bool = False,
    scale: float | None = None,
):
    """Run ``step_chunk(state[, steps]) -> (state, losses)`` until convergence or ``max_iter``.

    ``losses`` is (k,) for one fit or (B, k) for a batch of B members. A member has converged
    once its chunk-mean loss changed by less than ``tol`` × |loss| from the previous chunk's
    (for noisy losses, also by less than two standard errors of the chunk mean); the run stops
    when every member has, but not before ``min_iter`` steps, and at the first loss that is not
    finite. With a ``scale`` (the closed-form MAP passes the number of observed entries), the
    threshold is ``tol`` × ``scale`` instead of ``tol`` × |loss|: a change of the log density
    of less than ``tol`` nats per observed entry over a chunk, where further updates no
    longer change the fit meaningfully. (Unlike a relative change of the loss, this does not
    depend on the loss's additive constants, e.g. the data's units under a Gaussian.) (One fit
    counts as converged only where it stops, at ``min_iter`` steps or later;
    a member of a batch stays converged once it was, while the others step on.) With
    ``exact_steps``, ``step_chunk(state, steps)`` takes the number of steps
    (``chunk``, fewer in the last chunk; traced, so the same program) and exactly ``max_iter``
    run at most; otherwise ``max_iter`` is rounded up to a whole chunk.

    Returns (state, losses (steps,) or (B, steps), steps, converged: bool or (B,) bool).
    """
    traces, previous, converged, done = [], None, None, 0
    max_iter = max(1, max_iter)
    total = max_iter if exact_steps else -(-max_iter // chunk) * chunk
    bar = progress_bar(total, description, progress)
    disable = bar.disable
    while done < total:
        steps = min(chunk, total - done)
        state, losses = step_chunk(state, steps) if exact_steps else step_chunk(state)
        losses = np.asarray(losses)
        traces.append(losses)
        done += steps
        if not disable:
            bar.update(steps)
            bar.set_postfix(loss=f"{np.ravel(losses[..., -1])[0]:.6g}")
        if not np.all(np.isfinite(losses)):
            break
        current = losses.mean(axis=-1)
        if previous is not None:
            if scale is not None:
                threshold = tol * np.asarray(scale, np.float64)
            else:
                threshold = tol * np.maximum(np.abs(current), 1e-300)
            if noisy and losses.shape[-1] > 1:
                spread = 2.0 * losses.std(axis=-1) / np.sqrt(losses.shape[-1])
                threshold = np.maximum(threshold, spread)
            now = np.abs(previous - current) < threshold
            if losses.ndim == 1:  # one fit: converged where it stops
                converged = bool(now) and done >= min_iter
                if converged:
                    break
            else:  # a batch: members that converged keep stepping until all have
                converged = now if converged is None else (converged | now)
                if done >= min_iter and converged.all():
                    break
        previous = current
    bar.close()
    if converged is None:
        converged = False if traces[0].ndim == 1 else np.zeros(traces[0].shape[0], bool)
    return state, np.concatenate(traces, axis=-1), done, converged


def progress_bar(total: int, description: str, progress: bool | None):
    """The progress bar of every long-running loop (tqdm): ``progress=None`` shows it when
    stderr is a terminal, True always, False never. A disabled bar costs nothing to update."""
    disable = not _stderr_is_terminal() if progress is None else not progress
    return tqdm(total=total, desc=description, disable=disable, leave=False)


def _stderr_is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())
