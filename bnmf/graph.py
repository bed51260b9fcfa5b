"""Validate adjacency matrices for network NMF (:func:`bnmf.fit_network`) into an edge list.

The data layer of the network model: every input error of ``fit_network`` is raised here,
before anything is traced. A graph is kept in O(edges) form: the observed non-zero entries of
A (for an undirected graph only the upper triangle, i < j) and the unobserved pairs; every
other pair off the diagonal is an observed zero. The diagonal (self-loops) is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "LIKELIHOODS",
    "Graph",
    "NeighborGraph",
    "check_network_rank",
    "grid_graph",
    "knn_graph",
    "prepare_graph",
    "prepare_neighbors",
]

LIKELIHOODS = ("bernoulli", "poisson")


@dataclass(frozen=True)
class Graph:
    """A validated graph in edge-list form.

    Attributes
    ----------
    n_nodes : int
    directed : bool
    edge_row, edge_col : int64 arrays of shape (n_edges,)
        Observed non-zero entries A[row, col]; for an undirected graph row < col.
    edge_value : float64 array of shape (n_edges,)
        Their values (1 for a binary graph, counts for ``likelihood="poisson"``).
    hidden_row, hidden_col : int64 arrays of shape (n_hidden,)
        Unobserved pairs (mask False), off the diagonal; row < col when undirected.
    node_names : pandas.Index
    has_labels : bool
        Whether the input carried node labels (DataFrame, networkx graph).
    """

    n_nodes: int
    directed: bool
    edge_row: np.ndarray
    edge_col: np.ndarray
    edge_value: np.ndarray
    hidden_row: np.ndarray
    hidden_col: np.ndarray
    node_names: pd.Index
    has_labels: bool

    @property
    def n_edges(self) -> int:
        return int(self.edge_row.size)

    @property
    def n_pairs(self) -> int:
        """Number of modelled pairs (off the diagonal; unordered when undirected)."""
        n = self.n_nodes
        return n * (n - 1) if self.directed else n * (n - 1) // 2

    @property
    def n_observed_pairs(self) -> int:
        return self.n_pairs - int(self.hidden_row.size)


def _to_matrix(A, weight):
    """(square sparse or dense matrix, node labels or None) from the supported input types."""
    if hasattr(A, "adjacency") and hasattr(A, "is_directed"):  # a networkx graph
        import networkx as nx

        nodes = list(A.nodes)
        return nx.to_scipy_sparse_array(A, nodelist=nodes, weight=weight).tocoo(), pd.Index(nodes)
    if isinstance(A, pd.DataFrame):
        if A.shape[0] == A.shape[1] and not A.index.equals(A.columns):
            if set(A.index) == set(A.columns):
                A = A.loc[:, A.index]
            else:
                raise ValueError(
                    "A is a DataFrame whose row and column labels differ; an adjacency matrix "
                    "has the same nodes on both axes."
                )
        try:
            return A.to_numpy(dtype=np.float64), pd.Index(A.index)
        except (TypeError, ValueError) as err:
            raise TypeError(f"A must hold numbers: {err}") from err
    if sp.issparse(A):
        if not np.issubdtype(A.dtype, np.number) or np.issubdtype(A.dtype, np.complexfloating):
            raise TypeError(f"A must hold real numbers, got dtype {A.dtype}.")
        return sp.coo_matrix(A), None
    if isinstance(A, (str, bytes)) or not (hasattr(A, "__array__") or isinstance(A, list)):
        raise TypeError(
            "A must be a NumPy array, SciPy sparse matrix, pandas DataFrame or networkx graph, "
            f"got {type(A).__name__}."
        )
    arr = np.asarray(A)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"A must hold numbers, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise TypeError(f"A must hold real numbers, got dtype {arr.dtype}.")
    return arr.astype(np.float64), None


def _check_mask(mask, n: int, directed: bool) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask.toarray() if sp.issparse(mask) else mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean (True = observed pair), got dtype {mask.dtype}.")
    if mask.shape != (n, n):
        raise ValueError(f"mask has shape {mask.shape}, A has {(n, n)}; they must match.")
    if not directed and not (mask == mask.T).all():
        i, j = np.argwhere(mask != mask.T)[0]
        raise ValueError(
            f"mask is not symmetric (mask[{i}, {j}] != mask[{j}, {i}]); for directed=False a "
            "pair is observed or not as a whole."
        )
    return mask


def prepare_graph(A, *, directed: bool = False, likelihood: str = "bernoulli", mask=None,
                  weight: str | None = None) -> Graph:
    """Validate an adjacency matrix and return its :class:`Graph`.

    Parameters
    ----------
    A : array-like or sparse matrix of shape (n_nodes, n_nodes), DataFrame, or networkx graph
        A[i, j] > 0 where there is an edge from i to j. For ``directed=False`` A must be
        symmetric. NaN is allowed only at pairs that ``mask`` marks unobserved.
    directed : bool
    likelihood : {"bernoulli", "poisson"}
        "bernoulli" needs a binary A (0/1); "poisson" non-negative integer counts.
    mask : bool array of shape (n_nodes, n_nodes), optional
        True where the pair is observed; symmetric when undirected. The diagonal is ignored.
    weight : str, optional
        For a networkx graph: the edge attribute holding A's values (None: every edge is 1).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {list(LIKELIHOODS)}.")
    if not isinstance(directed, (bool, np.bool_)):
        raise TypeError(f"directed must be True or False, got {directed!r}.")
    M, labels = _to_matrix(A, weight)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(
            f"A must be a square adjacency matrix (nodes × nodes), got shape {M.shape}."
        )
    n = M.shape[0]
    if n < 2:
        raise ValueError(f"A must have at least 2 nodes, got {n}.")
    mask = _check_mask(mask, n, directed)
    coo = sp.coo_matrix(M)
    coo.sum_duplicates()
    row, col, val = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(float)
    keep = val != 0
    row, col, val = row[keep], col[keep], val[keep]
    nan = np.isnan(val)
    if nan.any():
        bad = ~np.zeros(nan.sum(), bool) if mask is None else mask[row[nan], col[nan]]
        if bad.any():
            i, j = row[nan][bad][0], col[nan][bad][0]
            raise ValueError(
                f"A has NaN at observed pair ({i}, {j}); mark unknown pairs unobserved with "
                "mask= (True = observed)."
            )
        row, col, val = row[~nan], col[~nan], val[~nan]
    if not np.isfinite(val).all():
        raise ValueError("A contains infinite values.")
    if (val < 0).any():
        k = int(np.argmin(val))
        raise ValueError(
            f"A has negative weights (min {val[k]:g} at ({row[k]}, {col[k]})); network NMF "
            "models non-negative edge counts."
        )
    loops = row == col
    if loops.any():
        raise ValueError(
            f"A has {int(loops.sum())} non-zero diagonal entries (self-loops, e.g. at node "
            f"{row[loops][0]}), which the model does not describe; set the diagonal to 0."
        )
    if mask is not None:
        observed = mask[row, col]
        row, col, val = row[observed], col[observed], val[observed]
    if not directed:
        upper = row < col
        S = sp.coo_matrix((val, (row, col)), shape=(n, n)).tocsr()
        diff = abs(S - S.T)
        if diff.nnz and diff.max() > 1e-12 * max(1.0, float(np.abs(val).max(initial=0))):
            rows, cols, gaps = sp.find(diff)
            i, j = rows[np.argmax(gaps)], cols[np.argmax(gaps)]
            raise ValueError(
                f"A is not symmetric (A[{i}, {j}] = {S[i, j]:g} but A[{j}, {i}] = {S[j, i]:g}); "
                "for an undirected graph A must equal its transpose. Use directed=True for a "
                "directed graph."
            )
        row, col, val = row[upper], col[upper], val[upper]
    if likelihood == "bernoulli" and (val != 1).any():
        k = int(np.argmax(val != 1))
        raise ValueError(
            f"A has values other than 0 and 1 (e.g. {val[k]:g} at ({row[k]}, {col[k]})); the "
            "'bernoulli' likelihood models whether an edge is there: pass (A > 0), or "
            "likelihood='poisson' for edge counts."
        )
    if likelihood == "poisson" and (val != np.round(val)).any():
        k = int(np.argmax(val != np.round(val)))
        raise ValueError(
            f"A has non-integer values (e.g. {val[k]:g} at ({row[k]}, {col[k]})); the "
            "'poisson' likelihood needs edge counts."
        )
    if row.size == 0:
        raise ValueError("A has no observed edges; there is nothing to factorize.")
    if mask is None:
        hidden_row = hidden_col = np.zeros(0, np.int64)
    else:
        hidden = ~mask
        np.fill_diagonal(hidden, False)
        if not directed:
            hidden = np.triu(hidden, 1)
        hidden_row, hidden_col = (idx.astype(np.int64) for idx in np.nonzero(hidden))
    order = np.lexsort((col, row))
    return Graph(
        n_nodes=n, directed=bool(directed),
        edge_row=row[order], edge_col=col[order], edge_value=val[order],
        hidden_row=hidden_row, hidden_col=hidden_col,
        node_names=labels if labels is not None else pd.RangeIndex(n),
        has_labels=labels is not None,
    )


