"""The model protocol, the capability registry, and pieces every model shares.

A model family is one file in ``bnmf/models/`` (plus its line in ``MODELS`` of
``bnmf/models/__init__.py``). It is a frozen dataclass of hyperparameters, registered as a JAX
pytree with :func:`hyperparameter_pytree`, that provides

* ``name`` (the string of ``model=``), ``needs_counts`` (integer data only) and
  ``nuts_calibrated`` (whether NUTS's coverage was measured: ``method=None`` may then pick it);
* ``sites(rank)``: its latent sites as :class:`Site` (name, dims in bnmf's layout, support),
  which is all ``Fit``, ``idata``, alignment, save/load and the generic samplers know of them;
* ``resolve(data, rank)``: the model with data-driven (empirical-Bayes) hyperparameters filled;
* ``numpyro_model(X, mask, rank, W=None)``: its NumPyro program (``W`` given keeps it fixed);
* ``log_likelihood(X, W, H, extras)``: per-entry log p(X_ij | sites), (n_features, n_samples);
* ``init_extras(W, H, X, mask)``: starting values of its sites other than ``W``, ``H``.

The generic methods (``map`` by Adam, ``svi``, ``nuts``) need nothing else. Everything faster is
a **capability**: an optional function or object registered beside the model with
:func:`register_capability` (e.g. ``"map_update"``, a :class:`MapUpdate` of closed-form MAP
updates; ``"cavi"``, a coordinate-ascent variational family; ``"sparse_counts"``, an O(nnz)
path for SciPy sparse counts; ``"start_model"``, the model whose closed-form MAP starts the
generic one). Inference asks :func:`capability`; a method whose capability a model lacks raises a
``ValueError`` naming the methods it supports (:func:`supported_methods`). Nothing is replaced
silently.

Site layout (NumPyro): ``W`` has shape (n_features, rank), sampled in the ``feature`` plate with
the component axis as an event dim; ``H`` is sampled as (n_samples, rank) in the
``observation`` plate and exposed everywhere else as (rank, n_samples). The likelihood sits in
the ``observation`` plate, with the feature axis as an event dim, so minibatching over samples
is a ``subsample_size`` away. One plate per axis name keeps NumPyro's plate dims consistent.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ..data import Data


def _is_hyperparameter_value(value) -> bool:
    """A number (or a traced scalar standing for one); bools, strings and None are not."""
    return (isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array))
            and not isinstance(value, (bool, np.bool_)))


def hyperparameter_pytree(cls):
    """Register a frozen-dataclass model as a JAX pytree: its numeric hyperparameters are the
    leaves, its other fields (likelihood names, flags, unset ``None`` scales) the static part.

    A compiled program then takes the model as an argument instead of baking its numbers in,
    so data whose empirical-Bayes scales differ (every new data set) reuse one compilation;
    ``jax.tree.structure(model)`` is the key under which such programs are cached.
    """
    names = tuple(field.name for field in dataclasses.fields(cls))

    def flatten(model):
        numeric = tuple(name for name in names
                        if _is_hyperparameter_value(getattr(model, name)))
        static = tuple((name, getattr(model, name)) for name in names if name not in numeric)
        return tuple(getattr(model, name) for name in numeric), (numeric, static)

    def unflatten(aux, leaves):
        numeric, static = aux
        # without __init__: its validation cannot compare traced values
        model = object.__new__(cls)
        for name, value in (*zip(numeric, leaves), *static):
            object.__setattr__(model, name, value)
        return model

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls


# ----------------------------------------------------------------------- sites and layouts
class Site(NamedTuple):
    """One latent site of a model.

    ``dims`` name its axes in bnmf's layout (after the leading chain, draw dims), from
    ``feature``, ``component``, ``observation`` or a model's own; ``support`` is
    ``"positive"`` (the generic methods work on its log) or ``"real"``; ``numpyro_transposed``
    says that the NumPyro program samples it with its two axes swapped (``H`` is sampled as
    (n_samples, rank) in the observation plate)."""

    name: str
    dims: tuple
    support: str = "positive"
    numpyro_transposed: bool = False


W_SITE = Site("W", ("feature", "component"))
H_SITE = Site("H", ("component", "observation"), numpyro_transposed=True)


def site_dims(model, rank: int | None = None) -> dict:
    """{site name: dims} of ``model`` (bnmf's layout), W and H included."""
    return {site.name: site.dims for site in model.sites(rank)}


def to_numpyro_layout(model, values: dict) -> dict:
    """Site values in bnmf's layout to the layout of the NumPyro program (swap the two
    trailing axes of the sites sampled transposed); ``values`` may hold a subset of sites."""
    transposed = {site.name for site in declared_sites(model) if site.numpyro_transposed}
    return {name: (jnp.swapaxes(v, -1, -2) if name in transposed else v)
            for name, v in values.items()}


def from_numpyro_layout(model, values: dict) -> dict:
    """Inverse of :func:`to_numpyro_layout` (the swap is its own inverse)."""
    return to_numpyro_layout(model, values)


def declared_sites(model) -> tuple:
    """``model.sites(None)``, or W and H for a model that does not declare its sites (its
    other sites are then taken as positive and in the NumPyro layout)."""
    return model.sites(None) if hasattr(model, "sites") else (W_SITE, H_SITE)


def _supports(model) -> dict:
    return {site.name: site.support for site in declared_sites(model)}


def to_unconstrained(model, values: dict) -> dict:
    """Site values (NumPyro layout) to the space the generic methods work in: the log of a
    positive site, a real site as it is."""
    support = _supports(model)
    return {name: (v if support.get(name, "positive") == "real" else jnp.log(v))
            for name, v in values.items()}


def to_constrained(model, u: dict) -> dict:
    """Inverse of :func:`to_unconstrained`: exp of positive sites, real sites as they are."""
    support = _supports(model)
    return {name: (v if support.get(name, "positive") == "real" else jnp.exp(v))
            for name, v in u.items()}


def log_jacobian(model, u: dict, exclude=()) -> jax.Array:
    """log |d constrained / d u| of :func:`to_constrained`: Σ u over the positive sites (not
    those named in ``exclude``), 0 for real ones."""
    support = _supports(model)
    return sum((jnp.sum(v) for name, v in u.items()
                if name not in exclude and support.get(name, "positive") != "real"),
               jnp.zeros((), next(iter(u.values())).dtype) if u else 0.0)


# --------------------------------------------------------------------------- capabilities
_CAPABILITIES: dict = {}  # model class -> {capability name: function or object}

# Which capability each method that is not generic needs. A helper adding a method that needs
# a model's own mathematics adds its line here (e.g. "gibbs": "gibbs_sweep").
GENERIC_METHODS = ("map", "svi", "nuts")
METHOD_CAPABILITY = {"cavi": "cavi", "gibbs": "gibbs_sweep"}


def register_capability(model_class, name: str, value=None):
    """Register ``value`` as capability ``name`` of ``model_class`` (and its subclasses).

    Usable as a decorator: ``@register_capability(PoissonGamma, "cavi")`` above a function.
    Returns ``value``."""
    def register(value):
        _CAPABILITIES.setdefault(model_class, {})[name] = value
        return value

    return register if value is None else register(value)


def capabilities(model) -> dict:
    """{name: capability} registered for ``model``'s class (and its base classes)."""
    found = {}
    for cls in reversed(type(model).__mro__):
        found.update(_CAPABILITIES.get(cls, {}))
    return found


def has_capability(model, name: str) -> bool:
    """Whether ``model`` provides capability ``name``."""
    return name in capabilities(model)


def supported_methods(model) -> tuple:
    """The ``method=`` values ``model`` can be fitted with: the generic ones (less ``"map"`` for
    a model whose density has no mode, see :func:`check_method`), plus each method of
    :data:`METHOD_CAPABILITY` whose capability it provides."""
    own = capabilities(model)
    generic = tuple(m for m in GENERIC_METHODS
                    if not (m == "map" and getattr(model, "no_map_mode", None)))
    return generic + tuple(m for m, need in METHOD_CAPABILITY.items() if need in own)


def models_with(name: str) -> list:
    """Names of the model families that register capability ``name``."""
    return sorted(getattr(cls, "name", cls.__name__) for cls, own in _CAPABILITIES.items()
                  if name in own)


def model_name(model) -> str:
    return getattr(model, "name", type(model).__name__)


def capability(model, name: str):
    """Capability ``name`` of ``model``, or a ValueError naming what the model supports."""
    own = capabilities(model)
    if name in own:
        return own[name]
    methods = [m for m, need in METHOD_CAPABILITY.items() if need == name]
    others = " or ".join(f"model={other!r}" for other in models_with(name))
    detail = [f"capability {name!r}"] if methods else []
    detail += [f"which {others} has"] if others else []
    wanted = f"method={methods[0]!r}" if methods else f"capability {name!r}"
    wanted += f" ({', '.join(detail)})" if detail else ""
    raise ValueError(
        f"model {model_name(model)!r} has no {wanted}; it supports method= "
        f"{list(supported_methods(model))} (capabilities: {sorted(own) or 'none'})."
    )


def check_method(model, method: str) -> None:
    """ValueError unless ``method`` is among :func:`supported_methods` of ``model``.

    A model whose joint density has no mode says why in its ``no_map_mode`` attribute; its
    ``method="map"`` raises that reason."""
    if method == "map" and getattr(model, "no_map_mode", None):
        raise ValueError(model.no_map_mode)
    if method in METHOD_CAPABILITY:
        capability(model, METHOD_CAPABILITY[method])
    elif method not in GENERIC_METHODS:
        raise ValueError(f"method must be one of {list(supported_methods(model))} for model "
                         f"{model_name(model)!r}, got {method!r}.")


class GibbsPrior(NamedTuple):
    """Capability ``"gibbs_prior"``: how a Poisson–gamma family's priors enter the latent-count
    Gibbs sweep (:mod:`bnmf.inference.gibbs`), per factor W and H.

    * ``learned``: whether the per-component gamma shapes and rates are sampled;
    * ``hyper_W``, ``hyper_H``: (shape_scale, rate_shape, rate_rate) of their hyperpriors
      (a ~ LogNormal(0, shape_scale), b ~ Gamma(rate_shape, rate_rate)); unused if not learned;
    * ``start(W, H) -> {"a_W", "b_W", "a_H", "b_H"}``: per-component (rank,) starting shapes
      and rates (the fixed values when not learned), H given already divided by the depths;
    * ``depth(X, mask) -> s`` (n_samples,), or None for 1: H_kj's prior rate is b_k / s_j
      (X dense with its mask, or SparseCounts).
    """

    learned: bool
    hyper_W: tuple
    hyper_H: tuple
    start: Callable
    depth: Callable | None = None


class MapUpdate(NamedTuple):
    """Capability ``"map_update"``: closed-form MAP updates as an ``(init, step)`` pair.

    * ``prepare(problem) -> aux``: the data in the form the updates use (a pytree; host side,
      once per fit: e.g. sparse counts, a transposed copy, constants of the objective);
    * ``prepare_masked(X, mask, model) -> aux``: the same for masked dense data, traceable
      (the vmapped restarts and folds of rank selection, each with its own mask);
    * ``init(W, H, aux, model) -> state``: a NamedTuple pytree with at least ``loss``
      (the negative log joint of the current iterate, ``inf`` at the start);
    * ``step(state, aux, model, n_steps, update_W) -> state``: ``n_steps`` updates (traced;
      ``update_W`` static), never increasing the loss of what ``values`` returns, except
      where the state has a ``relaxation`` field: then the driver redoes a chunk whose loss
      rose with ``relaxation`` 1 (the plain, monotone update) and keeps it;
    * ``values(state) -> dict``: the site values in bnmf's layout (W, H and the others);
    * ``describe(problem) -> dict``: ``algorithm`` and ``mode_space`` for ``fit.info``;
    * ``warm_start(problem, W, H, n_updates) -> (W, H, n_run)`` or None: an optional cheaper
      start (e.g. least squares for counts), applied only to starts made by the fit itself.
    """

    prepare: Callable
    prepare_masked: Callable
    init: Callable
    step: Callable
    values: Callable
    describe: Callable
    warm_start: Any = None


class CaviFamily(NamedTuple):
    """Capability ``"cavi"``: a closed-form coordinate-ascent variational family.

    * ``prepare(problem) -> aux``, ``init(W, H, aux, model, W_fixed) -> state`` (``loss`` =
      negative bound, ``inf`` at the start) and ``step(state, aux, model, n_steps) -> state``
      (sweeps that never decrease the bound), as for :class:`MapUpdate`;
    * ``factors(state)``: the variational parameters;
    * ``draw(factors, seed, num_draws) -> {"W": (num_draws, …), "H": …}`` (NumPy, bnmf
      layout);
    * ``minibatch_init(W, H, model)``, ``minibatch_step``, ``minibatch_final_block`` and
      ``global_kl(shape_W, rate_W, model)``: the pieces of stochastic (minibatch) CAVI over
      samples (:mod:`bnmf.inference.minibatch`), or None where the family has none.
    """

    prepare: Callable
    init: Callable
    step: Callable
    draw: Callable
    factors: Callable
    algorithm: str
    minibatch_init: Any = None
    minibatch_step: Any = None
    minibatch_final_block: Any = None
    global_kl: Any = None


def observed_mean(data: Data) -> float:
    """Mean of the observed entries (positive: :func:`bnmf.data.prepare` refuses all-zero X)."""
    return data.observed_moments()[0]


def observed_std(data: Data) -> float:
    """Standard deviation of the observed entries, or their mean if they are all equal."""
    mean, std = data.observed_moments()  # O(nnz) for sparse input
    return std if std > 0 else mean


def balanced_mean(data: Data, rank: int) -> float:
    """The factor entry mean m that makes E[(W H)_ij] = rank · m² match the data mean."""
    return math.sqrt(observed_mean(data) / rank)


def sample_W(prior: dist.Distribution, n_features: int, rank: int, W=None):
    """Sample (or return a fixed) W of shape (n_features, rank) in the ``feature`` plate."""
    if W is not None:
        return W
    with numpyro.plate("feature", n_features, dim=-1):
        return numpyro.sample(
            "W", prior.expand([n_features, rank]).to_event(1), infer={"event_dims": ["component"]}
        )


def sample_H(prior: dist.Distribution, n_samples: int, rank: int):
    """Sample H as (n_samples, rank) in the ``observation`` plate; callers transpose."""
    with numpyro.plate("observation", n_samples, dim=-1):
        return numpyro.sample(
            "H", prior.expand([n_samples, rank]).to_event(1), infer={"event_dims": ["component"]}
        )


def observe(likelihood_T: dist.Distribution, X, mask):
    """Condition on X (n_features, n_samples); masked entries contribute nothing.

    ``likelihood_T`` has batch shape (n_samples, n_features): the observation plate comes first.
    """
    n_samples = X.shape[1]
    with numpyro.plate("observation", n_samples, dim=-1):
        numpyro.sample("X", likelihood_T.mask(mask.T).to_event(1), obs=X.T)
