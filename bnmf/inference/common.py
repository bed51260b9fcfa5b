"""Shared inference pieces: the problem description, raw results, starting points, the loop.

Everything here is a pure function of arrays and static configuration. Loops run as compiled
chunks (``lax.scan``, or ``lax.fori_loop`` with a traced step count where the last chunk may be
shorter); between chunks Python checks convergence and advances a progress bar, which costs
one dispatch per chunk.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import log_density

from ..data import floor_positive, to_device, transposed  # noqa: F401 (re-exported)
from ..models.base import declared_sites, log_jacobian, to_constrained
from ..models.counts import SparseCounts
from ..options import check_integer
from .driver import _stderr_is_terminal, progress_bar  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Problem:
    """What to fit: data arrays, rank, a resolved model and an optional fixed W (a pytree).

    Attributes
    ----------
    X : jax array of shape (n_features, n_samples), or SparseCounts
        Observed values, 0 where unobserved; or (Poisson ``map`` and ``cavi`` only) the
        non-zero counts and unobserved entries in O(nnz) form
        (:func:`bnmf.models.counts.sparse_counts`).
    mask : jax bool array of shape (n_features, n_samples); None with SparseCounts
    rank : int
    model : a resolved bnmf model object
    W_fixed : jax array of shape (n_features, rank), optional
        Keep W at these values (refitting known parts; the conjugate check).
    """

    X: Any
    mask: Any
    rank: int
    model: Any
    W_fixed: Any = None

    @property
    def sparse(self) -> bool:
        """Whether X is a :class:`~bnmf.models.counts.SparseCounts` (its mask inside)."""
        return isinstance(self.X, SparseCounts)

    @property
    def fully_observed(self) -> bool:
        if self.sparse:
            return self.X.fully_observed
        return bool(np.asarray(self.mask).all())

    def model_args(self):
        return (self.X, self.mask, self.rank)

    def model_kwargs(self):
        return {"W": self.W_fixed}


def n_observed(problem: Problem) -> int:
    """Number of observed entries of the problem's X (dense mask or sparse counts)."""
    if problem.sparse:
        n_features, n_samples = problem.X.shape
        return n_features * n_samples - int(np.asarray(problem.X.hidden_rows).size)
    if problem.fully_observed:
        return int(np.prod(problem.mask.shape))
    return int(np.asarray(problem.mask).sum())


# A pytree (rank static): compiled programs take the problem as one argument, and
# ``jax.tree.structure(problem)`` (rank, model structure, whether W is fixed) keys their cache.
jax.tree_util.register_dataclass(Problem, data_fields=["X", "mask", "model", "W_fixed"],
                                 meta_fields=["rank"])


class RawPosterior(NamedTuple):
    """Raw inference output before normalization.

    ``draws`` maps site names to arrays with leading (chain, draw) dims: ``W`` is
    (chain, draw, n_features, rank) and ``H`` is (chain, draw, rank, n_samples).
    ``losses`` is the optimisation trace (negative log joint for MAP, negative ELBO for SVI).
    """

    draws: dict
    losses: np.ndarray
    elbo: float | None
    info: dict | None = None


# Each power iteration is two passes over A. One is enough for an NMF start: measured from
# NNDSVDa with 1 instead of 2, MAP needs the same updates to reach scikit-learn's objective (19
# at 5,000 × 5,000 Gaussian, at most 110 at 2,000 × 10,000 Poisson), and the start costs 0.20 s
# instead of 0.36 s and 0.12 s instead of 0.16 s; with none, the Gaussian fit needs 22 updates.
# (Earlier, 2 instead of 4 had also changed nothing.)
POWER_ITERATIONS = 1


def _randomized_svd(A: np.ndarray, rank: int, rng: np.random.Generator,
                    power_iterations: int = POWER_ITERATIONS):
    """Leading ``rank`` singular triplets of A (Halko et al. 2011), cheap for large A."""
    n_oversample = min(10, min(A.shape) - rank)
    # in A's precision: a float64 omega would make every A @ omega copy a float32 A to float64
    omega = rng.standard_normal((A.shape[1], rank + max(n_oversample, 0))).astype(A.dtype)
    Q, _ = np.linalg.qr(A @ omega)
    for _ in range(power_iterations):
        Q, _ = np.linalg.qr(A.T @ Q)
        Q, _ = np.linalg.qr(A @ Q)
    U_small, S, Vt = np.linalg.svd(np.asarray((A.T @ Q).T), full_matrices=False)
    return (Q @ U_small)[:, :rank], S[:rank], Vt[:rank]


