r"""Network NMF: overlapping communities from an adjacency matrix (the edge-partition model).

Undirected graphs (Zhou 2015, "Infinite edge partition models for overlapping community
detection and link prediction"; the Bernoulli–Poisson link of BigCLAM, Yang & Leskovec 2013):

.. math::

    W_{ik} \sim \mathrm{Gamma}(a, b), \qquad
    m_{ij} \sim \mathrm{Poisson}\Big(\sum_k W_{ik} W_{jk}\Big), \qquad
    A_{ij} = \mathbf 1[m_{ij} \ge 1] \quad (i < j),

so :math:`P(A_{ij} = 1) = 1 - \exp(-\sum_k W_{ik} W_{jk})`; with ``likelihood="poisson"``
:math:`A_{ij} = m_{ij}` itself is observed (edge counts). Directed graphs use out- and
in-memberships, :math:`m_{ij} \sim \mathrm{Poisson}(\sum_k U_{ik} V_{jk})` for
:math:`i \ne j`. The diagonal is not modelled.

Everything here is a pure function of arrays. The latent counts make the model conditionally
conjugate: splitting :math:`m_{ij}` over communities,
:math:`(m_{ijk})_k \sim \mathrm{Mult}(m_{ij}, W_{ik} W_{jk} / \sum_l W_{il} W_{jl})`, gives

.. math::

    W_{ik} \mid \cdot \sim \mathrm{Gamma}\Big(a + \sum_j m_{ijk},\;
        b + \sum_{j \ne i,\ (i,j)\ \mathrm{observed}} W_{jk}\Big),

which depends on the other nodes only through column sums. Only edges (non-zero A) carry
latent counts, so a sweep costs O(edges · rank + nodes · rank). For an undirected graph the
nodes are updated one after another (W_i's conditional involves every other W_j); for a
directed graph all out-memberships given the in-memberships at once, then the reverse.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax
from jax.scipy.special import gammaln

from ..graph import LIKELIHOODS, Graph
from . import sampling
from .base import hyperparameter_pytree

__all__ = [
    "GraphArrays",
    "NetworkGamma",
    "dense_pairs",
    "edge_rates",
    "factors",
    "graph_arrays",
    "log_joint",
    "node_conditional",
    "sample_ztp",
    "sweep",
]


class GraphArrays(NamedTuple):
    """A :class:`bnmf.graph.Graph` as device arrays (a pytree).

    ``partners`` (n_nodes, D) lists each node's unobserved partners, padded with ``n_nodes``
    (an extra all-zero row of the factors), for the sequential undirected sweep; its first
    dimension carries the number of nodes into traced code. ``unit_edge`` repeats each edge's
    index as often as its count (Σ A entries): the Poisson likelihood's Gibbs step assigns each
    unit of count to a community.
    """

    edge_row: jax.Array
    edge_col: jax.Array
    edge_value: jax.Array
    hidden_row: jax.Array
    hidden_col: jax.Array
    partners: jax.Array
    unit_edge: jax.Array

    @property
    def n_nodes(self) -> int:
        return self.partners.shape[0]


def graph_arrays(graph: Graph, dtype=jnp.float32) -> GraphArrays:
    """Device arrays of ``graph``; ``partners`` is built for undirected graphs only."""
    n = graph.n_nodes
    if graph.directed or graph.hidden_row.size == 0:
        partners = np.zeros((n, 0), np.int32)
    else:
        both = np.concatenate([graph.hidden_row, graph.hidden_col])
        other = np.concatenate([graph.hidden_col, graph.hidden_row])
        degree = np.bincount(both, minlength=n)
        partners = np.full((n, int(degree.max())), n, np.int32)
        order = np.argsort(both, kind="stable")
        starts = np.concatenate([[0], np.cumsum(degree)[:-1]])
        slot = np.arange(both.size) - starts[both[order]]
        partners[both[order], slot] = other[order]
    as_int = lambda v: jnp.asarray(v, jnp.int32)
    units = np.repeat(np.arange(graph.n_edges), np.round(graph.edge_value).astype(np.int64))
    return GraphArrays(as_int(graph.edge_row), as_int(graph.edge_col),
                       jnp.asarray(graph.edge_value, dtype), as_int(graph.hidden_row),
                       as_int(graph.hidden_col), jnp.asarray(partners), as_int(units))


def dense_pairs(graph: Graph):
    """Every modelled pair (i < j, or i ≠ j when directed) with its value and observed flag:
    (row, col, value, observed), each of shape (n_pairs,). O(n²): for NUTS and tests."""
    n = graph.n_nodes
    A = np.zeros((n, n))
    A[graph.edge_row, graph.edge_col] = graph.edge_value
    observed = np.ones((n, n), bool)
    observed[graph.hidden_row, graph.hidden_col] = False
    if graph.directed:
        row, col = np.nonzero(~np.eye(n, dtype=bool))
    else:
        row, col = np.triu_indices(n, 1)
    return row, col, A[row, col], observed[row, col]


@hyperparameter_pytree
@dataclass(frozen=True)
class NetworkGamma:
    r"""Edge-partition network NMF with gamma priors on the memberships.

    .. math::

        W_{ik} \sim \mathrm{Gamma}(a, b), \quad
        A_{ij} \sim \mathrm{Bernoulli}\big(1 - e^{-\sum_k W_{ik} W_{jk}}\big)
        \ \text{or}\ \mathrm{Poisson}\big(\textstyle\sum_k W_{ik} W_{jk}\big), \quad i < j

    (directed: ``W_out`` and ``W_in`` with rate :math:`\sum_k U_{ik} V_{jk}`, :math:`i \ne j`).
    Left as ``None`` the rate ``b`` is set from the data so that the prior mean rate of a pair,
    :math:`K (a/b)^2`, equals the observed one: :math:`-\log(1 - \rho)` for edge density
    :math:`\rho` (Bernoulli), the mean count per pair (Poisson).

    Parameters
    ----------
    likelihood : {"bernoulli", "poisson"}
    directed : bool
    a : float
        Gamma shape of the memberships (1 = exponential; smaller = sparser memberships).
    rate : float, optional
        Gamma rate b; None sets it from the data.
    """

    likelihood: str = "bernoulli"
    directed: bool = False
    a: float = 1.0
    rate: float | None = None

    name = "network"

    def __post_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r}; choose one of {list(LIKELIHOODS)}.")
        for field in ("a", "rate"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"NetworkGamma.{field} must be positive, got {value!r}.")

    @property
    def sites(self) -> tuple[str, ...]:
        """Names of the membership sites, each of shape (n_nodes, rank)."""
        return ("W_out", "W_in") if self.directed else ("W",)

    def pair_mean_rate(self, graph: Graph) -> float:
        """The mean Poisson rate of an observed pair that matches the data."""
        per_pair = graph.edge_value.sum() / graph.n_observed_pairs
        if self.likelihood == "bernoulli":
            return -math.log1p(-min(per_pair, 1 - 1e-6))
        return float(per_pair)

    def resolve(self, graph: Graph, rank: int) -> NetworkGamma:
        """Fill an unset rate from the data: prior mean membership sqrt(r̄ / rank)."""
        if self.rate is not None:
            return self
        mean = math.sqrt(self.pair_mean_rate(graph) / rank)
        return dataclasses.replace(self, rate=self.a / mean)

    def prior_mean(self) -> float:
        return self.a / self.rate

    def numpyro_model(self, n_nodes: int, rank: int, pair_row, pair_col, pair_value,
                      pair_observed):
        """Dense NumPyro program over every pair (O(n²); NUTS on small graphs, tests)."""
        prior = dist.Gamma(self.a, self.rate).expand([n_nodes, rank]).to_event(1)
        with numpyro.plate("node", n_nodes, dim=-1):
            sites = [numpyro.sample(name, prior, infer={"event_dims": ["component"]})
                     for name in self.sites]
        U, V = (sites[0], sites[-1])
        rate = jnp.sum(U[pair_row] * V[pair_col], axis=-1)
        with numpyro.plate("pair", pair_row.shape[0], dim=-1):
            numpyro.sample("A", pair_distribution(self, rate).mask(pair_observed),
                           obs=pair_value)


def pair_distribution(model: NetworkGamma, rate) -> dist.Distribution:
    """The distribution of A_ij given its Poisson rate Σ_k U_ik V_jk."""
    rate = jnp.maximum(rate, jnp.finfo(rate.dtype).tiny)
    if model.likelihood == "bernoulli":
        # logit of 1 - exp(-r): log(e^r - 1) = r + log(1 - e^-r), accurate for small and large r
        return dist.Bernoulli(logits=rate + jnp.log(-jnp.expm1(-rate)))
    return dist.Poisson(rate)


def factors(model: NetworkGamma, sites: dict):
    """(U, V): out- and in-memberships; the same array twice for an undirected graph."""
    if model.directed:
        return sites["W_out"], sites["W_in"]
    return sites["W"], sites["W"]


def edge_rates(U, V, g: GraphArrays):
    """Per-edge, per-community rates U[i] * V[j], shape (n_edges, rank)."""
    return U[g.edge_row] * V[g.edge_col]


def observed_total_rate(model: NetworkGamma, U, V, g: GraphArrays):
    """Σ over observed pairs of Σ_k U_ik V_jk, in O(nodes · rank + hidden · rank)."""
    if model.directed:
        total = jnp.sum(U.sum(0) * V.sum(0)) - jnp.sum(U * V)
    else:
        total = 0.5 * (jnp.sum(U.sum(0) ** 2) - jnp.sum(U * U))
    return total - jnp.sum(U[g.hidden_row] * V[g.hidden_col])


def log_likelihood(model: NetworkGamma, g: GraphArrays, U, V):
    """log p(A | U, V) over the observed pairs, O(edges · rank)."""
    rate = jnp.maximum(edge_rates(U, V, g).sum(-1), jnp.finfo(U.dtype).tiny)
    total = observed_total_rate(model, U, V, g)
    if model.likelihood == "bernoulli":
        # edges: log(1 - e^-r); every other observed pair: -r
        return jnp.sum(jnp.log(-jnp.expm1(-rate)) + rate) - total
    return jnp.sum(g.edge_value * jnp.log(rate) - gammaln(g.edge_value + 1.0)) - total


def log_prior(model: NetworkGamma, sites: dict, log_space: bool = False):
    """Σ log Gamma(w; a, b) over the membership sites (+ Σ log w in log space)."""
    total = 0.0
    for name in model.sites:
        w = sites[name]
        lp = dist.Gamma(model.a, model.rate).log_prob(w)
        total = total + jnp.sum(lp + jnp.log(w) if log_space else lp)
    return total


def log_joint(model: NetworkGamma, g: GraphArrays, sites: dict, log_space: bool = False):
    """log p(A, memberships): equals ``numpyro.infer.util.log_density`` of
    :meth:`NetworkGamma.numpyro_model` (plus the log-Jacobian Σ log w when ``log_space``)."""
    U, V = factors(model, sites)
    return log_likelihood(model, g, U, V) + log_prior(model, sites, log_space)


# --------------------------------------------------------------------- latent counts
def sample_ztp(key, lam):
    """Zero-truncated Poisson draws of rate ``lam`` (any shape), exactly.

    The first arrival T of a rate-λ Poisson process on [0, 1], given at least one, has density
    ∝ λ e^{-λt} on [0, 1] (inverse-CDF draw); the arrivals after it are Poisson(λ (1 − T)).
    """
    key_t, key_n = jax.random.split(key)
    u = jax.random.uniform(key_t, lam.shape, lam.dtype)
    t = -jnp.log1p(u * jnp.expm1(-lam)) / lam
    rest = jax.random.poisson(key_n, lam * jnp.clip(1.0 - t, 0.0, 1.0), lam.shape)
    return 1 + rest.astype(lam.dtype)


def _edge_counts(key, model: NetworkGamma, g: GraphArrays, parts, expected: bool):
    """Latent counts of each edge split over communities, (n_edges, rank): drawn (Gibbs) or
    their expectation (the E step of ECM)."""
    rate = jnp.maximum(parts.sum(-1), jnp.finfo(parts.dtype).tiny)
    if expected:
        if model.likelihood == "bernoulli":  # E[m | m ≥ 1] = r / (1 - e^-r)
            return parts / (-jnp.expm1(-rate))[:, None]
        return parts * (g.edge_value / rate)[:, None]
    if model.likelihood == "bernoulli":
        return sample_split_ztp(key, parts)
    # each unit of an edge's count joins community k with probability parts_k / rate
    unit = jax.random.categorical(key, jnp.log(parts[g.unit_edge]))
    one_hot = jax.nn.one_hot(unit, parts.shape[1], dtype=parts.dtype)
    return jax.ops.segment_sum(one_hot, g.unit_edge, num_segments=parts.shape[0])


def sample_split_ztp(key, parts):
    """Independent m_k ~ Poisson(parts_k) per row, conditioned on Σ_k m_k ≥ 1; (n, rank).

    The superposition of the K Poisson processes on [0, 1]: its first arrival T given at
    least one (a truncated exponential), that arrival's community (categorical in parts), then
    the later arrivals of each community, Poisson(parts_k (1 − T)). Exact, and without a
    multinomial (jax's sampler of which compiled for ~40 s inside the sweep).
    """
    key_t, key_c, key_n = jax.random.split(key, 3)
    rate = jnp.maximum(parts.sum(-1), jnp.finfo(parts.dtype).tiny)
    u = jax.random.uniform(key_t, rate.shape, rate.dtype)
    t = jnp.clip(-jnp.log1p(u * jnp.expm1(-rate)) / rate, 0.0, 1.0)
    first = jax.random.categorical(key_c, jnp.log(jnp.maximum(parts, jnp.finfo(parts.dtype).tiny)))
    later = sampling.poisson(key_n, parts * (1.0 - t)[:, None])
    return jax.nn.one_hot(first, parts.shape[1], dtype=parts.dtype) + later


def node_counts(model: NetworkGamma, g: GraphArrays, counts):
    """Per-node sums of the split counts: (C_out, C_in), each (n_nodes, rank)."""
    n = g.n_nodes
    out = jax.ops.segment_sum(counts, g.edge_row, num_segments=n)
    into = jax.ops.segment_sum(counts, g.edge_col, num_segments=n)
    return out, into


def node_conditional(model: NetworkGamma, g: GraphArrays, W, counts, i: int):
    """Shape and rate (each (rank,)) of the gamma full conditional of W[i] in an undirected
    graph, given the other rows of W and the split latent counts (n_edges, rank)."""
    out, into = node_counts(model, g, counts)
    hidden = jnp.zeros(W.shape[1], W.dtype)
    for r, c in zip(np.asarray(g.hidden_row), np.asarray(g.hidden_col)):
        if r == i:
            hidden = hidden + W[c]
        elif c == i:
            hidden = hidden + W[r]
    return model.a + out[i] + into[i], model.rate + W.sum(0) - W[i] - hidden


def _numerators(key, model: NetworkGamma, C, mode: str, log_space: bool):
    """What each membership is before division by its conditional rate: a Gamma(a + C, 1)
    draw (Gibbs), or the conditional mode's numerator (ECM)."""
    shape = model.a + C
    if mode == "gibbs":
        return sampling.gamma(key, shape)
    return shape if log_space else jnp.maximum(shape - 1.0, 0.0)


def _floor(model: NetworkGamma, w):
    # keeps every rate and log finite (a membership of exactly 0 would be absorbing)
    return jnp.maximum(w, 1e-10 * model.prior_mean())


def _sequential_update(model: NetworkGamma, g: GraphArrays, W, numer):
    """Undirected: W[i] = numer[i] / (b + Σ_{j≠i, observed} W[j]) for i = 0, 1, ..., each with
    the rows before it already updated (one Gibbs or CM scan over nodes)."""
    n, rank = W.shape
    padded = jnp.concatenate([W, jnp.zeros((1, rank), W.dtype)])

    def body(carry, inputs):
        padded, total = carry
        i, numer_i, partners_i = inputs
        old = padded[i]
        rate = model.rate + total - old - padded[partners_i].sum(0)
        new = _floor(model, numer_i / rate)
        return (padded.at[i].set(new), total + new - old), None

    (padded, _), _ = lax.scan(body, (padded, W.sum(0)), (jnp.arange(n), numer, g.partners))
    return padded[:n]


def _block_rate(model: NetworkGamma, other, hidden_self, hidden_other, n: int):
    """b + Σ_{j≠i, (i,j) observed} other[j] for every i at once (directed graphs)."""
    hidden = jax.ops.segment_sum(other[hidden_other], hidden_self, num_segments=n)
    return model.rate + other.sum(0) - other - hidden


def sweep(key, model: NetworkGamma, g: GraphArrays, sites: dict, mode: str = "gibbs",
          log_space: bool = False) -> dict:
    """One sweep: latent edge counts given the memberships, then every membership given the
    counts. ``mode="gibbs"`` draws (an exact Gibbs sweep); ``mode="ecm"`` takes expectations and
    conditional modes (an expectation–conditional-maximization step, which never lowers
    :func:`log_joint`; ``log_space`` takes the mode over log W)."""
    key_counts, key_u, key_v = jax.random.split(key, 3)
    U, V = factors(model, sites)
    counts = _edge_counts(key_counts, model, g, edge_rates(U, V, g), mode != "gibbs")
    out, into = node_counts(model, g, counts)
    n = g.n_nodes
    if not model.directed:
        numer = _numerators(key_u, model, out + into, mode, log_space)
        return {"W": _sequential_update(model, g, U, numer)}
    U = _floor(model, _numerators(key_u, model, out, mode, log_space)
               / _block_rate(model, V, g.hidden_row, g.hidden_col, n))
    V = _floor(model, _numerators(key_v, model, into, mode, log_space)
               / _block_rate(model, U, g.hidden_col, g.hidden_row, n))
    return {"W_out": U, "W_in": V}
