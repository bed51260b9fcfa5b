r"""Network NMF: overlapping communities in a graph, with posterior uncertainty.

:func:`fit_network` factorizes an adjacency matrix as :math:`A \approx W W^\top` (undirected;
W nodes × communities) or :math:`A \approx U V^\top` (directed; out- and in-memberships) under
the edge-partition model of :mod:`bnmf.models.network`, and returns a :class:`NetworkFit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from .graph import Graph, check_network_rank, prepare_graph
from .inference.common import numerics
from .inference.network import (
    NUTS_MAX_NODES,
    fit_network_gibbs,
    fit_network_map,
    fit_network_nuts,
)
from .models.network import NetworkGamma, graph_arrays
from .options import check_prob
from .posterior import (
    PosteriorMetadata,
    _bnmf_version,
    _jsonable,
    align_permutation,
    arviz_group,
    register_result_kind,
    to_arviz,
    write_netcdf,
)

__all__ = ["NETWORK_METHODS", "NetworkFit", "fit_network"]

NETWORK_METHODS = ("gibbs", "map", "nuts")
DRAW_DIMS = ("chain", "draw")
SITE_DIMS = ("node", "component")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}.")
    return int(value)


def fit_network(A, rank: int, directed: bool = False, *, likelihood: str = "bernoulli",
                method: str | None = None, seed: int = 0, mask=None, weight: str | None = None,
                a: float = 1.0, rate: float | None = None, dtype: str = "float32",
                num_warmup: int = 500, num_samples: int = 500, num_chains: int = 2,
                thin: int = 1, restarts: int = 8, max_iter: int = 3000) -> NetworkFit:
    r"""Fit overlapping community memberships to a graph.

    .. math::

        W_{ik} \sim \mathrm{Gamma}(a, b), \qquad
        P(A_{ij} = 1) = 1 - \exp\Big(-\sum_k W_{ik} W_{jk}\Big) \quad (i < j)

    (``likelihood="bernoulli"``, the edge-partition / BigCLAM link; ``"poisson"``:
    :math:`A_{ij} \sim \mathrm{Poisson}(\sum_k W_{ik} W_{jk})` for edge counts). With
    ``directed=True``, out-memberships U and in-memberships V: rate
    :math:`\sum_k U_{ik} V_{jk}` for every ordered pair :math:`i \ne j`. Every sweep costs
    O(edges · rank + nodes · rank): only edges carry latent counts.

    Parameters
    ----------
    A : array-like, SciPy sparse matrix or DataFrame of shape (n_nodes, n_nodes), or a networkx
        graph. Symmetric when ``directed=False``; no self-loops; 0/1 for "bernoulli",
        non-negative integers for "poisson".
    rank : int
        Number of communities, 1 ≤ rank ≤ n_nodes.
    directed : bool
    likelihood : {"bernoulli", "poisson"}
    method : {"gibbs", "map", "nuts"}, optional
        "gibbs" (default): exact Gibbs sampling with latent edge counts, chains started at the
        MAP. "map": ECM from ``restarts`` random starts (best kept). "nuts": NumPyro NUTS on the
        dense model, the reference for graphs of at most 300 nodes.
    seed : int
    mask : bool array of shape (n_nodes, n_nodes), optional
        True where a pair is observed; unobserved pairs do not enter the likelihood (held-out
        links). Symmetric when undirected.
    weight : str, optional
        For a networkx graph, the edge attribute holding A's values (None: every edge is 1).
    a, rate : float
        Gamma shape and rate of the memberships; ``rate=None`` sets it from the edge density.
    dtype : {"float32", "float64"}
    num_warmup, num_samples, num_chains, thin : int
        Sampler settings ("gibbs", "nuts"); ``thin`` sweeps per kept Gibbs draw.
    restarts, max_iter : int
        ECM starts and sweeps (the MAP, which also starts the samplers).

    Returns
    -------
    NetworkFit
    """
    if method is None:
        method = "gibbs"
    if method not in NETWORK_METHODS:
        raise ValueError(
            f"unknown method {method!r} for fit_network; choose one of {list(NETWORK_METHODS)}.")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    settings = {name: _check_positive_int(name, value) for name, value in [
        ("num_samples", num_samples), ("num_chains", num_chains), ("thin", thin),
        ("restarts", restarts), ("max_iter", max_iter)]}
    if isinstance(num_warmup, bool) or not isinstance(num_warmup, (int, np.integer)) \
            or num_warmup < 0:
        raise ValueError(f"num_warmup must be a non-negative integer, got {num_warmup!r}.")
    graph = prepare_graph(A, directed=directed, likelihood=likelihood, mask=mask, weight=weight)
    rank = check_network_rank(rank, graph.n_nodes)
    if method == "nuts" and graph.n_nodes > NUTS_MAX_NODES:
        raise ValueError(
            f"method='nuts' evaluates every pair of nodes and is meant for graphs of at most "
            f"{NUTS_MAX_NODES} nodes (this one has {graph.n_nodes}); use method='gibbs'.")
    model = NetworkGamma(likelihood=likelihood, directed=bool(directed), a=a, rate=rate)
    model = model.resolve(graph, rank)
    jdtype = jnp.float64 if dtype == "float64" else jnp.float32
    with numerics(dtype):
        g = graph_arrays(graph, jdtype)
        raw = fit_network_map(model, g, rank, seed=seed, restarts=settings["restarts"],
                              max_iter=settings["max_iter"], dtype=jdtype)
        start = {name: jnp.asarray(value[0, 0], jdtype) for name, value in raw.draws.items()}
        sampler = dict(seed=seed, num_warmup=int(num_warmup),
                       num_samples=settings["num_samples"], num_chains=settings["num_chains"])
        if method == "gibbs":
            raw = fit_network_gibbs(model, g, rank, start=start, thin=settings["thin"],
                                    **sampler)
        elif method == "nuts":
            raw = fit_network_nuts(model, graph, rank, start=start, dtype=jdtype, **sampler)
    meta = {"method": method, "seed": int(seed), "dtype": dtype}
    return NetworkFit(build_network_idata(raw, graph, model, rank, meta))


# ------------------------------------------------------------------------ draws to idata
def normalize_directed(U, V):
    """Directed memberships are determined only up to U_k c, V_k / c per community: fix c so
    that each community's out- and in-memberships have equal sums (U V^T is unchanged)."""
    scale = np.sqrt(V.sum(axis=-2, keepdims=True) / np.maximum(U.sum(axis=-2, keepdims=True),
                                                               1e-300))
    return U * scale, V / scale