def leading_svd(A: np.ndarray, rank: int, rng: np.random.Generator, exact_below: int = 512):
    """Leading ``rank`` singular triplets of A: exact from the smaller Gram matrix when one side
    has at most ``exact_below`` entries (one pass over A, a tiny eigenproblem), else randomized.
    """
    if min(A.shape) > exact_below:
        return _randomized_svd(A, rank, rng)
    transpose = A.shape[0] > A.shape[1]
    B = A.T if transpose else A  # the short side first: B (short, long); dense or SciPy sparse
    gram = B.astype(np.float64) @ B.T.astype(np.float64)  # small; float64 keeps its spectrum
    values, vectors = np.linalg.eigh(gram.toarray() if hasattr(gram, "toarray") else gram)
    order = np.argsort(values)[::-1][:rank]
    S = np.sqrt(np.maximum(values[order], 0.0))
    U = vectors[:, order]
    Vt = np.asarray((B.T @ U).T) / np.maximum(S, 1e-300)[:, None]
    return (Vt.T, S, U.T) if transpose else (U, S, Vt)


def nndsvda(X: np.ndarray, mask: np.ndarray, rank: int, seed: int = 0):
    """NNDSVDa start (Boutsidis & Gallopoulos 2008): W (n_features, rank), H (rank, n_samples).

    Unobserved entries are filled with their feature's observed mean first. Zeros are replaced
    by the data mean, as scikit-learn's ``init="nndsvda"`` does, so multiplicative updates can
    move every entry.
    """
    if mask.all():
        filled = X
    else:
        row_mean = np.where(mask, X, 0.0).sum(axis=1, keepdims=True) / mask.sum(axis=1, keepdims=True)
        filled = np.where(mask, X, row_mean)
    U, S, Vt = leading_svd(filled, rank, np.random.default_rng(seed))
    return _nonnegative_parts(U, S, Vt, filled.mean())


def _nonnegative_parts(U, S, Vt, mean: float):
    """NNDSVDa's W, H from the leading singular triplets; entries near 0 are set to ``mean``."""
    rank = S.shape[0]
    W = np.zeros((U.shape[0], rank))
    H = np.zeros((rank, Vt.shape[1]))
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0] = np.sqrt(S[0]) * np.abs(Vt[0])
    for k in range(1, rank):
        u, v = U[:, k], Vt[k]
        up, un = np.maximum(u, 0), np.maximum(-u, 0)
        vp, vn = np.maximum(v, 0), np.maximum(-v, 0)
        norm_p = np.linalg.norm(up) * np.linalg.norm(vp)
        norm_n = np.linalg.norm(un) * np.linalg.norm(vn)
        if norm_p >= norm_n:
            uu, vv, sigma = up / max(np.linalg.norm(up), 1e-300), vp / max(np.linalg.norm(vp), 1e-300), norm_p
        else:
            uu, vv, sigma = un / max(np.linalg.norm(un), 1e-300), vn / max(np.linalg.norm(vn), 1e-300), norm_n
        W[:, k] = np.sqrt(S[k] * sigma) * uu
        H[k] = np.sqrt(S[k] * sigma) * vv
    W[W < 1e-12 * mean] = mean
    H[H < 1e-12 * mean] = mean
    return W, H


def sparse_starting_point(X, hidden: tuple, rank: int, init: str, seed: int):
    """:func:`starting_point` for a SciPy sparse X (observed non-zero counts) whose unobserved
    entries are ``hidden = (rows, cols)``: the same starts, in O(nnz · rank) memory and time.

    As in :func:`nndsvda`, unobserved entries are filled with their feature's observed mean,
    which adds only one stored entry per unobserved entry.
    """
    X = X.tocsr()
    hidden_rows, hidden_cols = (np.asarray(h) for h in hidden)
    n_observed = X.shape[0] * X.shape[1] - hidden_rows.size
    mean = X.sum() / n_observed
    if init == "nndsvda":
        filled = X
        if hidden_rows.size:
            per_row = X.shape[1] - np.bincount(hidden_rows, minlength=X.shape[0])
            row_mean = np.asarray(X.sum(axis=1)).ravel() / per_row
            filled = X + sp.csr_matrix((row_mean[hidden_rows], (hidden_rows, hidden_cols)),
                                       shape=X.shape)
        U, S, Vt = leading_svd(filled, rank, np.random.default_rng(seed))
        W, H = _nonnegative_parts(U, S, Vt, filled.sum() / (X.shape[0] * X.shape[1]))
    elif init == "random":
        W, H = random_factors(X.shape, rank, mean, seed)
    else:
        raise ValueError(f"init must be 'nndsvda' or 'random', got {init!r}.")
    x_dot_wh, wh_sq = _inner_products(X, W, H)
    if hidden_rows.size:
        wh_sq -= np.sum(np.einsum("nk,kn->n", W[hidden_rows], H[:, hidden_cols]) ** 2)
    return _rescaled(W, H, x_dot_wh, wh_sq)


