"""Per-program summaries of a fit on single cells: top features and per-cell usage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..posterior import Fit, arviz_group
from .reference import check_prob

__all__ = ["program_summary", "program_usage"]


def program_summary(fit: Fit, top: int = 20, threshold: float | None = None) -> pd.DataFrame:
    """Top features of each program with the posterior probability that each loading exceeds
    ``threshold``.

    Parameters
    ----------
    fit : Fit
        A fit with posterior draws (``method="svi"`` or ``"nuts"``), e.g. genes × cells.
    top : int
        Features per program, by posterior mean loading.
    threshold : float, optional
        Loading (columns of W sum to 1) to exceed; default ``1 / n_features``, the loading of a
        program spread evenly over all features.

    Returns
    -------
    DataFrame
        One row per (component, feature): ``component``, ``rank`` (1 = largest), ``feature``,
        ``loading`` (posterior mean), ``lower``, ``upper`` (90% interval) and ``probability``
        (P(loading > threshold)).
    """
    if fit.num_draws < 2:
        raise ValueError("program_summary needs posterior draws; fit with method='svi' or "
                         "'nuts' rather than 'map'.")
    W = fit._draws("W").reshape((-1,) + fit._draws("W").shape[2:])   # (draws, features, K)
    features = _feature_names(fit)
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}.")
    threshold = 1.0 / W.shape[1] if threshold is None else float(threshold)
    if not threshold >= 0:
        raise ValueError(f"threshold must be non-negative, got {threshold!r}.")
    mean = W.mean(axis=0)
    lower, upper = np.quantile(W, [0.05, 0.95], axis=0)
    probability = (W > threshold).mean(axis=0)
    rows = []
    for k in range(W.shape[2]):
        for rank, i in enumerate(np.argsort(-mean[:, k])[:top], start=1):
            rows.append((k, rank, features[i], mean[i, k], lower[i, k], upper[i, k],
                         probability[i, k]))
    out = pd.DataFrame(rows, columns=["component", "rank", "feature", "loading", "lower", "upper",
                                      "probability"])
    out.attrs["threshold"] = threshold
    return out


def program_usage(fit: Fit, prob: float = 0.9, normalize: bool = True):
    """Per-sample (per-cell) usage of each program with its credible interval.

    Parameters
    ----------
    fit : Fit
    prob : float
        Interval probability.
    normalize : bool
        Usage as each program's share of the cell's total (columns of the mean sum to 1); else
        in the data's units (H).

    Returns
    -------
    (mean, lower, upper) : DataFrames of shape (rank, n_samples)
    """
    prob = check_prob(prob)
    if fit.num_draws < 2:
        raise ValueError("program_usage needs posterior draws; fit with method='svi' or 'nuts'.")
    H = fit._draws("H").reshape((-1,) + fit._draws("H").shape[2:])   # (draws, K, n)
    if normalize:
        H = H / np.maximum(H.sum(axis=1, keepdims=True), np.finfo(H.dtype).tiny)
    lower, upper = np.quantile(H, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    index = pd.RangeIndex(H.shape[1], name="component")
    columns = _observation_names(fit)
    return tuple(pd.DataFrame(v, index=index, columns=columns) for v in (H.mean(axis=0),
                                                                          lower, upper))


def _feature_names(fit: Fit) -> np.ndarray:
    return np.asarray(arviz_group(fit.idata, "posterior")["feature"].values)


def _observation_names(fit: Fit) -> pd.Index:
    return pd.Index(arviz_group(fit.idata, "posterior")["observation"].values)
