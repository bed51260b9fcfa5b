"""Validate and convert user input into one internal form.

Every input error a user can make is raised here, before anything is traced by JAX, with a
message that names the problem and the fix. The rest of bnmf trusts a :class:`Data`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["Data", "check_rank", "prepare"]

# XLA:CPU adopts a NumPy buffer without a copy when it is aligned to this many bytes.
DEVICE_ALIGNMENT = 64


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose buffer starts on a ``DEVICE_ALIGNMENT`` boundary."""
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(n_bytes + DEVICE_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % DEVICE_ALIGNMENT
    return buffer[start:start + n_bytes].view(dtype).reshape(shape)


# Device arrays (used by models and inference alike)
def to_device(values: np.ndarray, dtype) -> jax.Array:
    """``values`` as a JAX array of ``dtype``, converted on the host in one pass.

    On CPU the converted buffer is adopted without a copy: 27 ms for a 5,000 × 5,000 float64
    array to float32, against 150 ms for ``jnp.asarray(values, dtype)`` (which converts and
    then copies into a buffer of its own). A read-only, aligned array already of ``dtype``
    (:attr:`bnmf.data.Data.values` of float32 input) is adopted as it is: no one can change
    it under the fit."""
    if (isinstance(values, np.ndarray) and values.dtype == dtype and not values.flags.writeable
            and values.flags.c_contiguous and values.ctypes.data % DEVICE_ALIGNMENT == 0):
        return jax.device_put(values)
    out = aligned_empty(np.shape(values), dtype)
    np.copyto(out, values, casting="same_kind")
    return jax.device_put(out)


def transposed(X: jax.Array, tile: int = 512) -> jax.Array:
    """Xᵀ (n_samples, n_features) in a row-major buffer of its own.

    On one CPU device, a tiled NumPy transpose into an aligned buffer (45 ms at 5,000 × 5,000)
    beats XLA's transpose (105–125 ms); elsewhere (GPU, sharded X) XLA transposes in place."""
    devices = X.devices()
    if len(devices) != 1 or next(iter(devices)).platform != "cpu":
        return jnp.array(X.T)
    host = np.asarray(X)  # no copy on CPU
    out = aligned_empty(host.shape[::-1], host.dtype)
    for i in range(0, host.shape[0], tile):  # tiles that fit in cache on both sides
        for j in range(0, host.shape[1], tile):
            out[j:j + tile, i:i + tile] = host[i:i + tile, j:j + tile].T
    return jax.device_put(out)


def floor_positive(A, relative: float = 1e-6):
    """Raise entries to at least ``relative`` × mean(A): log-space methods cannot start at 0."""
    return jnp.maximum(A, relative * jnp.mean(A) + jnp.finfo(A.dtype).tiny)


def _frozen_copy(arr: np.ndarray, dtype) -> np.ndarray:
    """A read-only copy of ``arr`` as ``dtype`` in an aligned buffer: bnmf's own, which no one
    can change afterwards, so a fit on CPU adopts it without another copy."""
    out = aligned_empty(arr.shape, dtype)
    np.copyto(out, arr, casting="unsafe")  # bool/int/float16 widen; checked as numbers already
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class Data:
    """A validated data matrix, features × samples.

    Attributes
    ----------
    values : ndarray of shape (n_features, n_samples), float32 or float64, read-only
        The observations; unobserved entries hold 0 (they never enter a likelihood). float32
        input stays float32 (a fit computes in float32 by default anyway), any other input
        becomes float64. bnmf's own copy, never the caller's array.
    mask : ndarray of shape (n_features, n_samples), bool, read-only
        True where the entry is observed (bnmf's own copy, never the caller's array).
    feature_names, observation_names : pandas.Index
        Labels from the input (DataFrame index/columns, AnnData names), else integers.
    has_labels : bool
        Whether the input carried labels, so outputs should be DataFrames.
    is_counts : bool
        Whether every observed value is a non-negative integer.
    sparse : scipy.sparse.coo_matrix of shape (n_features, n_samples), optional
        The observed entries when the input was a SciPy sparse matrix (duplicates summed,
        explicit zeros and unobserved entries dropped, float64), for the O(nnz) Poisson paths
        (:mod:`bnmf.models.counts`); None for dense input.
    hidden : tuple of two int arrays (rows, cols), optional
        With ``sparse``: the unobserved entries (empty when all are observed).

    Sparse input is never densified by :func:`prepare`: ``values`` and ``mask`` are then built
    on first access only (O(n_features · n_samples) memory), and code that must stay O(nnz)
    uses ``sparse``, ``hidden``, :attr:`shape`, :attr:`fully_observed` and
    :meth:`observed_moments` instead.
    """

    values: np.ndarray | None
    mask: np.ndarray | None
    feature_names: pd.Index
    observation_names: pd.Index
    has_labels: bool
    is_counts: bool
    sparse: sp.coo_matrix | None = None
    hidden: tuple | None = None

    def __post_init__(self):
        if self.sparse is not None and self.values is not None:
            # dataclasses.replace with new dense values or mask (e.g. a training mask): the
            # dense arrays are now the data; a stale sparse copy must not be fitted instead.
            object.__setattr__(self, "sparse", None)
            object.__setattr__(self, "hidden", None)
        elif self.sparse is not None:
            # Let __getattr__ build the dense views lazily (see the class docstring).
            object.__delattr__(self, "values")
            object.__delattr__(self, "mask")

    def __getattr__(self, name):
        # Only reached for attributes not set: the dense views of sparse input.
        sparse = self.__dict__.get("sparse")
        if name not in ("values", "mask") or sparse is None:
            raise AttributeError(name)
        values = sparse.toarray()
        mask = np.ones(sparse.shape, bool)
        rows, cols = self.__dict__["hidden"]
        mask[rows, cols] = False
        values.flags.writeable = mask.flags.writeable = False  # as for dense input
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "mask", mask)
        return self.__dict__[name]

    @property
    def shape(self) -> tuple[int, int]:
        if self.__dict__.get("sparse") is not None:
            return tuple(int(n) for n in self.sparse.shape)
        return self.values.shape

    @property
    def fully_observed(self) -> bool:
        if "mask" not in self.__dict__:  # sparse input, mask not built
            return self.hidden[0].size == 0
        return bool(self.mask.all())

    def observed_values(self) -> np.ndarray:
        """The observed entries as a flat array (dense: O(n_features · n_samples))."""
        return self.values[self.mask]

    def observed_moments(self) -> tuple[float, float]:
        """Mean and standard deviation of the observed entries, in O(nnz) for sparse input."""
        if "mask" in self.__dict__:
            # a fully observed X is used in place (no boolean-indexed copy)
            values = self.values.reshape(-1) if self.fully_observed else self.observed_values()
            total, squares = _sum_and_sum_of_squares(values)  # one pass
            mean = total / values.size
            variance = squares / values.size - mean**2
            if variance < 1e-6 * mean**2:  # cancellation would dominate: the two-pass formula
                variance = float(values.var(dtype=np.float64))
            return mean, float(np.sqrt(max(variance, 0.0)))
        n_observed = self.shape[0] * self.shape[1] - self.hidden[0].size
        mean = float(self.sparse.data.sum()) / n_observed
        variance = float(np.sum(self.sparse.data ** 2)) / n_observed - mean ** 2
        return mean, float(np.sqrt(max(variance, 0.0)))