def _inner_products(X, W, H):
    """<X, WH> and ‖WH‖² over every entry, from rank-sized products (X dense or SciPy sparse):
    Σ X ∘ WH as Σ W ∘ (X Hᵀ) and ‖WH‖² as Σ (WᵀW) ∘ (HHᵀ), without forming W H."""
    # H in X's precision: a float64 H would make X @ Hᵀ copy a float32 X to float64
    return (np.sum(W * np.asarray(X @ H.T.astype(X.dtype, copy=False))),
            np.sum((W.T @ W) * (H @ H.T)))


def _rescaled(W, H, x_dot_wh, wh_sq):
    """W, H times the least-squares factor sqrt(<X, WH> / ‖WH‖²) (shared between W and H)."""
    alpha = np.sqrt(max(x_dot_wh, 1e-300) / max(wh_sq, 1e-300))
    return W * alpha, H * alpha


def random_factors(shape: tuple, rank: int, mean: float, seed: int):
    """Uniform random W (n_features, rank), H (rank, n_samples) with mean(W @ H) ≈ ``mean``."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(mean / rank) * 2.0  # E[U(0, 2s)] = s
    return (rng.uniform(0, 1, (shape[0], rank)) * scale,
            rng.uniform(0, 1, (rank, shape[1])) * scale)


def random_start(X: np.ndarray, mask: np.ndarray, rank: int, seed: int):
    """A uniform random start scaled so that mean(W @ H) matches the observed mean."""
    return random_factors(X.shape, rank, X[mask].mean(), seed)


def starting_point(X: np.ndarray, mask: np.ndarray, rank: int, init: str, seed: int):
    """W, H to start from: ``"nndsvda"`` (deterministic) or ``"random"`` (seeded, scaled).

    Both are rescaled by the least-squares factor ``<X, WH> / ‖WH‖²`` (on observed entries):
    NNDSVDa's filled-in zeros can put W H orders of magnitude off the data, which makes the
    first HALS sweep zero out whole components.
    """
    if init == "nndsvda":
        W, H = nndsvda(X, mask, rank, seed)
    elif init == "random":
        W, H = random_start(X, mask, rank, seed)
    else:
        raise ValueError(f"init must be 'nndsvda' or 'random', got {init!r}.")
    if mask.all():
        x_dot_wh, wh_sq = _inner_products(X, W, H)
    else:
        WH = W @ H
        x_dot_wh, wh_sq = np.vdot(X[mask], WH[mask]), np.vdot(WH[mask], WH[mask])
    return _rescaled(W, H, x_dot_wh, wh_sq)


def check_devices(devices, n_samples: int) -> int | None:
    """Validate ``devices`` (how many of ``jax.devices()`` to shard the sample axis over)."""
    if devices is None:
        return None
    devices = check_integer("devices", devices, 1)
    available = len(jax.devices())
    if devices > available:
        raise ValueError(
            f"devices={devices} but JAX sees {available} device(s); on CPU, set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N before importing JAX."
        )
    if n_samples % devices:
        raise ValueError(
            f"devices={devices} must divide the number of samples ({n_samples}) so that every "
            "device holds the same number of columns; choose a divisor or drop a few samples."
        )
    return int(devices)


def shard_over_samples(devices: int | None, *column_blocks, replicated=()):
    """Place arrays on the first ``devices`` devices: those of ``column_blocks`` split along
    their last (sample) axis, those of ``replicated`` copied to every device. Compiled
    updates then run sharded (XLA inserts the all-reduces of the sums over samples).

    Returns (column_blocks, replicated) unchanged when ``devices`` is None.
    """
    if devices is None:
        return column_blocks, replicated
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:devices]), ("observation",))
    by_column = NamedSharding(mesh, PartitionSpec(None, "observation"))
    everywhere = NamedSharding(mesh, PartitionSpec())
    return (tuple(jax.device_put(a, by_column) for a in column_blocks),
            tuple(jax.device_put(a, everywhere) for a in replicated))


def shard_problem(problem: Problem, W, H, devices):
    """``problem``, W and H with the sample axis sharded over ``devices`` devices (see
    :func:`shard_over_samples`); unchanged when ``devices`` is None. Dense X only."""
    devices = check_devices(devices, problem.mask.shape[1] if problem.mask is not None
                            else problem.X.shape[1])
    if devices is None:
        return problem, W, H
    if problem.sparse:
        raise ValueError("devices= shards dense X only; pass X.toarray() or devices=None.")
    fixed = () if problem.W_fixed is None else (problem.W_fixed,)
    (X, M, H), replicated = shard_over_samples(devices, problem.X, problem.mask, H,
                                               replicated=(W, *fixed))
    problem = dataclasses.replace(problem, X=X, mask=M,
                                  W_fixed=replicated[1] if fixed else None)
    return problem, replicated[0], H


@contextmanager
def numerics(dtype: str | None = None):
    """The arithmetic every bnmf entry point computes in: ``dtype`` ("float32" or "float64";
    None leaves JAX's x64 setting alone) with matrix products in that full precision on every
    backend.

    JAX's default on NVIDIA GPUs rounds float32 operands of matrix products to TF32 (10
    mantissa bits, as TPUs round to bfloat16). Measured on an H100: the monotone MM trace of a
    Poisson MAP fit then rises, and answers differ from the CPU's by ~1e-3; NMF's products
    (rank ≤ a few hundred) are memory-bound, so full precision cost 10–20% per update there. The
    setting is part of JAX's compilation cache key, so programs compiled here are reused only
    here.
    """
    x64 = nullcontext() if dtype is None else jax.enable_x64(dtype == "float64")
    with x64, jax.default_matmul_precision("highest"):
        yield


def key_from_seed(seed: int):
    return jax.random.PRNGKey(seed)


def site_layout(values: dict) -> tuple:
    """((name, shape, dtype), …) of a dict of site values: what ``ravel_pytree`` needs to know
    to flatten and unflatten them, as a hashable key."""
    return tuple((name, tuple(v.shape), str(v.dtype)) for name, v in sorted(values.items()))


def layout_unravel(layout: tuple):
    """``unravel`` of :func:`jax.flatten_util.ravel_pytree` for sites of this layout."""
    return ravel_pytree({name: jnp.zeros(shape, dtype) for name, shape, dtype in layout})[1]


def log_joint_unconstrained(problem: Problem, unravel, u_flat, constrained_sites=()):
    """log p(X, sites(u)) + log-Jacobian for flat unconstrained parameters ``u_flat``: the log
    of each positive site, a real site itself (the model's :class:`~bnmf.models.base.Site`
    supports say which).

    The Jacobian term is left out for the sites named in ``constrained_sites``: their
    density is then the one of the constrained space, reached through a log parameterisation.
    """
    u = unravel(u_flat)
    values = to_constrained(problem.model, u)
    log_joint, _ = log_density(problem.model.numpyro_model, problem.model_args(),
                               problem.model_kwargs(), values)
    return log_joint + log_jacobian(problem.model, u, constrained_sites)


def to_bnmf_layout(draws: dict, problem: Problem) -> dict:
    """NumPyro-layout draws (chain, draw, ...) to bnmf's (the model's sites say which are
    sampled transposed, e.g. H as (n_samples, rank)), and a fixed W repeated for every draw so
    that every result has W and H draws."""
    swapped = {s.name for s in declared_sites(problem.model) if s.numpyro_transposed}
    draws = {name: (np.swapaxes(np.asarray(value), -1, -2) if name in swapped
                    else np.asarray(value)) for name, value in draws.items()}
    if problem.W_fixed is not None:
        W = np.asarray(problem.W_fixed)
        draws["W"] = np.broadcast_to(W, draws["H"].shape[:2] + W.shape).copy()
    return draws
