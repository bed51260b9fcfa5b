"""Option validation, once, at the Python boundary, in one error style.

A value of the wrong type raises ``TypeError`` ("rank must be an integer, got str 'a'"); a
value of the right type out of its range raises ``ValueError`` ("max_iter must be a
positive integer, got -1"). Booleans are not integers here. Nothing is validated inside ``jit``.
(A bottom-layer module: it imports nothing of bnmf.)
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["INFERENCE_OPTIONS", "check_integer", "check_number", "check_options", "check_prob",
           "check_seed"]


def check_integer(name: str, value, minimum: int | None = None, *, allow_none: bool = False):
    """``value`` as an int; TypeError unless an integer, ValueError if below ``minimum``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    if minimum is not None and value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer ≥ {minimum}")
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    return int(value)


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float; TypeError unless a real number, ValueError outside
    [low, high] (``low_open``/``high_open``: the bound itself excluded) or not finite."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    bad = not np.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"{left}{'-∞' if low is None else low}, {'∞' if high is None else high}{right}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}.")
    return value


def check_seed(seed) -> int:
    """A seed is a non-negative integer (NumPy's and JAX's generators both take it)."""
    return check_integer("seed", seed, 0)


# Every numeric option of the inference methods and how it is checked: ("int", minimum) or
# ("number", low, high, low_open, high_open); a "?" (e.g. "int?") allows None (the default).
INFERENCE_OPTIONS = {
    "max_iter": ("int", 1), "max_steps": ("int", 1), "min_steps": ("int", 0),
    "num_samples": ("int", 1), "num_warmup": ("int", 1), "num_chains": ("int", 1),
    "num_draws": ("int", 1), "num_particles": ("int", 1), "elbo_particles": ("int", 1),
    "guide_rank": ("int", 1), "max_tree_depth": ("int", 1), "warmup": ("int", 0),
    "batch_size": ("int?", 1), "epochs": ("int", 1), "local_sweeps": ("int", 1),
    "devices": ("int?", 1), "map_iter": ("int", 1),
    "tol": ("number?", 0.0, None, False, False),
    "learning_rate": ("number", 0.0, None, True, False),
    "init_scale": ("number", 0.0, None, True, False),
    "target_accept": ("number", 0.0, 1.0, True, True),
}


def check_options(options: dict) -> dict:
    """``options`` with every entry named in :data:`INFERENCE_OPTIONS` checked (and cast);
    others pass through unchanged (their function checks them: strings such as ``guide``)."""
    checked = dict(options)
    for name, value in options.items():
        spec = INFERENCE_OPTIONS.get(name)
        if spec is None:
            continue
        if spec[0] in ("int", "int?"):
            checked[name] = check_integer(name, value, spec[1], allow_none=spec[0] == "int?")
        elif value is None and spec[0] == "number?":
            continue
        else:
            low, high, low_open, high_open = spec[1:]
            checked[name] = check_number(name, value, low, high, low_open=low_open,
                                         high_open=high_open)
    return checked


def check_prob(prob, name="prob") -> float:
    """``prob`` as a float strictly between 0 and 1, else a ValueError naming ``name``."""
    if isinstance(prob, bool) or not isinstance(prob, (int, float, np.floating)) \
            or not 0 < prob < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {prob!r}.")
    return float(prob)
