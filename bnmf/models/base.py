"""Pieces every model shares: data-driven prior scales and the site layout.

Site layout (NumPyro): ``W`` has shape (n_features, rank), sampled in the ``feature`` plate with
the component axis as an event dim; ``H`` is sampled as (n_samples, rank) in the ``observation``
plate and exposed everywhere else as (rank, n_samples). The likelihood sits in the
``observation`` plate, with the feature axis as an event dim, so minibatching over samples is a
``subsample_size`` away. One plate per axis name keeps NumPyro's plate dims consistent.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
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
