"""Exact full conditionals of Poisson–gamma NMF, for the Gibbs sampler.

Latent-count augmentation (Cemgil 2009; Zhou & Carin 2012): each observed count is split over
the components, ``z_ij ~ Multinomial(X_ij, p_ij)`` with ``p_ijk ∝ W_ik H_kj``; given the split,

    W_ik | z, H ~ Gamma(a^W_k + Σ_j z_ijk, b^W_k + Σ_j M_ij H_kj),
    H_kj | z, W ~ Gamma(a^H_k + Σ_i z_ijk, b^H_k + Σ_i M_ij W_ik).

Only non-zero observed counts are split (a zero count has z = 0), so a sweep costs
O(nnz · rank) plus two mask products. Factors are kept in log space: gamma draws of small
shape (sparse parts, Dirichlet(0.1)) underflow float32, their logarithms do not
(:func:`bnmf.models.sampling.log_standard_gamma`), and the split is computed from
log W + log H.

The multinomial split, the cost of a sweep, is drawn in two exact ways chosen per entry on
the host (the counts are fixed):

* counts up to ``max_tokens``: every count is a token with 32 random bits, whose component
  is found against the entry's cumulative probabilities as uint32 thresholds; an entry's
  tokens fill rows of ``TOKEN_WIDTH`` slots (:func:`token_rows`), one layout and one
  compiled kernel for every count, padding under ``TOKEN_WIDTH`` slots per entry;
* larger counts: ``rank − 1`` sequential conditional binomials.

Measured at 96 × 2,000, rank 10, 1,000 counts per sample (2.0 M tokens, 189 k entries) on 2
busy CPU cores, one jitted split: power-of-4 token buckets (4.2 M slots) 200 ms; token rows
of 8 (2.9 M slots) 55 ms, of which the bits are 8 ms with the non-partitionable threefry
and 160–400 ms with the partitionable one (the sweep sets it, :func:`gibbs_step`); rows of
4 and 16 were slower.

The learned shapes and rates of :class:`~bnmf.models.HierarchicalPoissonGamma` are drawn per
component as a block: the shape by random-walk Metropolis on log a with the rate integrated
out (collapsed, so the strongly correlated pair moves together), then the rate from its
conjugate gamma conditional.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from ..models.counts import mask_left, mask_right
from ..models.sampling import log_standard_gamma

# Counts up to this are split token by token; larger ones by rank − 1 binomials.
MAX_TOKENS = 256
# Token slots per row of the token layout: an entry of n counts takes ceil(n / TOKEN_WIDTH)
# rows, so padding is below TOKEN_WIDTH slots per entry.
TOKEN_WIDTH = 8
# Metropolis steps on each learned shape per sweep, and the proposal scale c / sqrt(n) on
# log a (posterior sd of log a is about 1–1.4 / sqrt(n) for n gamma entries).
SHAPE_STEPS = 3
SHAPE_PROPOSAL = 2.5
# A uint32 at or above every threshold: padding slots draw it, so they land nowhere.
_NOWHERE = np.uint32(0xFFFFFFFF)


class TokenRows(NamedTuple):
    """Counts up to ``MAX_TOKENS`` as rows of ``slots.shape[0]`` token slots.

    ``rows``, ``cols`` (E,): the entries; ``entry`` (R,): the entry of each token row (sorted);
    ``tokens`` (R,): how many of the row's slots hold tokens (0 in padding rows)."""

    rows: jax.Array
    cols: jax.Array
    entry: jax.Array
    tokens: jax.Array
    slots: jax.Array  # arange(width): its static shape is the row width


class BinomialBucket(NamedTuple):
    """Entries with counts above ``MAX_TOKENS``: rows, cols (E,), counts (E,) as floats."""

    rows: jax.Array
    cols: jax.Array
    counts: jax.Array


class Allocation(NamedTuple):
    """The non-zero observed counts, laid out for the split (built once on the host)."""

    tokens: TokenRows | None
    binomial: BinomialBucket | None


class HyperPrior(NamedTuple):
    """Hyperpriors of the learned shapes and rates (scalars): a ~ LogNormal(0, shape_scale),
    b ~ Gamma(rate_shape, rate_rate)."""

    shape_scale: jax.Array
    rate_shape: jax.Array
    rate_rate: jax.Array


