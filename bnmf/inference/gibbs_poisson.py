"""Exact full conditionals of Poisson–gamma NMF, for the Gibbs sampler.

Latent-count augmentation (Cemgil 2009; Zhou & Carin 2012): each observed count is split over
the components, ``z_ij ~ Multinomial(X_ij, p_ij)`` with ``p_ijk ∝ W_ik H_kj``; given the split,

    W_ik | z, H ~ Gamma(a^W_k + Σ_j z_ijk, b^W_k + Σ_j M_ij H_kj),
    H_kj | z, W ~ Gamma(a^H_k + Σ_i z_ijk, b^H_k + Σ_i M_ij W_ik).

Only non-zero observed counts are split (a zero count has z = 0), so a sweep costs
O(nnz · rank) plus two mask products. Factors are kept in log space: gamma draws of small
shape (sparse parts, Dirichlet(0.1)) underflow float32, their logarithms do not
(``jax.random.loggamma``), and the split is computed from log W + log H.

The multinomial split, the cost of a sweep, is drawn in two exact ways chosen per entry on
the host (the counts are fixed):

* counts up to ``max_tokens``: every count is a token with one uniform, whose component is
  found against the entry's cumulative probabilities; entries are bucketed by count into
  power-of-two widths, so padding at most doubles the work;
* larger counts: ``rank − 1`` sequential conditional binomials.

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

# Counts up to this are split token by token (one uniform each); larger ones by binomials.
# Measured in experiments/speed.py (gibbs rows): a token costs ~rank compares and one
# uniform, a binomial ~0.4 µs, so tokens win up to a few hundred.
MAX_TOKENS = 256
# Metropolis steps on each learned shape per sweep, and the proposal scale c / sqrt(n) on
# log a (posterior sd of log a is about 1–1.4 / sqrt(n) for n gamma entries).
SHAPE_STEPS = 3
SHAPE_PROPOSAL = 2.5


class TokenBucket(NamedTuple):
    """Entries whose counts fit in ``slots.shape[0]`` tokens: rows, cols (E,), counts (E,)."""

    rows: jax.Array
    cols: jax.Array
    counts: jax.Array
    slots: jax.Array  # arange(width): its static shape is the bucket's width


class BinomialBucket(NamedTuple):
    """Entries with counts above ``MAX_TOKENS``: rows, cols (E,), counts (E,) as floats."""

    rows: jax.Array
    cols: jax.Array
    counts: jax.Array


class Allocation(NamedTuple):
    """The non-zero observed counts, bucketed for the split (built once on the host)."""

    tokens: tuple
    binomial: BinomialBucket | None


class HyperPrior(NamedTuple):
    """Hyperpriors of the learned shapes and rates (scalars): a ~ LogNormal(0, shape_scale),
    b ~ Gamma(rate_shape, rate_rate)."""

    shape_scale: jax.Array
    rate_shape: jax.Array
    rate_rate: jax.Array


def padded_length(n: int) -> int:
    """n rounded up to m · 2^k with 8 ≤ m < 16 (at most 12.5% more): buckets of other data of
    about the same size get the same shapes, so the compiled sweep is reused."""
    if n <= 16:
        return n
    step = 2 ** (int(np.log2(n)) - 3)
    return -(-n // step) * step


def _padded(a: np.ndarray, length: int) -> np.ndarray:
    """``a`` followed by zeros (row 0, column 0, count 0: an entry that adds nothing)."""
    return np.concatenate([a, np.zeros(length - a.size, a.dtype)])


def allocation(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, dtype,
               max_tokens: int = MAX_TOKENS) -> Allocation:
    """Bucket non-zero counts (host arrays of one length) for :func:`latent_sums`; each
    bucket padded (:func:`padded_length`) with zero counts."""
    counts = np.asarray(counts)
    if counts.size and (np.any(counts < 0) or np.any(counts != np.round(counts))):
        raise ValueError("the Gibbs sampler splits counts: X must hold non-negative integers.")
    counts = counts.astype(np.int64)
    keep = counts > 0
    rows, cols, counts = rows[keep], cols[keep], counts[keep]
    # widths 1, 4, 16, 64, 256: padding at most quadruples the tokens of a bucket, and few
    # buckets keep the compiled sweep small (each is its own code)
    widths = 4 ** np.ceil(np.log(np.maximum(counts, 1)) / np.log(4) - 1e-9).astype(np.int64)
    tokens = []
    width = 1
    while width <= 4 * max_tokens:
        chosen = (widths == width) & (counts <= max_tokens)
        if chosen.any():
            n = padded_length(int(chosen.sum()))
            tokens.append(TokenBucket(*(jnp.asarray(_padded(a[chosen], n), jnp.int32)
                                        for a in (rows, cols, counts)),
                                      jnp.arange(width, dtype=jnp.int32)))
        width *= 4
    large = counts > max_tokens
    binomial = None
    if large.any():
        n = padded_length(int(large.sum()))
        binomial = BinomialBucket(jnp.asarray(_padded(rows[large], n), jnp.int32),
                                  jnp.asarray(_padded(cols[large], n), jnp.int32),
                                  jnp.asarray(_padded(counts[large], n), dtype))
    return Allocation(tuple(tokens), binomial)


def split_probabilities(logW, logH, rows, cols):
    """p_ek ∝ W_{r_e k} H_{k c_e} for the entries e, shape (E, rank), rows summing to 1,
    computed from log factors (no underflow)."""
    logits = logW[rows] + logH.T[cols]
    p = jnp.exp(logits - jnp.max(logits, axis=1, keepdims=True))
    return p / jnp.sum(p, axis=1, keepdims=True)


def split_tokens(key, logW, logH, bucket: TokenBucket):
    """Multinomial split of small counts, token by token: (E, rank) integer counts.

    Token t of entry e (t < X_e) gets a uniform u; the number of tokens at or below the
    cumulative probability c_k, minus those at or below c_{k-1}, is z_ek."""
    p = split_probabilities(logW, logH, bucket.rows, bucket.cols)
    cumulative = jnp.cumsum(p, axis=1)
    cumulative = cumulative / cumulative[:, -1:]  # last exactly 1: every token lands
    u = jax.random.uniform(key, (bucket.rows.shape[0], bucket.slots.shape[0]), p.dtype)
    u = jnp.where(bucket.slots[None, :] < bucket.counts[:, None], u, 2.0)  # padding: nowhere
    # one 2-D compare per component: XLA fuses each into a reduction (3x faster on CPU than
    # one (E, width, rank) compare)
    below = jnp.stack([jnp.sum(u <= cumulative[:, k:k + 1], axis=1, dtype=jnp.int32)
                       for k in range(p.shape[1])], axis=1)
    return jnp.diff(below, axis=1, prepend=0)


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
    parts = [(b, split_tokens) for b in alloc.tokens]
    if alloc.binomial is not None:
        parts.append((alloc.binomial, split_binomial))
    for i, (bucket, split) in enumerate(parts):
        z = split(jax.random.fold_in(key, i), logW, logH, bucket).astype(logW.dtype)
        S_W = S_W.at[bucket.rows].add(z)
        S_H = S_H.at[bucket.cols].add(z)
    return S_W, S_H.T


def log_standard_gamma(key, shape):
    """log of Gamma(shape, 1) draws (any positive shapes, any array shape), exact.

    Marsaglia & Tsang (2000) on shape + 1 where shape < 1, with the boost
    G(a) = G(a + 1) U^(1/a) taken in log space, so tiny shapes do not underflow. Every round
    draws a normal and a uniform for the whole array and keeps the first accepted proposal of
    each entry (acceptance ≥ 95%); a while loop runs until every entry has one. This is ~10x
    faster on CPU than ``jax.random.loggamma``, whose rejection loop runs per entry.
    """
    dtype = shape.dtype
    tiny = jnp.finfo(dtype).tiny
    boosted = shape < 1.0
    d = jnp.where(boosted, shape + 1.0, shape) - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    key, boost_key = jax.random.split(key)

    def round_(carry):
        key, done, log_v = carry
        key, k_normal, k_uniform = jax.random.split(key, 3)
        x = jax.random.normal(k_normal, shape.shape, dtype)
        log_u = jnp.log(jax.random.uniform(k_uniform, shape.shape, dtype, minval=tiny))
        v = 1.0 + c * x
        positive = v > 0
        log_v_new = 3.0 * jnp.log(jnp.where(positive, v, 1.0))
        ok = positive & (log_u < 0.5 * x * x + d * (1.0 - jnp.exp(log_v_new) + log_v_new))
        take = ok & ~done
        return key, done | ok, jnp.where(take, log_v_new, log_v)

    _, _, log_v = jax.lax.while_loop(lambda carry: ~jnp.all(carry[1]), round_,
                                     (key, jnp.zeros(shape.shape, bool), jnp.zeros_like(shape)))
    log_g = jnp.log(d) + log_v
    log_u = jnp.log(jax.random.uniform(boost_key, shape.shape, dtype, minval=tiny))
    return jnp.where(boosted, log_g + log_u / shape, log_g)


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
    """log H | z, W: Gamma(a_k + S_H, b_k + (Wᵀ M)_kj), shape (rank, n_samples)."""
    exposure = mask_left(counts, jnp.exp(logW))
    return log_gamma_draw(key, a_H[:, None] + S_H, b_H[:, None] + exposure)
