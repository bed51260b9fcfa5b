"""Cohort bootstrap of the parts: would another cohort like this one give the same parts?

The posterior of a fit conditions on *this* cohort: its intervals say how well these samples
pin each part down. The bootstrap asks a different question, about the sampling of the cohort
itself: resample the samples with replacement, refit, and see how much each part moves. The two
agree when the cohort is a fair sample of a homogeneous population and the model is right; the
bootstrap spread is wider when a part rests on a few samples (drop them and it changes or
vanishes), when the samples are heterogeneous in a way the model does not describe (e.g.
overdispersion), or when the fit has several nearly equal optima. It can also be narrower:
the refits are point estimates (MAP), which carry no within-fit uncertainty.

All refits run as one ``jax.vmap``-ed batch (:mod:`bnmf.inference.batch`, the machinery of
rank selection). A resampled cohort has repeated samples, and batch members share one data
matrix, so the batch's matrix holds each sample as many times as any resample repeats it and
each member's mask observes the copies its resample drew: member b sees exactly the columns of
``X[:, resample_b]`` (the other copies are unobserved, contributing nothing to its likelihood;
their activities are left to the prior). The matrix is about 3–4 times as wide as X for 50
resamples (the largest multiplicity of a sample over the resamples), which is the cost of one
compiled program for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .data import check_rank, prepare
from .fitting import _split_options
from .fitting import fit as _fit
from .inference.batch import batch_starts, fit_map_batch, fit_svi_batch, keys_for
from .inference.common import numerics
from .models import get_model
from .options import check_prob
from .posterior import Fit, align_permutation, arviz_group, cosine_matrix, normalize

__all__ = ["Bootstrap", "bootstrap", "resample_masks"]

METHODS = ("map", "svi")


def resample_masks(multiplicities: np.ndarray):
    """Columns and masks that give each member its resampled cohort in one shared matrix.

    Parameters
    ----------
    multiplicities : int array of shape (B, n_samples)
        How often member b's resample draws sample j.

    Returns
    -------
    columns : int array of shape (n_columns,)
        The sample behind each column of the shared matrix: sample j appears
        ``max_b multiplicities[b, j]`` times.
    observed : bool array of shape (B, n_columns)
        Member b observes the first ``multiplicities[b, j]`` copies of sample j.
    """
    copies = multiplicities.max(axis=0)
    columns = np.repeat(np.arange(multiplicities.shape[1]), copies)
    copy_number = np.arange(columns.size) - np.repeat(np.cumsum(copies) - copies, copies)
    observed = copy_number[None, :] < multiplicities[:, columns]
    return columns, observed


@dataclass(frozen=True)
class Bootstrap:
    """Result of :func:`bootstrap`.

    Attributes
    ----------
    table : DataFrame, one row per part of the reference fit
        ``refit_cosine``: cosine of the full-cohort refit (same method as the resamples)
        with the reference fit's part (below 1 by the method alone, e.g. a MAP mode against
        a posterior mean); ``cosine_mean``, ``cosine_q05`` (5% quantile), ``cosine_min`` of
        each resample's matched part with the full-cohort refit's; ``stability`` (share of
        resamples whose match has cosine ≥ ``min_cosine``); ``bootstrap_width`` and ``posterior_width`` (mean over
        features of the ``prob`` interval width of the part's loadings, over resamples and
        over the posterior of the full-data fit; NaN for a MAP reference); ``width_ratio``
        (bootstrap / posterior).
    W : ndarray of shape (n_boot, n_features, rank)
        Each resample's parts, normalized (columns sum to 1) and aligned to the reference.
    cosines : ndarray of shape (n_boot, rank)
    resamples : int ndarray of shape (n_boot, n_samples)
        The samples each resample drew.
    reference : Fit
        The full-data fit the parts were matched to (labels and posterior intervals).
    full_refit : ndarray of shape (n_features, rank)
        The full cohort refitted with the resamples' method, aligned: their centre.
    converged : bool ndarray of shape (n_boot,)
    settings : dict
    """

    table: pd.DataFrame
    W: np.ndarray
    cosines: np.ndarray
    resamples: np.ndarray
    reference: Fit
    full_refit: np.ndarray
    converged: np.ndarray
    settings: dict

    def interval(self, prob: float | None = None):
        """(lower, upper) bootstrap interval of W, shaped like ``reference.W`` (default: the
        ``prob`` of the call)."""
        prob = self.settings["prob"] if prob is None else prob
        prob = check_prob(prob)
        bounds = np.quantile(self.W, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        W = self.reference.W
        if isinstance(W, pd.DataFrame):
            return tuple(pd.DataFrame(b, index=W.index, columns=W.columns) for b in bounds)
        return tuple(bounds)

    def __repr__(self) -> str:
        return (f"<bnmf.Bootstrap n_boot={self.W.shape[0]} rank={self.W.shape[2]} "
                f"stability={np.round(self.table['stability'].to_numpy(), 2).tolist()}>")


def _check_positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}.")
    return int(value)


def _interval_width(W_draws: np.ndarray, prob: float) -> np.ndarray:
    """Mean over features of the ``prob`` interval width of each part: (rank,)."""
    lower, upper = np.quantile(W_draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return (upper - lower).mean(axis=0)


def bootstrap(X, rank: int, n_boot: int = 50, model="poisson", method: str = "map",
              seed: int = 0, fit: Fit | None = None, prob: float = 0.9,
              min_cosine: float = 0.9, restarts: int = 1, mask=None, missing: str = "error",
              dtype: str = "float32", **options) -> Bootstrap:
    """Cohort bootstrap of the parts: resample samples with replacement, refit, match.

    Parameters
    ----------
    X : array-like of shape (n_features, n_samples), DataFrame or AnnData
        As :func:`bnmf.fit` (dense; sparse input is densified).
    rank : int
    n_boot : int
        Resamples (≥ 2).
    model : str or model object
        As :func:`bnmf.fit`; empirical-Bayes hyperparameters are set once, from the whole
        cohort, so every refit has the same prior.
    method : {"map", "svi"}
        Inference of each refit (batched): ``"map"`` (closed-form MM, the default and the
        classic bootstrap of point estimates) or ``"svi"`` (each refit's guide median).
    seed : int
        Seeds the resamples, the full-data fit and the refits.
    fit : Fit, optional
        The full-data fit to match parts to and take posterior intervals from; by default
        ``bnmf.fit(X, rank, model, seed=seed)`` (its default, calibrated method).
    prob : float
        Interval probability of the widths in the table.
    min_cosine : float
        Cosine with the full-data part at which a resample counts as reproducing it.
    restarts : int
        Starts per resample (the first NNDSVDa, the others random); the best by loss or ELBO
        is kept.
    mask, missing, dtype :
        As :func:`bnmf.fit`.
    **options
        Model hyperparameters and options of the batched inference
        (:func:`bnmf.inference.batch.fit_map_batch`: ``max_iter``, ``tol``;
        :func:`~bnmf.inference.batch.fit_svi_batch`: ``max_steps``, ...).

    Returns
    -------
    Bootstrap
        With ``table`` (per part: stability, bootstrap and posterior interval widths), the
        aligned bootstrap parts and :meth:`Bootstrap.interval`.

    Notes
    -----
    The posterior interval and the bootstrap spread answer different questions. The
    posterior conditions on this cohort: how well do these samples determine the part? The
    bootstrap asks about another cohort drawn like this one: would it give the same part?
    They differ when a part is carried by a few samples (the bootstrap is wider: resamples
    without them lose it, and its stability falls), when samples vary more than the model
    allows (wider), or when the refits, being point estimates, lack the within-fit
    uncertainty the posterior has (narrower, in small cohorts with low counts).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} for bootstrap refits, got "
                         f"{method!r}.")
    n_boot = _check_positive_int("n_boot", n_boot, 2)
    restarts = _check_positive_int("restarts", restarts, 1)
    prob = check_prob(prob)
    if not 0 <= min_cosine <= 1:
        raise ValueError(f"min_cosine must lie in [0, 1], got {min_cosine!r}.")
    model_options, inference_options = _split_options(model, options)
    model_obj = get_model(model, **model_options)
    data = prepare(X, mask=mask, missing=missing, counts=model_obj.needs_counts)
    rank = check_rank(rank, data.shape)
    if fit is None:
        fit = _fit(X, rank, model=model_obj, seed=seed, mask=mask, missing=missing,
                   dtype=dtype, progress=False)
    _check_reference(fit, data, rank)
    n_samples = data.shape[1]
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n_samples, size=(n_boot, n_samples))
    # member 0 refits the whole cohort with the same method: the centre the resamples are
    # compared with, so that their cosines measure resampling alone, not MAP against the
    # posterior mean
    multiplicities = np.stack([np.ones(n_samples, dtype=int)]
                              + [np.bincount(r, minlength=n_samples) for r in resamples])
    columns, observed = resample_masks(multiplicities)
    values, data_mask = np.asarray(data.values), np.asarray(data.mask)
    X_shared = np.ascontiguousarray(values[:, columns])
    member_masks = data_mask[:, columns][None] & observed[:, None, :]     # (B, F, columns)
    masks = np.repeat(member_masks, restarts, axis=0)
    members = n_boot + 1
    restart = np.tile(np.arange(restarts), members)
    inits = ["nndsvda" if r == 0 else "random" for r in restart]
    seeds = [seed * 100_003 + 7 * i + 1 for i in range(members * restarts)]
    resolved = model_obj.resolve(data, rank)
    with numerics(dtype):
        W0, H0 = batch_starts(X_shared, masks, rank, inits, seeds, dtype)
        X_device = jnp.asarray(X_shared, dtype=dtype)
        if method == "svi":
            batch = fit_svi_batch(X_device, jnp.asarray(masks), rank, resolved, W0, H0,
                                  keys_for(seeds), **inference_options)
            score = batch.elbo
        else:
            batch = fit_map_batch(X_device, jnp.asarray(masks), rank, resolved, W0, H0,
                                  **inference_options)
            score = -batch.losses[:, -1]
    best = np.nanargmax(np.asarray(score, dtype=np.float64).reshape(members, restarts), axis=1)
    chosen = np.arange(members) * restarts + best
    Ws, _ = normalize(np.asarray(batch.values["W"], dtype=np.float64)[chosen],
                      np.asarray(batch.values["H"], dtype=np.float64)[chosen])
    reference_W = np.asarray(fit.W, dtype=np.float64)
    aligned = np.stack([W[:, align_permutation(W, reference_W)] for W in Ws])
    centre, aligned = aligned[0], aligned[1:]
    cosines = np.stack([np.diag(cosine_matrix(centre, W)) for W in aligned])
    table = _table(aligned, cosines, fit, prob, min_cosine)
    table.insert(0, "refit_cosine", np.diag(cosine_matrix(reference_W, centre)))
    settings = {"n_boot": n_boot, "method": method, "seed": seed, "prob": prob,
                "min_cosine": min_cosine, "restarts": restarts, "model": resolved.name,
                "shared_columns": int(columns.size), "n_samples": n_samples}
    return Bootstrap(table=table, W=aligned, cosines=cosines, resamples=resamples,
                     reference=fit, full_refit=centre,
                     converged=np.asarray(batch.converged)[chosen[1:]], settings=settings)