def align_memberships(draws: dict, sites: tuple) -> dict:
    """Permute communities of every draw to match the first chain's mean (Hungarian matching
    on cosine similarity of the memberships stacked over ``sites``)."""
    stacked = np.concatenate([draws[name] for name in sites], axis=-2)
    n_chains, n_draws, _, rank = stacked.shape
    reference = stacked[0].mean(axis=0)
    perms = np.empty((n_chains, n_draws, rank), dtype=int)
    for c in range(n_chains):
        chain_perm = align_permutation(stacked[c].mean(axis=0), reference)
        for d in range(n_draws):
            perms[c, d] = chain_perm[align_permutation(stacked[c, d][:, chain_perm], reference)]
    index = np.broadcast_to(perms[:, :, None, :], draws[sites[0]].shape)
    return {name: np.take_along_axis(draws[name], index, axis=-1) for name in sites}


def build_network_idata(raw, graph: Graph, model: NetworkGamma, rank: int, meta: dict):
    """ArviZ container: aligned membership draws (chain, draw, node, component), the graph's
    edges and unobserved pairs, and the trace."""
    draws = {name: np.asarray(raw.draws[name]) for name in model.sites}
    if model.directed:
        draws["W_out"], draws["W_in"] = normalize_directed(draws["W_out"], draws["W_in"])
    if meta["method"] != "map":
        draws = align_memberships(draws, model.sites)
    attrs = {
        "result_kind": "network",
        "model": "network",
        "model_params": json.dumps({"likelihood": model.likelihood, "directed": model.directed,
                                    "a": float(model.a), "rate": float(model.rate)}),
        "method": meta["method"],
        "seed": meta["seed"],
        "rank": int(rank),
        "n_nodes": int(graph.n_nodes),
        "dtype": meta["dtype"],
        "inference_info": json.dumps(_jsonable(raw.info or {})),
        "has_labels": int(graph.has_labels),
        "bnmf_version": _bnmf_version(),
        "inference_library": "numpyro",
    }
    first = draws[model.sites[0]]
    coords = {"chain": np.arange(first.shape[0]), "draw": np.arange(first.shape[1]),
              "node": graph.node_names.to_numpy(), "component": np.arange(rank)}
    posterior = xr.Dataset({name: (DRAW_DIMS + SITE_DIMS, value)
                            for name, value in draws.items()}, coords=coords, attrs=attrs)
    observed = xr.Dataset({"edge_row": ("edge", graph.edge_row),
                           "edge_col": ("edge", graph.edge_col),
                           "edge_value": ("edge", graph.edge_value)})
    constant = xr.Dataset({"hidden_row": ("hidden", graph.hidden_row),
                           "hidden_col": ("hidden", graph.hidden_col)})
    stats = xr.Dataset({"loss": (("iteration",), np.asarray(raw.losses, np.float64))})
    return to_arviz({"posterior": posterior, "observed_data": observed,
                     "constant_data": constant, "sample_stats": stats})