def _sum_and_sum_of_squares(flat: np.ndarray, block: int = 1 << 14) -> tuple[float, float]:
    """(Σ x, Σ x²) of a 1-D array, accurate to float64 rounding for float32 too: sums and BLAS
    dots of cache-sized blocks added as Python floats (over 25 M float32 entries one dot is off
    by about 1e-4 relative and one mean by about 1e-7; blocks of 16 k by about 1e-9, at
    nearly the same speed)."""
    total = squares = 0.0
    for i in range(0, flat.size, block):
        part = flat[i:i + block]
        total += float(part.sum(dtype=np.float64))
        squares += float(np.dot(part, part))
    return total, squares


def _to_array_and_labels(X):
    """Return (2-D numeric ndarray, feature labels or None, observation labels or None); the
    array may be the caller's own (:func:`prepare` copies it)."""
    if type(X).__name__ == "AnnData":
        # AnnData is cells × genes; bnmf works in features × samples.
        mat = X.X
        arr = mat.toarray() if sp.issparse(mat) else np.asarray(mat)
        return arr.T, pd.Index(X.var_names), pd.Index(X.obs_names)
    if isinstance(X, pd.DataFrame):
        bad = [c for c, dtype in X.dtypes.items() if not _is_real_numeric(dtype)]
        if bad:
            raise TypeError(
                f"X is a DataFrame with non-numeric columns {bad[:5]}; pass only the numeric "
                "matrix (features as rows, samples as columns), e.g. X.select_dtypes('number')."
            )
        single = all(dtype == np.float32 for dtype in X.dtypes)
        return X.to_numpy(dtype=np.float32 if single else np.float64), X.index, X.columns
    if sp.issparse(X):
        _check_real_sparse(X)
        return X.toarray(), None, None
    if isinstance(X, (str, bytes)) or not hasattr(X, "__array__") and not isinstance(X, list):
        raise TypeError(
            f"X must be a NumPy array, pandas DataFrame, SciPy sparse matrix or AnnData, "
            f"got {type(X).__name__}. To read a file, use bnmf.io.read_matrix(path)."
        )
    try:
        arr = np.asarray(X)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"X must be a rectangular 2-D matrix: {err}") from err
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"X must hold numbers, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise TypeError(f"X must hold real numbers, got dtype {arr.dtype}.")
    return arr, None, None


