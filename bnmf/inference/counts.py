"""The data side of the Poisson updates, dense or sparse, behind one small set of operations.

Multiplicative MAP updates and CAVI for the Poisson–gamma model touch the data only through

* ``ratio_right(c, A, B) = (M ∘ X / AB) Bᵀ`` and ``ratio_left(c, A, B) = Aᵀ (M ∘ X / AB)``,
* ``mask_right(c, B) = M Bᵀ`` and ``mask_left(c, A) = Aᵀ M``,
* ``sum_x_log_rate(c, A, B) = Σ M ∘ X ∘ log AB`` and ``sum_rate(c, A, B) = Σ M ∘ AB``,

with A (n_features, rank), B (rank, n_samples) and M the mask. :class:`DenseCounts` computes
them with matrix products; :class:`SparseCounts` holds only the non-zero observed counts (COO)
and the unobserved entries, and costs O((nnz + n_unobserved) · rank) plus
O((n_features + n_samples) · rank): a zero count adds nothing to ``X/AB``, and the sum of the
rate over all entries factorizes into column sums of A times row sums of B, from which the
(few) unobserved entries are subtracted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.tree_util import register_pytree_node_class
from scipy.special import gammaln

__all__ = [
    "DenseCounts",
    "SparseCounts",
    "log_factorial_sum",
    "mask_left",
    "mask_right",
    "ratio_left",
    "ratio_right",
    "sparse_counts",
    "sum_rate",
    "sum_x_log_rate",
    "to_scipy",
]


@register_pytree_node_class
class DenseCounts:
    """X (n_features, n_samples) and its mask as floats (``weight``), None when all observed."""

    def __init__(self, X, weight=None):
        self.X, self.weight = X, weight

    @property
    def shape(self):
        return self.X.shape

    def tree_flatten(self):
        return (self.X, self.weight), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)


@register_pytree_node_class
class SparseCounts:
    """Non-zero observed counts in COO form plus the unobserved entries.

    Attributes
    ----------
    rows, cols : int32 arrays of shape (nnz,)
    values : float array of shape (nnz,)
    hidden_rows, hidden_cols : int32 arrays of shape (n_unobserved,)
    shape : (n_features, n_samples), static
    """

    def __init__(self, rows, cols, values, hidden_rows, hidden_cols, shape):
        self.rows, self.cols, self.values = rows, cols, values
        self.hidden_rows, self.hidden_cols = hidden_rows, hidden_cols
        self.shape = tuple(int(n) for n in shape)

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def fully_observed(self) -> bool:
        return self.hidden_rows.shape[0] == 0

    def tree_flatten(self):
        return (self.rows, self.cols, self.values, self.hidden_rows, self.hidden_cols), self.shape

    @classmethod
    def tree_unflatten(cls, shape, children):
        return cls(*children, shape)


def to_scipy(c: SparseCounts) -> sp.coo_matrix:
    """The observed non-zero counts as a SciPy COO matrix (float64), on the host."""
    return sp.coo_matrix((np.asarray(c.values, np.float64), (np.asarray(c.rows), np.asarray(c.cols))),
                         shape=c.shape)


def sparse_counts(X, mask=None, dtype="float32", hidden=None) -> SparseCounts:
    """A :class:`SparseCounts` from a SciPy sparse matrix (features × samples), never densified.

    ``mask`` (True = observed) may be dense or sparse; only its False entries are kept. Or give
    the unobserved entries directly as ``hidden=(rows, cols)`` (as :class:`bnmf.data.Data`
    holds them), never building a dense mask. Counts at unobserved entries are dropped, as are
    explicit zeros.
    """
    coo = sp.coo_matrix(X)
    coo.sum_duplicates()
    rows, cols, values = coo.row, coo.col, coo.data
    hidden_rows = hidden_cols = np.zeros(0, np.int64)
    if mask is not None:
        hidden = sp.coo_matrix(np.logical_not(mask.toarray() if sp.issparse(mask) else mask))
        hidden = (hidden.row, hidden.col)
    if hidden is not None:
        hidden_rows, hidden_cols = hidden
        if hidden_rows.size:  # drop counts at unobserved entries, by linear index
            n = coo.shape[1]
            observed = ~np.isin(rows.astype(np.int64) * n + cols,
                                hidden_rows.astype(np.int64) * n + hidden_cols)
            rows, cols, values = rows[observed], cols[observed], values[observed]
    keep = values != 0
    as_index = lambda a: jnp.asarray(np.asarray(a, np.int32))
    return SparseCounts(as_index(rows[keep]), as_index(cols[keep]),
                        jnp.asarray(values[keep], dtype), as_index(hidden_rows),
                        as_index(hidden_cols), coo.shape)


def log_factorial_sum(counts) -> float:
    """Σ M ∘ log X! in float64, computed once on the host (it is a constant of the fit)."""
    if isinstance(counts, SparseCounts):
        return float(np.sum(gammaln(np.asarray(counts.values, np.float64) + 1.0)))
    X = np.asarray(counts.X)
    weight = None if counts.weight is None else np.asarray(counts.weight, np.float64).ravel()
    if X.size and X.max() <= 1e6 and np.array_equal(X, np.round(X)):
        # integer counts: Σ log X! from how often each count occurs (one pass, no gammaln of
        # every entry; 10x faster on 2,000 × 10,000)
        frequency = np.bincount(X.astype(np.int64).ravel(), weights=weight)
        return float(frequency @ gammaln(np.arange(frequency.size, dtype=np.float64) + 1.0))
    terms = gammaln(np.asarray(X, np.float64) + 1.0)
    if weight is not None:
        terms = terms.ravel() * weight
    return float(terms.sum())


def _rate_at(A, B, rows, cols):
    """(AB) at the given entries, floored so that X / AB and log AB stay finite."""
    rate = jnp.sum(A[rows] * B.T[cols], axis=1)
    return jnp.maximum(rate, jnp.finfo(rate.dtype).tiny)


def _dense_ratio(X, weight, A, B):
    """M ∘ X / AB for dense X (rows, n_samples), A (rows, rank); ``weight`` is M or None."""
    X = X if weight is None else weight * X
    return X / jnp.maximum(A @ B, jnp.finfo(X.dtype).tiny)


# Dense X / AB is formed a block of rows at a time so that the block (about this many entries,
# 10 MB in float32) stays in cache between its product and its quotient: the update is memory-
# bound, and on 2 CPU cores this is 1.8x faster per iteration at 2,000 x 10,000 and 1.5x at
# 5,000 x 5,000 than forming the whole quotient. Smaller X is done in one piece.
BLOCK_ENTRIES = 2_500_000


def _row_block(shape) -> int | None:
    """Rows per block for the dense ratio products, or None for one piece."""
    n_rows, n_cols = shape
    if n_rows * n_cols <= 2 * BLOCK_ENTRIES:
        return None
    return int(min(n_rows, max(8, BLOCK_ENTRIES // n_cols)))


def _block_slices(c: DenseCounts, A, start, size):
    take = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, start, size, 0)
    return take(c.X), take(c.weight), take(A)


def _dense_ratio_right(c: DenseCounts, A, B):
    size = _row_block(c.X.shape)
    if size is None:
        return _dense_ratio(c.X, c.weight, A, B) @ B.T
    n_rows = c.X.shape[0]

    def block(r, out):
        start = jnp.minimum(r * size, n_rows - size)  # the last block overlaps the one before
        X, weight, A_rows = _block_slices(c, A, start, size)
        rows = _dense_ratio(X, weight, A_rows, B) @ B.T
        return jax.lax.dynamic_update_slice_in_dim(out, rows, start, 0)

    n_blocks = -(-n_rows // size)
    return jax.lax.fori_loop(0, n_blocks, block, jnp.zeros((n_rows, B.shape[0]), A.dtype))


def _sum_over_row_blocks(c: DenseCounts, A, term, zero):
    """Σ over row blocks of ``term(X_rows, weight_rows, A_rows)``; in one piece for small X.

    The last block overlaps the one before; its rows already summed get X = 0, which makes
    every term here (built on X / AB or X log AB) vanish for them.
    """
    size = _row_block(c.X.shape)
    if size is None:
        return term(c.X, c.weight, A)
    n_rows = c.X.shape[0]

    def block(r, total):
        start = jnp.minimum(r * size, n_rows - size)
        X, weight, A_rows = _block_slices(c, A, start, size)
        fresh = (start + jnp.arange(size)) >= r * size
        return total + term(jnp.where(fresh[:, None], X, 0.0), weight, A_rows)

    n_blocks = -(-n_rows // size)
    return jax.lax.fori_loop(0, n_blocks, block, zero)


def _dense_ratio_left(c: DenseCounts, A, B):
    return _sum_over_row_blocks(c, A, lambda X, weight, A_rows: A_rows.T @ _dense_ratio(
        X, weight, A_rows, B), jnp.zeros(B.shape, A.dtype))


def ratio_right(c, A, B):
    """(M ∘ X / AB) Bᵀ, shape (n_features, rank)."""
    if isinstance(c, DenseCounts):
        return _dense_ratio_right(c, A, B)
    Bt = B.T[c.cols]
    ratio = c.values / jnp.maximum(jnp.sum(A[c.rows] * Bt, axis=1), jnp.finfo(A.dtype).tiny)
    return jax.ops.segment_sum(ratio[:, None] * Bt, c.rows, num_segments=c.shape[0])


def ratio_left(c, A, B):
    """Aᵀ (M ∘ X / AB), shape (rank, n_samples)."""
    if isinstance(c, DenseCounts):
        return _dense_ratio_left(c, A, B)
    Ar = A[c.rows]
    ratio = c.values / jnp.maximum(jnp.sum(Ar * B.T[c.cols], axis=1), jnp.finfo(A.dtype).tiny)
    return jax.ops.segment_sum(ratio[:, None] * Ar, c.cols, num_segments=c.shape[1]).T


def mask_right(c, B):
    """M Bᵀ, shape (n_features, rank)."""
    full = jnp.broadcast_to(B.sum(axis=1), (c.shape[0], B.shape[0]))
    if isinstance(c, DenseCounts):
        return full if c.weight is None else c.weight @ B.T
    if c.fully_observed:
        return full
    return full - jax.ops.segment_sum(B.T[c.hidden_cols], c.hidden_rows, num_segments=c.shape[0])


def mask_left(c, A):
    """Aᵀ M, shape (rank, n_samples)."""
    full = jnp.broadcast_to(A.sum(axis=0)[:, None], (A.shape[1], c.shape[1]))
    if isinstance(c, DenseCounts):
        return full if c.weight is None else A.T @ c.weight
    if c.fully_observed:
        return full
    return full - jax.ops.segment_sum(A[c.hidden_rows], c.hidden_cols,
                                      num_segments=c.shape[1]).T


def sum_x_log_rate(c, A, B):
    """Σ M ∘ X ∘ log AB."""
    if isinstance(c, DenseCounts):
        return _dense_sum_x_log_rate(c, A, B)
    return jnp.sum(c.values * jnp.log(_rate_at(A, B, c.rows, c.cols)))


def _x_log_rate(X, weight, A, B):
    X = X if weight is None else weight * X
    return jnp.sum(X * jnp.log(jnp.maximum(A @ B, jnp.finfo(X.dtype).tiny)))


def _dense_sum_x_log_rate(c: DenseCounts, A, B):
    return _sum_over_row_blocks(c, A, lambda X, weight, A_rows: _x_log_rate(
        X, weight, A_rows, B), jnp.zeros((), A.dtype))


def sum_rate(c, A, B):
    """Σ M ∘ AB."""
    total = jnp.sum(A.sum(axis=0) * B.sum(axis=1))
    if isinstance(c, DenseCounts):
        return total if c.weight is None else jnp.sum(c.weight * (A @ B))
    if c.fully_observed:
        return total
    return total - jnp.sum(jnp.sum(A[c.hidden_rows] * B.T[c.hidden_cols], axis=1))