def padded_length(n: int) -> int:
    """n rounded up to m · 2^k with 8 ≤ m < 16 (at most 12.5% more): other data of about the
    same size get the same shapes, so the compiled sweep is reused."""
    if n <= 16:
        return n
    step = 2 ** (int(np.log2(n)) - 3)
    return -(-n // step) * step


def _padded(a: np.ndarray, length: int) -> np.ndarray:
    """``a`` followed by zeros (row 0, column 0, count 0: an entry that adds nothing)."""
    return np.concatenate([a, np.zeros(length - a.size, a.dtype)])


def token_rows(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray,
               width: int = TOKEN_WIDTH) -> TokenRows:
    """Lay out positive counts (host arrays of one length) as rows of ``width`` token slots,
    entries and rows padded (:func:`padded_length`) with zero counts."""
    n_rows = -(-counts // width)
    entry = np.repeat(np.arange(counts.size), n_rows)
    first = np.cumsum(n_rows) - n_rows
    tokens = np.minimum(width, counts[entry] - width * (np.arange(entry.size) - first[entry]))
    n_entries, n_token_rows = padded_length(counts.size), padded_length(entry.size)
    return TokenRows(*(jnp.asarray(_padded(a, n), jnp.int32) for a, n in
                       ((rows, n_entries), (cols, n_entries), (entry, n_token_rows),
                        (tokens, n_token_rows))),
                     jnp.arange(width, dtype=jnp.int32))


def allocation(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, dtype,
               max_tokens: int = MAX_TOKENS, width: int = TOKEN_WIDTH) -> Allocation:
    """Lay out non-zero counts (host arrays of one length) for :func:`latent_sums`: counts up
    to ``max_tokens`` as token rows (:func:`token_rows`), larger ones for binomials."""
    counts = np.asarray(counts)
    if counts.size and (np.any(counts < 0) or np.any(counts != np.round(counts))):
        raise ValueError("the Gibbs sampler splits counts: X must hold non-negative integers.")
    counts = counts.astype(np.int64)
    keep = counts > 0
    rows, cols, counts = rows[keep], cols[keep], counts[keep]
    small = counts <= max_tokens
    tokens = (token_rows(rows[small], cols[small], counts[small], width) if small.any()
              else None)
    binomial = None
    if (~small).any():
        n = padded_length(int((~small).sum()))
        binomial = BinomialBucket(jnp.asarray(_padded(rows[~small], n), jnp.int32),
                                  jnp.asarray(_padded(cols[~small], n), jnp.int32),
                                  jnp.asarray(_padded(counts[~small], n), dtype))
    return Allocation(tokens, binomial)


def split_probabilities(logW, logH, rows, cols):
    """p_ek ∝ W_{r_e k} H_{k c_e} for the entries e, shape (E, rank), rows summing to 1,
    computed from log factors (no underflow)."""
    logits = logW[rows] + logH.T[cols]
    p = jnp.exp(logits - jnp.max(logits, axis=1, keepdims=True))
    return p / jnp.sum(p, axis=1, keepdims=True)


def _thresholds(p):
    """uint32 thresholds ⌊2³² · Σ_{j≤k} p_j⌋ for k < rank − 1, shape (E, rank − 1): a token
    whose 32 random bits fall below threshold k lands in a component ≤ k. The largest value
    of the dtype below 2³² caps them (float32: 2³² − 256)."""
    cumulative = p @ jnp.triu(jnp.ones((p.shape[1], p.shape[1] - 1), p.dtype))
    cap = np.nextafter(np.float32(2.0**32), 0) if p.dtype == jnp.float32 else 2.0**32 - 1
    return jnp.minimum(cumulative * 2.0**32, cap).astype(jnp.uint32)


def split_tokens(key, logW, logH, t: TokenRows):
    """Multinomial split of small counts, token by token: (E, rank) integer counts.

    Each token draws 32 random bits; the number of a row's tokens below threshold k
    (:func:`_thresholds`), minus those below threshold k − 1, is its count of component k.
    Padding slots draw all ones, which is below no threshold."""
    thresholds = _thresholds(split_probabilities(logW, logH, t.rows, t.cols))[t.entry]
    bits = jax.random.bits(key, (t.entry.shape[0], t.slots.shape[0]), jnp.uint32)
    bits = jnp.where(t.slots[None, :] < t.tokens[:, None], bits, _NOWHERE)
    below = jnp.sum(bits[:, :, None] < thresholds[:, None, :], axis=1, dtype=jnp.int32)
    z = jnp.diff(jnp.concatenate([below, t.tokens[:, None]], axis=1), axis=1, prepend=0)
    return jax.ops.segment_sum(z, t.entry, t.rows.shape[0], indices_are_sorted=True)


def split_binomial(key, logW, logH, bucket: BinomialBucket):
    """Multinomial split of large counts by conditional binomials: z_k ~ Bin(n − Σ_{j<k} z_j,
    p_k / Σ_{j≥k} p_j). Returns (E, rank) counts as floats."""
    p = split_probabilities(logW, logH, bucket.rows, bucket.cols)
    tail = jnp.flip(jnp.cumsum(jnp.flip(p, axis=1), axis=1), axis=1)
    q = jnp.clip(p / jnp.maximum(tail, jnp.finfo(p.dtype).tiny), 0.0, 1.0)
    rank = p.shape[1]

    def step(remaining, inputs):
        k_key, q_k = inputs
        z = jax.random.binomial(k_key, remaining, q_k)
        z = jnp.clip(jnp.round(z), 0.0, remaining)
        return remaining - z, z

    keys = jax.random.split(key, rank - 1)
    remaining, z = jax.lax.scan(step, bucket.counts, (keys, q[:, :-1].T))
    return jnp.concatenate([z.T, remaining[:, None]], axis=1)


def latent_sums(key, logW, logH, alloc: Allocation):
    """Split every non-zero count and sum: S_W = Σ_j z_ijk (n_features, rank) and
    S_H = Σ_i z_ijk (rank, n_samples), as floats."""
    n_features, rank = logW.shape
    n_samples = logH.shape[1]
    S_W = jnp.zeros((n_features, rank), logW.dtype)
    S_H = jnp.zeros((n_samples, rank), logW.dtype)
    parts = [(alloc.tokens, split_tokens), (alloc.binomial, split_binomial)]
    for i, (bucket, split) in enumerate(parts):
        if bucket is None:
            continue
        z = split(jax.random.fold_in(key, i), logW, logH, bucket).astype(logW.dtype)
        S_W = S_W.at[bucket.rows].add(z)
        S_H = S_H.at[bucket.cols].add(z)
    return S_W, S_H.T


def log_gamma_draw(key, shape, rate):
    """log of a Gamma(shape, rate) draw, accurate for tiny shapes (no underflow)."""
    return log_standard_gamma(key, shape) - jnp.log(rate)


def collapsed_log_shape_density(log_a, n, sum_x, sum_log_x, prior: HyperPrior):
    """log p(log a | x) up to a constant for n gamma entries x (per component) with shape a,
    rate b ~ Gamma(α0, β0) integrated out and a ~ LogNormal(0, s):

        −(log a)² / 2s² + lgamma(α0 + n a) − n lgamma(a) − (α0 + n a) log(β0 + Σx)
        + a Σ log x   (the −Σ log x of x^(a−1) is a constant)
    """
    a = jnp.exp(log_a)
    total_shape = prior.rate_shape + n * a
    return (-0.5 * (log_a / prior.shape_scale) ** 2 + gammaln(total_shape) - n * gammaln(a)
            - total_shape * jnp.log(prior.rate_rate + sum_x) + a * sum_log_x)


def update_shape_rate(key, a, log_F, axis: int, prior: HyperPrior):
    """Draw (a_k, b_k) per component from p(a, b | F): Metropolis on log a with b integrated
    out (:data:`SHAPE_STEPS` steps), then b | a, F ~ Gamma(α0 + n a, β0 + Σ F).

    ``log_F`` is the log factor; ``axis`` its entry axis (0 for W (n, rank), 1 for H)."""
    n = log_F.shape[axis]
    sum_x = jnp.sum(jnp.exp(log_F), axis=axis)
    sum_log_x = jnp.sum(log_F, axis=axis)
    scale = SHAPE_PROPOSAL / np.sqrt(n)
    density = lambda u: collapsed_log_shape_density(u, n, sum_x, sum_log_x, prior)
    keys = jax.random.split(key, 2 * SHAPE_STEPS + 1)
    u = jnp.log(a)
    current = density(u)
    for s in range(SHAPE_STEPS):
        proposal = u + scale * jax.random.normal(keys[2 * s], u.shape, u.dtype)
        proposed = density(proposal)
        accept = jnp.log(jax.random.uniform(keys[2 * s + 1], u.shape, u.dtype)) < proposed - current
        u = jnp.where(accept, proposal, u)
        current = jnp.where(accept, proposed, current)
    a = jnp.exp(u)
    b = jnp.exp(log_gamma_draw(keys[-1], prior.rate_shape + n * a, prior.rate_rate + sum_x))
    return a, b


def update_W(key, logH, a_W, b_W, S_W, counts):
    """log W | z, H: Gamma(a_k + S_W, b_k + (M Hᵀ)_ik), shape (n_features, rank)."""
    exposure = mask_right(counts, jnp.exp(logH))
    return log_gamma_draw(key, a_W[None, :] + S_W, b_W[None, :] + exposure)


def update_H(key, logW, a_H, b_H, S_H, counts):
    """log H | z, W: Gamma(a_k + S_H, b_kj + (Wᵀ M)_kj), shape (rank, n_samples); the prior
    rates ``b_H`` per component (rank,) or per entry (rank, n_samples)."""
    exposure = mask_left(counts, jnp.exp(logW))
    return log_gamma_draw(key, a_H[:, None] + S_H, per_column(b_H) + exposure)


def per_column(b):
    """Prior rates per component (rank,) as a column (rank, 1); (rank, n) ones as given."""
    return b[:, None] if b.ndim == 1 else b
