"""The result of :func:`bnmf.refit`: exposure draws and the presence calls thresholded from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .reference import check_prob

__all__ = ["Calls"]


@dataclass(frozen=True)
class Calls:
    """Exposures of known parts with their posterior, from :func:`refit`.

    Attributes
    ----------
    draws : ndarray of shape (n_draws, K, n_samples)
        Posterior draws of the exposures, in counts (of the refined fit: see :func:`refit`).
    screening_draws : ndarray of shape (n_draws, K, n_samples)
        Draws of the screening fit over every part, which give the presence probabilities.
    signatures : pandas.Index
        Names of the K reference parts.
    observation_names : pandas.Index
    has_labels : bool
        Whether outputs are DataFrames (X or the reference carried labels).
    info : dict
        Method (and ``method_choice`` when chosen), run time, sampler settings, divergences
        (NUTS) and the cohort shares learned by the screening fit.
    """

    draws: np.ndarray
    screening_draws: np.ndarray
    signatures: pd.Index
    observation_names: pd.Index
    has_labels: bool = True
    info: dict = field(default_factory=dict)

    def _frame(self, value):
        if not self.has_labels:
            return value
        return pd.DataFrame(value, index=self.signatures, columns=self.observation_names)

    @property
    def exposures(self):
        """Posterior mean exposures (K, n_samples), in counts."""
        return self._frame(self.draws.mean(axis=0))

    @property
    def fractions(self):
        """Posterior mean share of each sample's counts due to each part (K, n_samples)."""
        return self._frame(self._fraction_draws().mean(axis=0))

    def _fraction_draws(self, draws=None) -> np.ndarray:
        draws = self.draws if draws is None else draws
        total = draws.sum(axis=1, keepdims=True)
        return draws / np.maximum(total, np.finfo(draws.dtype).tiny)

    def interval(self, prob: float = 0.9):
        """Equal-tailed ``prob`` credible interval of the exposures: (lower, upper), each
        shaped like :attr:`exposures`."""
        prob = check_prob(prob)
        lower, upper = np.quantile(self.draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return self._frame(lower), self._frame(upper)

    def probability(self, min_fraction: float = 0.05):
        """Posterior probability that each part accounts for at least ``min_fraction`` of the
        sample's counts (K, n_samples)."""
        min_fraction = check_prob(min_fraction, "min_fraction")
        shares = self._fraction_draws(self.screening_draws)
        return self._frame((shares >= min_fraction).mean(axis=0))

    def active(self, min_fraction: float = 0.05, prob: float = 0.95):
        """True where P(part's share of the sample ≥ ``min_fraction``) ≥ ``prob`` (K, n_samples).

        The probability itself is :meth:`probability`; :meth:`table` has both.
        """
        prob = check_prob(prob)
        return self.probability(min_fraction) >= prob

    def table(self, prob: float = 0.9, min_fraction: float = 0.05,
              active_prob: float = 0.95) -> pd.DataFrame:
        """One row per (observation, part): exposure, interval, share, presence probability,
        call."""
        lower, upper = self.interval(prob)
        columns = {"exposure": self.exposures, "lower": lower, "upper": upper,
                   "fraction": self.fractions, "probability": self.probability(min_fraction)}
        long = {name: pd.DataFrame(np.asarray(value), index=self.signatures,
                                   columns=self.observation_names).T.stack()
                for name, value in columns.items()}
        out = pd.DataFrame(long)
        out.index.names = ["observation", "signature"]
        out["active"] = out["probability"] >= check_prob(active_prob, "active_prob")
        return out.reset_index()

    def __repr__(self) -> str:
        return (f"<bnmf.Calls method={self.info.get('method')!r} signatures={len(self.signatures)}"
                f" observations={len(self.observation_names)} draws={self.draws.shape[0]}>")
