"""Writing a part as a sparse non-negative mix of reference parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from .matching import as_matrix, common_rows

__all__ = ["decompose"]


def decompose(part, W_ref, tolerance: float = 0.01, max_parts: int | None = None
              ) -> pd.DataFrame:
    """Write a part as a sparse non-negative mix of reference parts.

    Non-negative least squares on all references, then backward elimination: the reference
    whose removal lowers the cosine of the reconstruction least is dropped while the cosine
    stays within ``tolerance`` of the full fit (and while more than ``max_parts`` remain).

    Parameters
    ----------
    part : Series or array of shape (n_features,)
    W_ref : DataFrame or array of shape (n_features, m)
    tolerance : float
        Cosine the sparse mix may lose against the NNLS fit on every reference.
    max_parts : int, optional

    Returns
    -------
    DataFrame
        One row per reference kept, by decreasing weight: ``reference``, ``weight`` (summing to
        1); ``attrs["cosine"]`` holds the cosine of the mix with the part.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must lie in [0, 1), got {tolerance!r}.")
    W_ref = as_matrix(W_ref, "W_ref")
    vector = part.to_frame() if isinstance(part, pd.Series) else pd.DataFrame(
        np.asarray(part, dtype=np.float64).reshape(-1, 1))
    v, B = common_rows(vector, W_ref)
    v = v[:, 0]
    if not (v > 0).any():
        raise ValueError("part has no positive entry; there is nothing to decompose.")
    B = B / B.sum(axis=0)

    def fit(columns):
        weights, _ = nnls(B[:, columns], v)
        recon = B[:, columns] @ weights
        return weights, float(recon @ v / max(np.linalg.norm(recon) * np.linalg.norm(v),
                                              1e-300))

    kept = list(range(B.shape[1]))
    weights, full = fit(kept)
    kept = [c for c, w in zip(kept, weights) if w > 0]
    while len(kept) > 1:
        cosine, drop = max((fit([c for c in kept if c != d])[1], d) for d in kept)
        too_many = max_parts is not None and len(kept) > max_parts
        if cosine < full - tolerance and not too_many:
            break
        kept.remove(drop)
    weights, cosine = fit(kept)
    order = np.argsort(-weights)
    out = pd.DataFrame({"reference": W_ref.columns[np.asarray(kept)[order]],
                        "weight": weights[order] / weights.sum()})
    out = out[out["weight"] > 0].reset_index(drop=True)
    out.attrs["cosine"] = cosine
    return out
