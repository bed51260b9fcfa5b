"""NumPyro generative models for NMF, one module per family.

A model is a small frozen dataclass of hyperparameters with ``resolve(data, rank)`` (fill
data-driven defaults), ``numpyro_model(X, mask, rank, W=None)``, ``log_likelihood(X, W, H,
extras)`` (per entry) and ``init_extras`` (starting values of its own sites).
"""

from __future__ import annotations

from .ard import ARDPoisson
from .gaussian import GaussianHalfNormal
from .hierarchical import HierarchicalPoissonGamma
from .horseshoe import Horseshoe
from .negbin import NegativeBinomial
from .poisson import PoissonGamma
from .spatial import SpatialNMF

__all__ = [
    "MODELS",
    "ARDPoisson",
    "GaussianHalfNormal",
    "HierarchicalPoissonGamma",
    "Horseshoe",
    "NegativeBinomial",
    "PoissonGamma",
    "SpatialNMF",
    "get_model",
]

MODELS = {"poisson": PoissonGamma, "gaussian": GaussianHalfNormal, "horseshoe": Horseshoe,
          "poisson-hierarchical": HierarchicalPoissonGamma, "ard": ARDPoisson,
          "negbin": NegativeBinomial, "spatial": SpatialNMF}


def get_model(model, **options):
    """Return a model object from a name in :data:`MODELS` (with options) or a model object."""
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}.")
        try:
            return MODELS[model](**options)
        except TypeError as err:
            raise TypeError(f"bad option for model {model!r}: {err}") from err
    if isinstance(model, tuple(MODELS.values())):
        if options:
            raise TypeError(
                f"model options {sorted(options)} given with a model object; set them on the "
                "object instead."
            )
        return model
    raise TypeError(f"model must be a name {sorted(MODELS)} or a bnmf model object, got {model!r}.")
