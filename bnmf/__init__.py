"""bnmf: probabilistic (Bayesian) non-negative matrix factorization with NumPyro and JAX.

``X ≈ W H`` with X features × samples, W the parts (features × rank) and H their activities
(rank × samples). See ``bnmf.fit``.
"""

from . import models
from .fitting import fit
from .posterior import Fit, load
from .selection import RankSelection, select_rank

__all__ = ["fit", "Fit", "load", "models", "select_rank", "RankSelection"]
__version__ = "0.1.0"