def _is_real_numeric(dtype) -> bool:
    return (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
            and not pd.api.types.is_datetime64_any_dtype(dtype)
            and not pd.api.types.is_timedelta64_dtype(dtype))


def _first_position(flags: np.ndarray) -> tuple[int, int]:
    i, j = np.argwhere(flags)[0]
    return int(i), int(j)


def _validate_mask(mask, shape, feature_names=None, observation_names=None) -> np.ndarray:
    if isinstance(mask, pd.DataFrame):
        if feature_names is not None and mask.shape == shape:
            same_labels = (set(mask.index) == set(feature_names)
                           and set(mask.columns) == set(observation_names))
            if not same_labels:
                raise ValueError(
                    "mask is a DataFrame whose labels differ from X's; give it X's index and "
                    "columns (in any order), or pass a plain boolean array."
                )
            mask = mask.reindex(index=feature_names, columns=observation_names)
        mask = mask.to_numpy()
    elif sp.issparse(mask):
        mask = mask.toarray()
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(
            f"mask has shape {mask.shape} but X has shape {shape}; the mask must have X's shape "
            "(True = observed)."
        )
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("mask must be boolean (True = observed) or 0/1.")
        mask = mask.astype(bool)
    return mask


def prepare(X, mask=None, missing: str = "error", counts: bool = False,
            scoring: bool = False) -> Data:
    """Validate ``X`` (and ``mask``) and return a :class:`Data`.

    Parameters
    ----------
    X : array-like of shape (n_features, n_samples), DataFrame, SciPy sparse matrix or AnnData
        Non-negative data, features as rows. AnnData (cells × genes) is transposed.
    mask : array-like of bool, shape (n_features, n_samples), optional
        True where an entry is observed. Unobserved entries may hold NaN.
    missing : {"error", "mask"}
        What NaN in ``X`` means without a mask: an error, or unobserved entries.
    counts : bool
        Whether the model needs non-negative integer counts.
    scoring : bool
        Data only to be scored (held-out entries), not fitted: a row or column may then be
        entirely unobserved, and all observed values may be zero.

    Raises
    ------
    TypeError
        For input that is not a numeric matrix.
    ValueError
        For negative, NaN or infinite values, wrong shapes, empty input, a bad mask, or
        non-integer values where ``counts`` is True.
    """
    if missing not in ("error", "mask"):
        raise ValueError(f"missing must be 'error' or 'mask', got {missing!r}.")
    sparse_input = _sparse_and_labels(X)
    if sparse_input is not None:
        return _prepare_sparse(*sparse_input, mask=mask, missing=missing, counts=counts,
                               scoring=scoring)
    arr, feature_names, observation_names = _to_array_and_labels(X)
    has_labels = feature_names is not None
    if arr.ndim != 2:
        raise ValueError(
            f"X must be 2-D (features × samples), got {arr.ndim}-D with shape {arr.shape}. "
            "Reshape it, e.g. X.reshape(n_features, -1)."
        )
    if arr.size == 0 or min(arr.shape) == 0:
        raise ValueError(f"X is empty (shape {arr.shape}); it needs at least one feature and sample.")
    # float32 stays float32 (half the memory; fits compute in float32 by default), the rest
    # becomes float64
    arr = _frozen_copy(arr, np.float32 if arr.dtype == np.float32 else np.float64)

    nan = np.isnan(arr)
    if mask is None:
        if nan.any() and missing == "error":
            i, j = _first_position(nan)
            raise ValueError(
                f"X contains {int(nan.sum())} NaN values (first at feature {i}, observation {j}) "
                "and no mask was given. Pass mask=~np.isnan(X), or missing='mask' to treat NaN "
                "as unobserved."
            )
        mask_arr = np.logical_not(nan, out=aligned_empty(arr.shape, bool))
        mask_arr.flags.writeable = False
    else:
        mask_arr = _frozen_copy(_validate_mask(mask, arr.shape, feature_names, observation_names),
                                bool)
        if (nan & mask_arr).any():
            i, j = _first_position(nan & mask_arr)
            raise ValueError(
                f"X is NaN at feature {i}, observation {j} where the mask says observed; "
                "set the mask to False there."
            )
    observed = np.where(mask_arr, arr, 0.0) if nan.any() or mask is not None else arr
    # min and max are single passes without temporaries; the full checks run only on failure
    low, high = (observed.min(), observed.max()) if observed.size else (0.0, 0.0)
    if np.isinf(low) or np.isinf(high):
        i, j = _first_position(np.isinf(observed))
        raise ValueError(
            f"X contains infinite values (first at feature {i}, observation {j}); "
            "bnmf needs finite data."
        )
    if low < 0:
        i, j = _first_position(observed < 0)
        raise ValueError(
            f"X contains negative values (min {observed.min():g} at feature {i}, observation "
            f"{j}); NMF needs non-negative data. Check the input (log-ratios, centred or "
            "batch-corrected values are not allowed)."
        )
    empty_rows = np.flatnonzero(~mask_arr.any(axis=1))
    if empty_rows.size and not scoring:
        raise ValueError(
            f"the mask hides every entry of feature {empty_rows[0]} "
            f"({empty_rows.size} features in all); drop those features or observe some entries."
        )
    empty_cols = np.flatnonzero(~mask_arr.any(axis=0))
    if empty_cols.size and not scoring:
        raise ValueError(
            f"the mask hides every entry of observation {empty_cols[0]} "
            f"({empty_cols.size} observations in all); drop those observations or observe some "
            "entries."
        )
    if not scoring and not high > 0:
        raise ValueError("X has no positive observed entry; there is nothing to factorize.")
    is_counts = _integer_valued(observed)
    if counts and not is_counts:
        i, j = _first_position(observed != np.round(observed))
        raise ValueError(
            f"X has non-integer values (e.g. {observed[i, j]:g} at feature {i}, observation {j}) "
            "but the model needs counts. Use model='gaussian' for continuous data, or pass raw "
            "counts rather than normalized ones."
        )
    if not has_labels:
        feature_names = pd.RangeIndex(arr.shape[0], name="feature")
        observation_names = pd.RangeIndex(arr.shape[1], name="observation")
    observed.flags.writeable = False  # X's copy or np.where's result: bnmf's own either way
    return Data(
        values=observed,
        mask=mask_arr,
        feature_names=pd.Index(feature_names),
        observation_names=pd.Index(observation_names),
        has_labels=has_labels,
        is_counts=is_counts,
    )


