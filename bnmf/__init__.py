"""bnmf: probabilistic (Bayesian) non-negative matrix factorization with NumPyro and JAX.

``X ≈ W H`` with X features × samples, W the parts (features × rank) and H their activities
(rank × samples). See ``bnmf.fit``, ``bnmf.select_rank`` and ``bnmf.refit``.
"""

from . import models, tl
from .calling import Calls, decompose, match, refit
from .fitting import fit
from .multiview import MultiViewFit
from .network import NetworkFit, fit_network
from .posterior import BnmfWarning, Fit, compare, load, read_anndata
from .resampling import Bootstrap, bootstrap
from .selection import RankSelection, select_rank
from .sklearn import BayesianNMF

__all__ = [
    "BayesianNMF",
    "BnmfWarning",
    "Bootstrap",
    "Calls",
    "Fit",
    "MultiViewFit",
    "NetworkFit",
    "RankSelection",
    "bootstrap",
    "compare",
    "decompose",
    "fit",
    "fit_network",
    "load",
    "match",
    "models",
    "read_anndata",
    "refit",
    "select_rank",
    "tl",
]
__version__ = "0.1.0"
