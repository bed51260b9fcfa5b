"""Naming parts: one-to-one matching to reference parts by cosine similarity."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ..posterior import Fit, cosine_matrix
from .reference import align_rows

__all__ = ["as_matrix", "common_rows", "match"]


def as_matrix(W, name: str) -> pd.DataFrame:
    if isinstance(W, Fit):
        W = W.W
    if isinstance(W, pd.DataFrame):
        return W.astype(np.float64)
    arr = np.asarray(W, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (features × parts), got shape {arr.shape}.")
    return pd.DataFrame(arr)


def common_rows(W: pd.DataFrame, W_ref: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices on the same rows: by label when both are labelled, else by position."""
    labelled = not isinstance(W.index, pd.RangeIndex) and not isinstance(W_ref.index,
                                                                          pd.RangeIndex)
    if labelled:
        W_ref = align_rows(W_ref, W.index, "W_ref")
    elif W.shape[0] != W_ref.shape[0]:
        raise ValueError(f"W has {W.shape[0]} features but W_ref has {W_ref.shape[0]}; "
                         "they must describe the same features.")
    for name, frame in (("W", W), ("W_ref", W_ref)):
        values = frame.to_numpy()
        if not np.all(np.isfinite(values)) or (values < 0).any():
            raise ValueError(f"{name} must be finite and non-negative.")
    return W.to_numpy(), W_ref.to_numpy()


def match(W, W_ref) -> pd.DataFrame:
    """One-to-one matching of parts to reference parts by cosine similarity (Hungarian).

    Parameters
    ----------
    W : DataFrame, array of shape (n_features, k), or a Fit
        Parts to name, e.g. de novo signatures (``fit.W``).
    W_ref : DataFrame or array of shape (n_features, m)
        Reference parts. When both are DataFrames their rows are matched by label.

    Returns
    -------
    DataFrame
        One row per matched part (min(k, m) rows), sorted by component: ``component``,
        ``reference``, ``cosine``.
    """
    W, W_ref = as_matrix(W, "W"), as_matrix(W_ref, "W_ref")
    A, B = common_rows(W, W_ref)
    cos = cosine_matrix(A, B)
    rows, cols = linear_sum_assignment(-cos)
    return pd.DataFrame({"component": W.columns[rows], "reference": W_ref.columns[cols],
                         "cosine": cos[rows, cols]})
