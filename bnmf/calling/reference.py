"""Validating reference parts (signatures) against the data, and probability arguments."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import Data
from ..options import check_prob
from ..posterior import Fit

__all__ = ["align_rows", "as_reference", "check_prob"]


def as_reference(signatures, data: Data, name: str = "signatures") -> pd.DataFrame:
    """Validate a reference (n_features, K) and align its rows to ``data``'s features.

    Returns a DataFrame indexed like ``data.feature_names`` whose columns sum to 1.
    """
    if isinstance(signatures, Fit):
        signatures = signatures.W
    if isinstance(signatures, pd.DataFrame):
        bad = [c for c, dtype in signatures.dtypes.items()
               if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)]
        if bad:
            raise TypeError(f"{name} has non-numeric columns {bad[:5]}; pass only the numeric "
                            "matrix (features as rows, one column per reference part).")
        frame = signatures.astype(np.float64)
        if data.has_labels:
            frame = align_rows(frame, data.feature_names, name)
        elif frame.shape[0] != data.shape[0]:
            raise ValueError(f"{name} has {frame.shape[0]} rows but X has {data.shape[0]} "
                             "features; give one row per feature of X.")
        else:
            frame = frame.set_axis(data.feature_names, axis=0)
    else:
        if isinstance(signatures, (str, bytes)) or not hasattr(signatures, "__array__") \
                and not isinstance(signatures, list):
            raise TypeError(f"{name} must be a DataFrame or 2-D array (features × parts), got "
                            f"{type(signatures).__name__}.")
        arr = np.asarray(signatures)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) \
                or np.iscomplexobj(arr):
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (features × parts), got shape {arr.shape}.")
        if arr.shape[0] != data.shape[0]:
            raise ValueError(f"{name} has {arr.shape[0]} rows but X has {data.shape[0]} "
                             "features; give one row per feature of X.")
        frame = pd.DataFrame(arr.astype(np.float64), index=data.feature_names)
    values = frame.to_numpy()
    if frame.shape[1] == 0:
        raise ValueError(f"{name} has no columns; give at least one reference part.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values; reference parts must be "
                         "finite.")
    if (values < 0).any():
        raise ValueError(f"{name} contains negative values (min {values.min():g}); reference "
                         "parts must be non-negative.")
    totals = values.sum(axis=0)
    if (totals <= 0).any():
        empty = list(frame.columns[totals <= 0][:5])
        raise ValueError(f"{name} has all-zero columns {empty}; drop them.")
    if frame.columns.has_duplicates:
        raise ValueError(f"{name} has duplicate column names "
                         f"{list(frame.columns[frame.columns.duplicated()][:5])}; make them unique.")
    return frame / totals


def align_rows(frame: pd.DataFrame, features: pd.Index, name: str) -> pd.DataFrame:
    """Reorder ``frame``'s rows to ``features``; refuse a mismatch with the labels that differ."""
    index = frame.index.astype(str)
    wanted = pd.Index(features).astype(str)
    if index.has_duplicates:
        raise ValueError(f"{name} has duplicate row labels {list(index[index.duplicated()][:5])}.")
    missing = wanted.difference(index)
    extra = index.difference(wanted)
    if len(missing) or len(extra):
        raise ValueError(
            f"{name}'s rows do not match X's features: {len(missing)} of X's features are "
            f"missing from {name} (e.g. {list(missing[:3])}) and {len(extra)} rows of {name} are "
            f"not features of X (e.g. {list(extra[:3])}). Give {name} one row per feature of X, "
            "labelled the same way (any order); for SBS96 data, bnmf.datasets.to_sbs96 puts "
            "both in the canonical channel order."
        )
    return frame.set_axis(index, axis=0).loc[wanted].set_axis(features, axis=0)
