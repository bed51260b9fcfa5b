"""bnmf: probabilistic (Bayesian) non-negative matrix factorization with NumPyro and JAX.

``X ≈ W H`` with X features × samples, W the parts (features × rank) and H their activities
(rank × samples). See ``bnmf.fit``.
"""

from . import models
from .calling import Calls, decompose, match, refit
from .fitting import fit
from .posterior import Fit, load

__all__ = ["fit", "Fit", "load", "models", "refit", "Calls", "match", "decompose"]
__version__ = "0.1.0"
