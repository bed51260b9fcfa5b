r"""Spatially smoothed NMF: activities ``H`` that vary smoothly over a graph of the samples.

Neighbouring pixels of a hyperspectral image, or neighbouring spots of a spatial
transcriptomics slide, have similar mixtures. With an undirected graph of the samples (edge
weights :math:`w_{jl} > 0`, from ``neighbors=`` or a k-nearest-neighbour graph of
``coords=``), each row of ``H`` gets a Gaussian Markov random field (conditional
autoregressive, CAR) prior, truncated to :math:`H \ge 0`:

.. math::

    p(H_{k\cdot}) \propto \prod_j \mathrm{HalfNormal}(H_{kj} \mid s_H)\,
        \exp\Big(-\frac{\tau}{2} \sum_{(j,l) \in E} w_{jl}\,(H_{kj} - H_{kl})^2\Big),
    \qquad \tau = \lambda / s_H^2,

i.e. the precision of :math:`H_{k\cdot}` is :math:`I / s_H^2 + \tau L` on the orthant, with
:math:`L = D - A` the graph Laplacian. ``smoothness`` λ is dimensionless: an edge's
difference costs λ times what the entry itself costs under the half-normal. (The prior is on
``H`` itself, not on log ``H``: abundances that are exactly zero stay reachable; since the
truncation makes the normaliser depend on τ, λ is set, not learned.) Then
:math:`W_{ik} \sim \mathrm{HalfNormal}(s_W)` and

.. math::

    X_{ij} \sim \mathcal N\big((WH)_{ij}, \sigma^2\big),\ \sigma \sim \mathrm{HalfNormal}(s_\sigma)
    \quad\text{or}\quad X_{ij} \sim \mathrm{Poisson}\big((WH)_{ij}\big).

With λ = 0 and a Gaussian likelihood it is :class:`~bnmf.models.GaussianHalfNormal`.

Closed-form MAP (capability ``"map_update"``): majorize–minimize updates that never increase
the negative log joint, in O((nnz + edges) · rank) per update. The likelihood is majorized as
for unpenalised NMF (Lee & Seung's quadratic bound for Gaussian, Jensen's for Poisson–KL),
and each edge's squared difference by the separable bound
:math:`(a - b)^2 \le 2(a - c)^2 + 2(b - c)^2` at the midpoint :math:`c` of the current
values, which is tight there. Per entry that leaves
:math:`\min_h\ \alpha h^2 + \beta h - P \log h` with

.. math::

    \alpha = \tfrac{1}{2 s_H^2} + \tau d_j\ (+\ \text{the Gaussian bound}), \quad
    \beta = \dots - \tau\,(d_j \tilde h_{kj} + (\tilde H A)_{kj}),

solved exactly (:func:`_quadratic_root`; Gaussian: :math:`P = 0`, a multiplicative update
in the form of Cai et al. 2011's graph-regularised NMF, damped by the midpoint bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax

from ..data import Data
from ..graph import knn_graph, prepare_neighbors
from ..options import check_number
from .base import (
    H_SITE,
    W_SITE,
    MapUpdate,
    Site,
    hyperparameter_pytree,
    observe,
    register_capability,
    sample_H,
    sample_W,
)
from .gaussian import (
    _noise_mode,
    fill_half_normal_scales,
    gaussian_log_likelihood,
    half_normal_log_density,
    rms_residual,
)
from .poisson import poisson_log_likelihood, poisson_rate

__all__ = [
    "LIKELIHOODS",
    "SpatialNMF",
    "degrees",
    "edge_penalty",
    "neg_log_joint",
    "neighbor_differences",
    "neighbor_sum",
]

LIKELIHOODS = ("gaussian", "poisson")


# ------------------------------------------------------------------------------- graph math
def edge_penalty(H, row, col, weight):
    """Σ_k Σ_edges w (H_k,row − H_k,col)² = Σ_k H_k L H_kᵀ; H (rank, n_samples), each
    undirected edge once (row, col, weight of shape (n_edges,)). O(edges · rank)."""
    diff = H[:, row] - H[:, col]
    return jnp.sum(weight * diff * diff)


def neighbor_sum(H, row, col, weight):
    """(H A)_kj = Σ_l w_jl H_kl, shape (rank, n_samples), from the edge list."""
    n = H.shape[1]
    into_row = jax.ops.segment_sum((weight * H[:, col]).T, row, num_segments=n)
    into_col = jax.ops.segment_sum((weight * H[:, row]).T, col, num_segments=n)
    return (into_row + into_col).T


def degrees(row, col, weight, n: int):
    """Weighted degree d_j = Σ_l w_jl of every sample, shape (n,)."""
    return (jax.ops.segment_sum(weight, row, num_segments=n)
            + jax.ops.segment_sum(weight, col, num_segments=n))


def neighbor_differences(H, row, col, weight=None) -> float:
    """Weighted mean over edges of Σ_k (H_k,row − H_k,col)² (NumPy; a roughness score)."""
    H = np.asarray(H)
    weight = np.ones(len(row)) if weight is None else np.asarray(weight)
    diff = H[:, np.asarray(row)] - H[:, np.asarray(col)]
    return float(np.sum(weight * np.sum(diff * diff, axis=0)) / np.sum(weight))


# ------------------------------------------------------------------------------- the model
@hyperparameter_pytree
@dataclass(frozen=True, eq=False)
class SpatialNMF:
    r"""NMF whose activities are smoothed over a graph of the samples (module doc).

    Parameters
    ----------
    neighbors : sparse or dense (n_samples, n_samples) matrix, optional
        Symmetric non-negative edge weights between samples (diagonal 0). Give this or
        ``coords``.
    coords : array of shape (n_samples, d), optional
        Sample positions; the graph is their symmetrised ``n_neighbors``-nearest-neighbour
        graph (weights 1). Kept on the model (``fit.model.coords``) for maps.
    n_neighbors : int
        k of the k-nearest-neighbour graph built from ``coords``.
    likelihood : {"gaussian", "poisson"}
    smoothness : float
        λ ≥ 0, the graph precision in units of the half-normal's: τ = λ / s_H²; 0 is no
        smoothing.
    scale_W, scale_H, scale_sigma : float, optional
        Half-normal scales; None sets them from the data as
        :class:`~bnmf.models.GaussianHalfNormal` does (factor means √(X̄ / K), noise scale
        the data's standard deviation).
    edge_row, edge_col, edge_weight, n_nodes
        The validated graph (each undirected edge once), filled from ``neighbors`` or
        ``coords``; set directly only when reloading a fit.
    """

    neighbors: Any = None
    coords: Any = None
    n_neighbors: int = 8
    likelihood: str = "gaussian"
    smoothness: float = 10.0
    scale_W: float | None = None
    scale_H: float | None = None
    scale_sigma: float | None = None
    edge_row: Any = None
    edge_col: Any = None
    edge_weight: Any = None
    n_nodes: int | None = None

    name = "spatial"
    nuts_calibrated = False

    def __post_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r} for model 'spatial'; "
                             f"choose one of {list(LIKELIHOODS)}.")
        check_number("smoothness", self.smoothness, 0.0)
        for field in ("scale_W", "scale_H", "scale_sigma"):
            value = getattr(self, field)
            if value is not None:
                check_number(f"SpatialNMF.{field}", value, 0.0, low_open=True)
        if self.neighbors is not None and self.coords is not None:
            raise ValueError("give neighbors= or coords=, not both: coords= builds the "
                             "neighbour graph.")
        coords = None if self.coords is None else np.asarray(self.coords, dtype=float)
        if self.neighbors is not None:
            graph = prepare_neighbors(self.neighbors)
        elif self.edge_row is not None:        # an already validated graph (reload, replace)
            graph = None
            for field, dtype in (("edge_row", np.int32), ("edge_col", np.int32),
                                 ("edge_weight", np.float64)):
                object.__setattr__(self, field, np.asarray(getattr(self, field), dtype))
        elif coords is not None:
            graph = knn_graph(coords, self.n_neighbors)
        else:
            graph = None
        if graph is not None:
            object.__setattr__(self, "edge_row", graph.row)
            object.__setattr__(self, "edge_col", graph.col)
            object.__setattr__(self, "edge_weight", graph.weight)
            object.__setattr__(self, "n_nodes", graph.n_nodes)
        if coords is not None and self.n_nodes is not None and coords.shape[0] != self.n_nodes:
            raise ValueError(f"coords has {coords.shape[0]} rows but the graph has "
                             f"{self.n_nodes} nodes.")
        object.__setattr__(self, "neighbors", None)   # kept as the edge list
        object.__setattr__(self, "coords", coords)

    @property
    def needs_counts(self) -> bool:
        return self.likelihood == "poisson"

    @property
    def extra_sites(self) -> tuple:
        return ("sigma",) if self.likelihood == "gaussian" else ()

    def sites(self, rank=None) -> tuple:
        """W, H, and the noise scale sigma (Gaussian likelihood)."""
        return (W_SITE, H_SITE) + ((Site("sigma", ()),) if self.likelihood == "gaussian"
                                   else ())

    def precision(self):
        """τ = λ / s_H², the graph precision of every row of H."""
        return self.smoothness / self.scale_H**2

    def graph(self):
        """(edge_row, edge_col, edge_weight) as arrays."""
        return self.edge_row, self.edge_col, self.edge_weight

    def resolve(self, data: Data, rank: int) -> SpatialNMF:
        """Check the graph against the data's samples and fill unset scales from the data."""
        if self.edge_row is None:
            raise ValueError("model='spatial' needs a graph of the samples: pass neighbors= "
                             "(a samples × samples matrix) or coords= (n_samples, d).")
        n_samples = data.shape[1]
        if self.n_nodes != n_samples:
            raise ValueError(f"the neighbour graph has {self.n_nodes} nodes but X has "
                             f"{n_samples} samples (columns); they must match.")
        return fill_half_normal_scales(self, data, rank)

    def numpyro_model(self, X, mask, rank: int, W=None):
        """NumPyro model of X (n_features, n_samples); pass ``W`` to keep it fixed."""
        n_features, n_samples = X.shape
        W = sample_W(dist.HalfNormal(self.scale_W), n_features, rank, W)
        H_T = sample_H(dist.HalfNormal(self.scale_H), n_samples, rank)
        numpyro.factor("smoothing", -0.5 * self.precision() * edge_penalty(H_T.T, *self.graph()))
        if self.likelihood == "gaussian":
            sigma = numpyro.sample("sigma", dist.HalfNormal(self.scale_sigma))
            observe(dist.Normal((W @ H_T.T).T, sigma), X, mask)
        else:
            observe(dist.Poisson(poisson_rate(W, H_T.T).T), X, mask)

    def log_likelihood(self, X, W, H, extras=None):
        """Per-entry log p(X_ij | W, H, sigma), shape (n_features, n_samples)."""
        if self.likelihood == "gaussian":
            return gaussian_log_likelihood(X, W, H, extras["sigma"])
        return poisson_log_likelihood(X, W, H)

    def init_extras(self, W, H, X, mask) -> dict:
        """Initial noise scale (Gaussian): the root mean square residual of the start."""
        if self.likelihood != "gaussian":
            return {}
        return {"sigma": jnp.maximum(rms_residual(W, H, X, mask), 1e-3 * self.scale_sigma)}


# ------------------------------------------------------------------ MAP (closed form)
def neg_log_joint(W, H, sigma, X, M, model: SpatialNMF):
    """−log p(X, W, H[, σ]) of :meth:`SpatialNMF.numpyro_model` (masked entries, M = 0,
    excluded); the MAP objective, in the constrained space. ``sigma`` is None for Poisson."""
    penalty = 0.5 * model.precision() * edge_penalty(H, *model.graph())
    prior = (half_normal_log_density(W, model.scale_W)
             + half_normal_log_density(H, model.scale_H))
    if model.likelihood == "gaussian":
        ll = gaussian_log_likelihood(X, W, H, sigma)
        prior = prior + half_normal_log_density(sigma, model.scale_sigma)
    else:
        ll = poisson_log_likelihood(X, W, H)
    return -(jnp.sum(jnp.where(M > 0, ll, 0.0)) + prior) + penalty


def _quadratic_root(alpha, beta, P):
    """argmin over h ≥ 0 of α h² + β h − P log h (α > 0, P ≥ 0), without cancellation."""
    root = jnp.sqrt(beta * beta + 8.0 * alpha * P)
    return jnp.where(beta <= 0.0, (root - beta) / (4.0 * alpha),
                     2.0 * P / jnp.maximum(beta + root, jnp.finfo(root.dtype).tiny))


def _graph_terms(H, model: SpatialNMF):
    """τ d (rank broadcast, (1, n)) and τ (d H̃ + H̃ A) (rank, n): the midpoint bound's
    quadratic coefficient and linear pull of the graph penalty at the current H̃."""
    row, col, weight = model.graph()
    tau = model.precision()
    d = degrees(row, col, weight, H.shape[1])[None, :]
    return tau * d, tau * (d * H + neighbor_sum(H, row, col, weight))


def update_H(W, H, sigma, X, Mf, model: SpatialNMF):
    """One majorize–minimize update of H (rank, n_samples) with W (and σ) fixed."""
    tiny = jnp.finfo(H.dtype).tiny
    quad, pull = _graph_terms(H, model)
    ridge = 0.5 / model.scale_H**2
    if model.likelihood == "gaussian":
        var = sigma * sigma
        G = W.T @ (Mf * (W @ H))
        R = W.T @ (Mf * X)
        # −β / 2α with α = G / (2σ² h̃) + ridge + τ d, β = −R / σ² − pull, times σ² h̃ / σ² h̃
        return H * (R + var * pull) / (G + 2.0 * var * H * (ridge + quad) + tiny)
    ratio = Mf * X / jnp.maximum(W @ H, tiny)
    return _quadratic_root(ridge + quad, W.T @ Mf - pull, H * (W.T @ ratio))


def update_W(W, H, sigma, X, Mf, model: SpatialNMF):
    """One majorize–minimize update of W (n_features, rank) with H (and σ) fixed."""
    tiny = jnp.finfo(W.dtype).tiny
    ridge = 0.5 / model.scale_W**2
    if model.likelihood == "gaussian":
        var = sigma * sigma
        return W * ((Mf * X) @ H.T) / ((Mf * (W @ H)) @ H.T + 2.0 * var * ridge * W + tiny)
    ratio = Mf * X / jnp.maximum(W @ H, tiny)
    return _quadratic_root(jnp.full_like(W, ridge), Mf @ H.T, W * (ratio @ H.T))


def update_sigma(W, H, X, Mf, model: SpatialNMF):
    """The noise scale's exact conditional mode (Gaussian likelihood)."""
    rss = jnp.sum(Mf * (X - W @ H) ** 2)
    return jnp.maximum(_noise_mode(rss, Mf.sum(), model.scale_sigma), jnp.finfo(X.dtype).tiny)


class SpatialData(NamedTuple):
    """X (n_features, n_samples) and the mask as 0/1 floats."""

    X: jax.Array
    M: jax.Array


class SpatialState(NamedTuple):
    """The monotone MM iterate: W, H, σ (None for Poisson) and its negative log joint."""

    W: jax.Array
    H: jax.Array
    sigma: Any
    loss: jax.Array


def _prepare_masked(X, mask, model) -> SpatialData:
    return SpatialData(X, jnp.asarray(mask, X.dtype))


def _prepare(problem) -> SpatialData:
    return _prepare_masked(problem.X, problem.mask, problem.model)


def _init(W, H, data: SpatialData, model: SpatialNMF) -> SpatialState:
    extras = model.init_extras(W, H, data.X, data.M > 0)
    sigma = jnp.asarray(extras["sigma"], W.dtype) if "sigma" in extras else None
    return SpatialState(W, H, sigma, jnp.asarray(jnp.inf, W.dtype))


def spatial_map_step(state: SpatialState, data: SpatialData, model: SpatialNMF, n_steps,
                     update_W_too: bool) -> SpatialState:
    """``n_steps`` (traced) updates of W (if ``update_W_too``), H and σ; then the loss."""
    X, Mf = data.X, data.M

    def step(_, carry):
        W, H, sigma = carry
        if update_W_too:
            W = update_W(W, H, sigma, X, Mf, model)
        H = update_H(W, H, sigma, X, Mf, model)
        if sigma is not None:
            sigma = update_sigma(W, H, X, Mf, model)
        return W, H, sigma

    W, H, sigma = lax.fori_loop(0, n_steps, step, (state.W, state.H, state.sigma))
    return SpatialState(W, H, sigma, neg_log_joint(W, H, sigma, X, Mf, model))


def _values(state: SpatialState) -> dict:
    values = {"W": state.W, "H": state.H}
    if state.sigma is not None:
        values["sigma"] = state.sigma
    return values


def _describe(problem) -> dict:
    return {"algorithm": "graph-regularised-mm", "mode_space": "constrained"}


register_capability(SpatialNMF, "map_update", MapUpdate(
    prepare=_prepare, prepare_masked=_prepare_masked, init=_init, step=spatial_map_step,
    values=_values, describe=_describe))