def _check_reference(fit, data, rank: int) -> None:
    if not isinstance(fit, Fit):
        raise TypeError(f"fit must be a bnmf Fit of the same data, got {type(fit).__name__}.")
    posterior = arviz_group(fit.idata, "posterior")
    shape = (posterior.sizes["feature"], posterior.sizes["observation"])
    if shape != data.shape:
        raise ValueError(f"fit was made from data of shape {shape}, but X has shape "
                         f"{data.shape}; pass the fit of this X.")
    if fit.rank != rank:
        raise ValueError(f"fit has rank {fit.rank} but rank={rank} was asked for.")


def _table(aligned: np.ndarray, cosines: np.ndarray, fit: Fit, prob: float,
           min_cosine: float) -> pd.DataFrame:
    """Per part: cosine summaries, stability and the two interval widths."""
    bootstrap_width = _interval_width(aligned, prob)
    if fit.num_draws > 1:
        draws = fit._draws("W")
        posterior_width = _interval_width(draws.reshape((-1,) + draws.shape[2:]), prob)
    else:
        posterior_width = np.full(aligned.shape[2], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = bootstrap_width / posterior_width
    return pd.DataFrame({
        "cosine_mean": cosines.mean(axis=0),
        "cosine_q05": np.quantile(cosines, 0.05, axis=0),
        "cosine_min": cosines.min(axis=0),
        "stability": (cosines >= min_cosine).mean(axis=0),
        "bootstrap_width": bootstrap_width,
        "posterior_width": posterior_width,
        "width_ratio": ratio,
    }, index=pd.RangeIndex(aligned.shape[2], name="component"))
