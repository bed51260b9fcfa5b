"""Inference: pure functions from (problem, options, seed) to raw draws and traces."""

from . import gibbs_gaussian as _gibbs_gaussian  # noqa: F401 (registers its Gibbs sampler)
from . import gibbs_negbin as _gibbs_negbin  # noqa: F401 (registers its Gibbs sampler)
from . import gibbs_refit as _gibbs_refit  # noqa: F401 (registers the refit Gibbs sampler)
from .cavi import fit_cavi
from .common import Problem, RawPosterior
from .gibbs import fit_gibbs
from .map import fit_map
from .nuts import fit_nuts
from .svi import fit_svi

METHODS = {"map": fit_map, "svi": fit_svi, "nuts": fit_nuts, "cavi": fit_cavi,
           "gibbs": fit_gibbs}

__all__ = [
    "METHODS",
    "Problem",
    "RawPosterior",
    "fit_cavi",
    "fit_gibbs",
    "fit_map",
    "fit_nuts",
    "fit_svi",
]
