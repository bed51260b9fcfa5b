"""Exact gamma and Poisson samplers that compile faster than JAX's own.

``jax.random.gamma`` and ``jax.random.poisson`` each took ~6.5 s to compile on 2 busy CPU
cores (jax 0.10), and a Gibbs sweep that used both and a multinomial ~40 s. These are
vectorized rejection / inversion samplers, each one ``lax.while_loop`` over the whole array:
Marsaglia & Tsang (2000) for the gamma, drawn in log space (:func:`log_standard_gamma`, so
the tiny shapes of sparse parts do not underflow), inversion of the CDF for the Poisson. Both
are exact (up to floating-point rounding). Every gamma draw of the package comes from here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import gammaln, xlogy

__all__ = ["gamma", "log_standard_gamma", "poisson"]


def log_standard_gamma(key, shape):
    """log of Gamma(shape, 1) draws (any positive shapes, any array shape), exact.

    Marsaglia & Tsang (2000) on shape + 1 where shape < 1, with the boost
    G(a) = G(a + 1) U^(1/a) taken in log space, so tiny shapes do not underflow. Every round
    draws a normal and a uniform for the whole array and keeps the first accepted proposal of
    each entry (acceptance ≥ 95%); a while loop runs until every entry has one. This is ~10x
    faster on CPU than ``jax.random.loggamma``, whose rejection loop runs per entry.
    """
    shape = jnp.asarray(shape)
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


def gamma(key, shape):
    """Gamma(shape, 1) draws, one per entry of ``shape`` (any positive values, any array
    shape): ``exp`` of :func:`log_standard_gamma` (so shapes so small that the draw is below
    the smallest float give 0)."""
    shape = jnp.asarray(shape)
    return jnp.exp(log_standard_gamma(key, shape))


def poisson(key, lam):
    """Poisson(lam) draws (any non-negative rates, any array shape), as floats, by inverting
    the CDF from 0 with pmf terms in log space (large rates do not underflow): about
    λ + 12√λ steps for the largest rate λ, so it is meant for small rates (the latent counts of
    one pair and community). Starting the search near the mean would need the incomplete gamma
    function, whose JAX implementation alone took 4.7 s to compile."""
    lam = jnp.asarray(lam)
    u = jax.random.uniform(key, lam.shape, lam.dtype)
    # rounding can leave the summed CDF just below a u near 1: stop far in the upper tail
    cap = lam + 12.0 * jnp.sqrt(lam) + 20.0

    def cond(state):
        return ~jnp.all(state[3])

    def body(state):
        k, cdf, value, done = state
        cdf = cdf + jnp.exp(xlogy(k, lam) - lam - gammaln(k + 1.0))
        hit = ~done & ((u <= cdf) | (k >= cap))
        return k + 1.0, cdf, jnp.where(hit, k, value), done | hit

    zero = jnp.zeros_like(lam)
    return lax.while_loop(cond, body, (zero, zero, zero, jnp.zeros(lam.shape, bool)))[2]
