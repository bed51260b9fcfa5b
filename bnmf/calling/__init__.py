"""Calling known parts: refitting with presence probabilities, matching, decomposition, and
per-program summaries of a fit on single cells.

One concern per module:

* :mod:`~bnmf.calling.refitting`: :func:`refit`, exposures of fixed reference parts (the
  model is :class:`bnmf.models.refit.RefitPoisson`, fitted through bnmf's inference pipeline);
* :mod:`~bnmf.calling.calls`: :class:`Calls`, its draws and the presence calls thresholded
  from them;
* :mod:`~bnmf.calling.reference`: validating reference parts against the data;
* :mod:`~bnmf.calling.matching`: :func:`match`, naming parts by Hungarian cosine matching;
* :mod:`~bnmf.calling.decomposition`: :func:`decompose`, a part as a sparse mix of references;
* :mod:`~bnmf.calling.programs`: :func:`program_summary`, :func:`program_usage`.
"""

from .calls import Calls
from .decomposition import decompose
from .matching import match
from .programs import program_summary, program_usage
from .refitting import REFIT_METHODS, refit

__all__ = ["REFIT_METHODS", "Calls", "decompose", "match", "program_summary", "program_usage",
           "refit"]