def _integer_valued(values: np.ndarray, block: int = 1 << 20) -> bool:
    """Whether every entry is a whole number; a block at a time (stays in cache, and stops at
    the first block with a fraction)."""
    flat = values.reshape(-1)
    return all(np.array_equal(part, np.round(part))
               for part in (flat[i:i + block] for i in range(0, flat.size, block)))


def _check_real_sparse(X) -> None:
    if X.dtype.kind == "c":
        raise TypeError("X must hold real numbers, got a complex sparse matrix.")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold numbers, got a sparse matrix of dtype {X.dtype}.")


def _sparse_and_labels(X):
    """(float64 COO with duplicates summed, feature labels, observation labels) for SciPy
    sparse input or an AnnData with a sparse matrix (cells × genes, transposed); else None."""
    labels = (None, None)
    if type(X).__name__ == "AnnData" and sp.issparse(X.X):
        X, labels = X.X.T, (pd.Index(X.var_names), pd.Index(X.obs_names))
    if not sp.issparse(X):
        return None
    _check_real_sparse(X)
    coo = sp.coo_matrix(X, dtype=np.float64, copy=True)
    coo.sum_duplicates()
    return (coo, *labels)


def _prepare_sparse(coo: sp.coo_matrix, feature_names, observation_names, *, mask, missing,
                    counts, scoring) -> Data:
    """:func:`prepare` for sparse input in O(nnz) memory (plus a dense mask if one is given):
    the same checks and messages, on the stored entries only."""
    shape = coo.shape
    if min(shape) == 0:
        raise ValueError(f"X is empty (shape {shape}); it needs at least one feature and sample.")
    rows, cols, values = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
    nan = np.isnan(values)
    if mask is None:
        if nan.any() and missing == "error":
            raise ValueError(
                f"X contains {int(nan.sum())} NaN values (first at feature {rows[nan][0]}, "
                f"observation {cols[nan][0]}) and no mask was given. Pass a mask (True = "
                "observed), or missing='mask' to treat NaN as unobserved."
            )
        hidden = (rows[nan], cols[nan])
    else:
        if isinstance(mask, pd.DataFrame) and feature_names is None:
            mask = mask.to_numpy()
        mask_arr = _validate_mask(mask, shape, feature_names, observation_names)
        if (nan & mask_arr[rows, cols]).any():
            i, j = rows[nan & mask_arr[rows, cols]][0], cols[nan & mask_arr[rows, cols]][0]
            raise ValueError(
                f"X is NaN at feature {i}, observation {j} where the mask says observed; "
                "set the mask to False there."
            )
        hidden = np.nonzero(~mask_arr)
    # Keep the observed, non-zero stored entries (a linear index finds the hidden ones).
    keep = values != 0
    if hidden[0].size:
        keep &= ~np.isin(rows * shape[1] + cols, hidden[0].astype(np.int64) * shape[1] + hidden[1])
    rows, cols, values = rows[keep], cols[keep], values[keep]
    if np.isinf(values).any():
        at = np.flatnonzero(np.isinf(values))[0]
        raise ValueError(
            f"X contains infinite values (first at feature {rows[at]}, observation {cols[at]}); "
            "bnmf needs finite data."
        )
    if (values < 0).any():
        at = np.flatnonzero(values < 0)[0]
        raise ValueError(
            f"X contains negative values (min {values.min():g} at feature {rows[at]}, "
            f"observation {cols[at]}); NMF needs non-negative data. Check the input (log-ratios, "
            "centred or batch-corrected values are not allowed)."
        )
    if hidden[0].size and not scoring:
        for axis, (name, plural, other) in enumerate(
                [("feature", "features", shape[1]), ("observation", "observations", shape[0])]):
            empty = np.flatnonzero(np.bincount(hidden[axis], minlength=shape[axis]) == other)
            if empty.size:
                raise ValueError(
                    f"the mask hides every entry of {name} {empty[0]} ({empty.size} {plural} "
                    f"in all); drop those {plural} or observe some entries."
                )
    if not scoring and values.size == 0:
        raise ValueError("X has no positive observed entry; there is nothing to factorize.")
    is_counts = _integer_valued(values)
    if counts and not is_counts:
        at = np.flatnonzero(values != np.round(values))[0]
        raise ValueError(
            f"X has non-integer values (e.g. {values[at]:g} at feature {rows[at]}, observation "
            f"{cols[at]}) but the model needs counts. Use model='gaussian' for continuous data, "
            "or pass raw counts rather than normalized ones."
        )
    has_labels = feature_names is not None
    if not has_labels:
        feature_names = pd.RangeIndex(shape[0], name="feature")
        observation_names = pd.RangeIndex(shape[1], name="observation")
    stored = sp.coo_matrix((values, (rows, cols)), shape=shape)
    # a subset, in order, of the canonical (sorted, summed) entries of ``coo``: say so, or SciPy
    # would sort them again for every sum (0.25 s at 2 million entries)
    stored.has_canonical_format = True
    return Data(
        values=None,
        mask=None,
        feature_names=pd.Index(feature_names),
        observation_names=pd.Index(observation_names),
        has_labels=has_labels,
        is_counts=is_counts,
        sparse=stored,
        hidden=(np.asarray(hidden[0], np.int64), np.asarray(hidden[1], np.int64)),
    )


def check_rank(rank, shape: tuple[int, int]) -> int:
    """Return ``rank`` as an int after checking 1 ≤ rank ≤ min(shape)."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"rank must be an integer, got {type(rank).__name__} {rank!r}.")
    limit = min(shape)
    if rank < 1 or rank > limit:
        raise ValueError(
            f"rank={rank} is out of range for X of shape {shape}: it must be between 1 and "
            f"min(n_features, n_samples) = {limit}."
        )
    return int(rank)