# ------------------------------------------------------------------------------ the result
@dataclass(frozen=True)
class NetworkFit(PosteriorMetadata):
    """Fitted community memberships of a graph (build with :func:`fit_network`; reload with
    :func:`bnmf.load`).

    Attributes
    ----------
    idata : arviz.InferenceData (ArviZ 0.x) or xarray.DataTree (ArviZ ≥ 1)
        ``posterior``: ``W`` (chain, draw, node, component), or ``W_out`` and ``W_in`` for a
        directed graph (normalized so each community's out- and in-memberships have equal
        sums), components aligned across draws; ``observed_data``: the edges (``edge_row``,
        ``edge_col``, ``edge_value``; i < j when undirected); ``constant_data``: unobserved
        pairs; ``sample_stats``: ``loss`` (negative log joint per ECM sweep or per draw).
    """

    idata: object

    @property
    def model(self) -> NetworkGamma:
        """The model with its resolved (data-driven) rate."""
        return NetworkGamma(**json.loads(self._attrs["model_params"]))

    @property
    def directed(self) -> bool:
        return self.model.directed

    @property
    def nodes(self) -> pd.Index:
        return pd.Index(self._posterior["node"].values)

    @property
    def num_draws(self) -> int:
        shape = self._draws(self.model.sites[0]).shape
        return shape[0] * shape[1]

    def _draws(self, name: str) -> np.ndarray:
        return self._posterior[name].values

    def _flat(self, name: str) -> np.ndarray:
        value = self._draws(name)
        return value.reshape((-1,) + value.shape[2:])

    def _labelled(self, value: np.ndarray):
        if not int(self._attrs["has_labels"]):
            return value
        return pd.DataFrame(value, index=self.nodes, columns=pd.Index(np.arange(self.rank)))

    def _site(self, which: str | None) -> str:
        if not self.directed:
            if which not in (None, "W"):
                raise ValueError(f"an undirected fit has one membership matrix W; got "
                                 f"which={which!r}.")
            return "W"
        sites = {"out": "W_out", "in": "W_in", "W_out": "W_out", "W_in": "W_in"}
        if which not in sites:
            raise ValueError(f"a directed fit has out- and in-memberships: which='out' or "
                             f"'in', got {which!r}.")
        return sites[which]

    # ---- summaries
    @property
    def W(self):
        """Posterior mean memberships (n_nodes, rank) of an undirected fit."""
        if self.directed:
            raise AttributeError("a directed fit has W_out and W_in, not W.")
        return self._labelled(self._flat("W").mean(axis=0))

    @property
    def W_out(self):
        """Posterior mean out-memberships (n_nodes, rank) of a directed fit."""
        return self._labelled(self._flat(self._site("out")).mean(axis=0))

    @property
    def W_in(self):
        """Posterior mean in-memberships (n_nodes, rank) of a directed fit."""
        return self._labelled(self._flat(self._site("in")).mean(axis=0))

    def _check_spread(self):
        if self.num_draws < 2:
            raise ValueError(
                f"a fit with method={self.method!r} is a point estimate and has no posterior "
                "spread; fit with method='gibbs' or 'nuts'.")

    def interval(self, prob: float = 0.9) -> dict:
        """Equal-tailed credible intervals of the memberships: ``{site: (lower, upper)}``, each
        (n_nodes, rank)."""
        prob = check_prob(prob)
        self._check_spread()
        tails = [(1 - prob) / 2, (1 + prob) / 2]
        result = {}
        for name in self.model.sites:
            lower, upper = np.quantile(self._flat(name), tails, axis=0)
            result[name] = (self._labelled(lower), self._labelled(upper))
        return result

    def _memberships(self, which) -> np.ndarray:
        """Per-draw memberships (draws, n_nodes, rank) used for community summaries; a
        directed fit without ``which`` uses U + V (a node's part in a community either way)."""
        if self.directed and which is None:
            return self._flat("W_out") + self._flat("W_in")
        return self._flat(self._site(which))

    def shares(self, which: str | None = None) -> np.ndarray:
        """Per-draw membership shares W_ik / Σ_l W_il, shape (draws, n_nodes, rank)."""
        W = self._memberships(which)
        return W / np.maximum(W.sum(axis=-1, keepdims=True), 1e-300)

    def assignments(self, which: str | None = None) -> pd.Series:
        """Each node's main community: the argmax of its posterior mean share."""
        top = self.shares(which).mean(axis=0).argmax(axis=1)
        return pd.Series(top, index=self.nodes, name="community")

    def assignment_probability(self, which: str | None = None) -> pd.Series:
        """Posterior probability that a node's largest membership is its main community."""
        shares = self.shares(which)
        top = shares.mean(axis=0).argmax(axis=1)
        hit = shares.argmax(axis=-1) == top[None, :]
        return pd.Series(hit.mean(axis=0), index=self.nodes, name="probability")

    def ambiguous(self, prob: float = 0.9, which: str | None = None) -> list:
        """Nodes whose main community is uncertain: the posterior probability that their
        largest membership is the main one is below (1 + prob) / 2. With two communities this
        is exactly "the equal-tailed ``prob`` interval of the node's share spans 1/2", i.e. its
        membership interval spans both communities."""
        prob = check_prob(prob)
        self._check_spread()
        p = self.assignment_probability(which)
        return list(p.index[p.to_numpy() < (1 + prob) / 2])

    def default_threshold(self) -> float:
        """BigCLAM's membership threshold δ = sqrt(−log(1 − ε)), ε the edge density: two
        nodes with membership δ in one community are linked with probability ε by it alone."""
        observed = arviz_group(self.idata, "observed_data")
        constant = arviz_group(self.idata, "constant_data")
        n = int(self._attrs["n_nodes"])
        pairs = (n * (n - 1) if self.directed else n * (n - 1) // 2) - constant["hidden_row"].size
        density = min(float(observed["edge_value"].size) / pairs, 1 - 1e-12)
        return float(np.sqrt(-np.log1p(-density)))

    def communities(self, threshold: float | None = None, prob: float = 0.9,
                    which: str | None = None) -> dict:
        """Overlapping communities: ``{community: [nodes]}``, a node belonging to community k
        when P(W_ik > threshold | A) ≥ ``prob`` (for a MAP fit: W_ik > threshold).

        ``threshold`` defaults to :meth:`default_threshold`. A node may be in several
        communities or in none.
        """
        if not 0 < prob <= 1:
            raise ValueError(f"prob must lie in (0, 1], got {prob!r}.")
        threshold = self.default_threshold() if threshold is None else float(threshold)
        if not threshold >= 0:
            raise ValueError(f"threshold must be non-negative, got {threshold!r}.")
        W = self._memberships(which)
        member = (W > threshold).mean(axis=0) >= prob
        return {k: list(self.nodes[member[:, k]]) for k in range(self.rank)}

    def edge_probability(self) -> np.ndarray:
        """Posterior mean of P(A_ij ≥ 1) for every pair, (n_nodes, n_nodes); the diagonal is
        NaN. O(draws · n² · rank): for link prediction on graphs of moderate size."""
        U_draws, V_draws = (self._flat(name) for name in
                            (("W_out", "W_in") if self.directed else ("W", "W")))
        total = np.zeros((U_draws.shape[1],) * 2)
        for U, V in zip(U_draws, V_draws):
            total += -np.expm1(-(U @ V.T))
        total /= U_draws.shape[0]
        np.fill_diagonal(total, np.nan)
        return total

    def save(self, path) -> None:
        """Write the fit to a netCDF-4 file; :func:`bnmf.load` reads it back exactly."""
        write_netcdf(self.idata, path)

    def __repr__(self) -> str:
        return (f"<bnmf.NetworkFit likelihood={self.model.likelihood!r} "
                f"directed={self.directed} method={self.method!r} rank={self.rank} "
                f"nodes={int(self._attrs['n_nodes'])} draws={self.num_draws}>")


register_result_kind("network", NetworkFit)