def check_network_rank(rank, n_nodes: int) -> int:
    """``rank`` as an int after checking 1 ≤ rank ≤ n_nodes."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise TypeError(f"rank must be an integer, got {type(rank).__name__} {rank!r}.")
    if rank < 1 or rank > n_nodes:
        raise ValueError(
            f"rank={rank} is out of range for a graph of {n_nodes} nodes: it must be between 1 "
            f"and the number of nodes."
        )
    return int(rank)


# ------------------------------------------------------------- neighbour graphs of samples
@dataclass(frozen=True)
class NeighborGraph:
    """A validated, undirected, weighted graph on the samples (spatial smoothing of ``H``).

    Attributes
    ----------
    n_nodes : int
        Number of samples the graph is on.
    row, col : int32 arrays of shape (n_edges,)
        Each undirected edge once, row < col.
    weight : float64 array of shape (n_edges,)
        Its positive weight.
    """

    n_nodes: int
    row: np.ndarray
    col: np.ndarray
    weight: np.ndarray

    @property
    def n_edges(self) -> int:
        return int(self.row.size)


def prepare_neighbors(neighbors) -> NeighborGraph:
    """Validate a samples × samples neighbour graph into a :class:`NeighborGraph`.

    ``neighbors`` is a square, symmetric matrix of non-negative weights (SciPy sparse, dense,
    DataFrame or networkx graph); W[i, j] > 0 makes samples i and j neighbours. The diagonal
    (a sample with itself) carries no smoothing and must be 0."""
    try:
        M, _ = _to_matrix(neighbors, None)
    except TypeError as err:
        raise TypeError(str(err).replace("A must", "neighbors must")) from err
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"neighbors must be a square samples × samples matrix, got shape "
                         f"{M.shape}.")
    coo = sp.coo_matrix(M)
    coo.sum_duplicates()
    row, col, val = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(float)
    if not np.isfinite(val).all():
        raise ValueError("neighbors has NaN or infinite weights.")
    if (val < 0).any():
        k = int(np.argmin(val))
        raise ValueError(f"neighbors has negative weights (min {val[k]:g} at ({row[k]}, "
                         f"{col[k]})); smoothing weights must be non-negative.")
    keep = val != 0
    row, col, val = row[keep], col[keep], val[keep]
    if (row == col).any():
        i = int(row[row == col][0])
        raise ValueError(f"neighbors has non-zero diagonal entries (e.g. at sample {i}); a "
                         "sample is not its own neighbour: set the diagonal to 0.")
    S = sp.coo_matrix((val, (row, col)), shape=M.shape).tocsr()
    diff = abs(S - S.T)
    if diff.nnz and diff.max() > 1e-12 * max(1.0, float(val.max(initial=0.0))):
        rows, cols, gaps = sp.find(diff)
        i, j = rows[np.argmax(gaps)], cols[np.argmax(gaps)]
        raise ValueError(
            f"neighbors is not symmetric (W[{i}, {j}] = {S[i, j]:g} but W[{j}, {i}] = "
            f"{S[j, i]:g}); a neighbour graph is undirected: pass (W + W.T) / 2 or "
            "W.maximum(W.T).")
    upper = row < col
    if not upper.any():
        raise ValueError("neighbors has no edges; there is nothing to smooth over.")
    order = np.lexsort((col[upper], row[upper]))
    return NeighborGraph(int(M.shape[0]), row[upper][order].astype(np.int32),
                         col[upper][order].astype(np.int32), val[upper][order])


def knn_graph(coords, n_neighbors: int = 8) -> NeighborGraph:
    """The symmetrised k-nearest-neighbour graph (weights 1) of sample coordinates.

    Parameters
    ----------
    coords : array-like of shape (n_samples, d)
        Positions of the samples (pixels, spots), finite.
    n_neighbors : int
        Each sample is joined to its ``n_neighbors`` nearest others (Euclidean; ties by index);
        i and j are neighbours when either is among the other's nearest.
    """
    from scipy.spatial import cKDTree

    if isinstance(n_neighbors, (bool, np.bool_)) or not isinstance(n_neighbors,
                                                                   (int, np.integer)):
        raise TypeError(f"n_neighbors must be an integer, got {type(n_neighbors).__name__} "
                        f"{n_neighbors!r}.")
    try:
        points = np.asarray(coords, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"coords must be an array of numbers: {err}") from err
    if points.ndim == 1:
        points = points[:, None]
    if points.ndim != 2:
        raise ValueError(f"coords must have shape (n_samples, d), got {points.shape}.")
    if not np.isfinite(points).all():
        raise ValueError("coords has NaN or infinite values.")
    n = points.shape[0]
    if not 1 <= n_neighbors < n:
        raise ValueError(f"n_neighbors must lie in [1, n_samples - 1] = [1, {n - 1}], got "
                         f"{n_neighbors!r}.")
    _, idx = cKDTree(points).query(points, k=n_neighbors + 1)
    # each point's own index is dropped (with duplicate points it need not come first)
    others = idx != np.arange(n)[:, None]
    others &= np.cumsum(others, axis=1) <= n_neighbors
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)[others]
    cols = idx[others]
    A = sp.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n)).tocsr()
    return prepare_neighbors((A.maximum(A.T) > 0).astype(float))


def grid_graph(n_rows: int, n_cols: int, order: str = "C", diagonal: bool = False
               ) -> NeighborGraph:
    """The 4- (or with ``diagonal`` 8-) neighbour graph of an image's pixels, numbered in
    ``order`` ("C": row-major, "F": column-major, as MATLAB images are stored)."""
    index = np.arange(n_rows * n_cols).reshape((n_rows, n_cols), order=order)
    pairs = [(index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :])]
    if diagonal:
        pairs += [(index[:-1, :-1], index[1:, 1:]), (index[:-1, 1:], index[1:, :-1])]
    row = np.concatenate([a.ravel() for a, _ in pairs])
    col = np.concatenate([b.ravel() for _, b in pairs])
    A = sp.coo_matrix((np.ones(row.size), (row, col)), shape=(index.size,) * 2)
    return prepare_neighbors(A + A.T)
