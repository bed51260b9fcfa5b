r"""Rank selection: ELBO, held-out predictive density and restart stability in one call.

For each rank asked, :func:`select_rank` fits the model ``restarts`` times on all observed
entries and ``restarts`` times on each of ``folds`` training masks, all in one compiled program
(:mod:`bnmf.inference.batch`), and reports side by side:

* ``elbo`` — the evidence lower bound of the full-data fits (mean and sd over restarts);
* ``heldout_lpd`` — the log posterior predictive density of held-out entries, per entry,
  :math:`\log \frac1S \sum_s p(X_{ij} \mid \theta_s)` over draws of the fold's best restart
  (mean and standard error over folds). For ``method="map"`` it is the plug-in density at the
  point estimate (the documented fallback);
* ``reconstruction_error`` — ‖X − W H‖_F / ‖X‖_F on observed entries, at the posterior mean;
* ``cophenetic`` — the cophenetic correlation of the consensus matrix of sample clusters
  (argmax of each column of H) across restarts (Brunet et al. 2004);
* ``stability`` / ``stability_min`` — the aligned cosine of W between each restart and the best
  one, averaged over restarts and components / the least stable component.

Decision rule (:func:`choose_rank`): the smallest rank whose held-out LPD lies within one
standard error of the best rank's, where the standard error is that of the paired difference
over held-out entries (every rank is scored on the same entries, so the difference is measured
far more precisely than either value; Vehtari, Gelman & Gabry 2017). The reason is given in
words with the figures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import squareform
from tqdm.auto import tqdm

from .data import Data, check_rank, prepare
from .fitting import (
    DTYPES,
    _check_inference_options,
    _inference_options,
    _split_options,
    default_method,
    fit,
    fit_data,
)
from .inference import METHODS as FIT_METHODS
from .inference import Problem
from .inference.batch import (
    batch_starts,
    fit_map_batch,
    fit_svi_batch,
    keys_for,
    member_raw,
)
from .inference.common import _stderr_is_terminal, numerics
from .models import get_model
from .options import check_integer, check_options, check_seed
from .posterior import Fit, align_permutation, build_idata, cosine_matrix, load, normalize

__all__ = [
    "TABLE_COLUMNS",
    "RankSelection",
    "choose_rank",
    "cophenetic_correlation",
    "heldout_masks",
    "select_rank",
]

# Methods whose restarts × folds of a rank run as one vmap-ed batch; the others (NUTS, CAVI,
# Gibbs) run as a loop of bnmf fits, scored from their posterior draws.
BATCHED_METHODS = ("svi", "map")
METHODS = tuple(FIT_METHODS)
TABLE_COLUMNS = ("elbo", "elbo_sd", "heldout_lpd", "heldout_lpd_se", "heldout_lpd_diff",
                 "heldout_lpd_diff_se", "reconstruction_error", "cophenetic", "stability",
                 "stability_min", "converged", "seconds")
_CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------- held-out masks
def heldout_masks(mask: np.ndarray, holdout: float, folds: int, seed: int = 0) -> np.ndarray:
    """Random, disjoint held-out masks, one per fold, that never hide a whole row or column.

    Parameters
    ----------
    mask : bool array of shape (n_features, n_samples)
        Observed entries (True); only these are ever held out.
    holdout : float in (0, 1)
        Fraction of the observed entries held out in each fold; ``folds * holdout`` ≤ 1.
    folds : int ≥ 1
    seed : int

    Returns
    -------
    bool array of shape (folds, n_features, n_samples)
        True where the entry is held out in that fold. Folds are disjoint, and in every fold
        each row and column of ``mask & ~heldout`` keeps at least one observed entry: an entry
        whose removal would empty its row or column is kept in training instead.
    """
    mask = np.asarray(mask, dtype=bool)
    _check_holdout(holdout, folds)
    rng = np.random.default_rng(seed)
    observed = np.flatnonzero(mask.ravel())
    order = rng.permutation(observed)
    size = int(round(holdout * observed.size))
    out = np.zeros((folds,) + mask.shape, dtype=bool)
    for f in range(folds):
        chosen = order[f * size:(f + 1) * size]
        out[f][np.unravel_index(chosen, mask.shape)] = True
        _keep_rows_and_columns(mask, out[f], rng)
    return out


def _keep_rows_and_columns(mask: np.ndarray, held: np.ndarray, rng) -> None:
    """Return held-out entries to training (in place) until no row or column is emptied."""
    for axis in (1, 0):
        train = mask & ~held
        empty = np.flatnonzero(mask.any(axis=axis) & ~train.any(axis=axis))
        for line in empty:
            if axis == 1:
                candidates = np.flatnonzero(held[line])
                held[line, rng.choice(candidates)] = False
            else:
                candidates = np.flatnonzero(held[:, line])
                held[rng.choice(candidates), line] = False


def _check_holdout(holdout, folds) -> None:
    check_integer("folds", folds, 1)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.floating)):
        raise TypeError(f"holdout must be a fraction in (0, 1), got {holdout!r}.")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout!r}.")
    if folds * holdout > 1 + 1e-12:
        raise ValueError(
            f"folds × holdout = {folds} × {holdout} exceeds 1, so disjoint folds cannot each "
            f"hold out {holdout:.0%} of the entries; lower holdout to at most {1 / folds:.3g} "
            "or use fewer folds."
        )


# ------------------------------------------------------------------------ stability measures
def consensus_matrix(labels: np.ndarray) -> np.ndarray:
    """Fraction of runs in which each pair of samples shares a cluster.

    ``labels`` is (n_runs, n_samples) of integer cluster labels; returns (n_samples, n_samples).
    """
    labels = np.asarray(labels)
    same = labels[:, :, None] == labels[:, None, :]
    return same.mean(axis=0)


def cophenetic_correlation(labels: np.ndarray) -> float:
    """Cophenetic correlation of the consensus clustering of ``labels`` (Brunet et al. 2004).

    The consensus matrix C over runs (``labels`` of shape (n_runs, n_samples)) gives distances
    1 − C; the correlation between those distances and the cophenetic distances of their
    average-linkage tree is 1 when every run finds the same partition and drops as runs
    disagree. When every distance is equal (all runs put all samples together, or one run
    only), the tree reproduces them exactly and the correlation is 1.
    """
    distances = squareform(1.0 - consensus_matrix(labels), checks=False)
    if distances.size == 0 or np.ptp(distances) == 0:
        return 1.0
    correlation, _ = cophenet(linkage(distances, method="average"), distances)
    return float(correlation)


def restart_stability(Ws: np.ndarray, best: int) -> tuple[float, float]:
    """Mean aligned cosine of each restart's W with the best restart's W.

    ``Ws`` is (n_restarts, n_features, rank). Returns (mean over restarts and components,
    minimum over components of the mean over restarts); NaN with one restart.
    """
    others = [r for r in range(Ws.shape[0]) if r != best]
    if not others:
        return float("nan"), float("nan")
    reference = Ws[best]
    cosines = []
    for r in others:
        perm = align_permutation(Ws[r], reference)
        cosines.append(np.diag(cosine_matrix(reference, Ws[r][:, perm])))
    per_component = np.mean(cosines, axis=0)
    return float(per_component.mean()), float(per_component.min())


# ------------------------------------------------------------------------- the decision rule
def choose_rank(table: pd.DataFrame, pointwise: dict) -> tuple[int, str, pd.DataFrame]:
    """Apply the one-standard-error rule to held-out predictive densities.

    Parameters
    ----------
    table : DataFrame indexed by rank with ``heldout_lpd`` and the stability columns.
    pointwise : dict rank -> ndarray of shape (n_heldout,)
        Log predictive density of every held-out entry (all folds, the same entries for every
        rank).

    Returns
    -------
    (best_rank, reason, table) with ``heldout_lpd_diff`` and ``heldout_lpd_diff_se`` (paired
    difference to the rank with the highest held-out LPD, per entry) filled in.

    The rule: let k* have the highest mean held-out LPD. A rank is *within one standard error*
    when its mean paired difference to k* is at least minus the standard error of that
    difference. The chosen rank is the smallest such rank: the simplest model that predicts
    unseen entries as well as the best one, up to the noise of the held-out score. When k*
    is the largest rank tried, the reason says so: the sweep should be extended.
    """
    ranks = list(table.index)
    finite = [k for k in ranks if np.isfinite(table.loc[k, "heldout_lpd"])]
    if not finite:
        raise ValueError("no rank has a finite held-out log predictive density; check the data.")
    top = max(finite, key=lambda k: table.loc[k, "heldout_lpd"])
    table = table.copy()
    for k in ranks:
        diff = pointwise[k] - pointwise[top]
        table.loc[k, "heldout_lpd_diff"] = float(diff.mean())
        table.loc[k, "heldout_lpd_diff_se"] = (
            float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0)
    within = [k for k in finite if table.loc[k, "heldout_lpd_diff"]
              >= -table.loc[k, "heldout_lpd_diff_se"]]
    best = min(within)
    row = table.loc[best]
    n = pointwise[top].size
    if best == top:
        reason = (f"rank {best} has the highest held-out log predictive density "
                  f"({row['heldout_lpd']:.4f} per entry over {n:,} held-out entries)")
    else:
        reason = (f"rank {best} is the smallest rank whose held-out log predictive density "
                  f"({row['heldout_lpd']:.4f} per entry) lies within one standard error of the "
                  f"best, rank {top} ({table.loc[top, 'heldout_lpd']:.4f}; paired difference "
                  f"{row['heldout_lpd_diff']:.4f} ± {row['heldout_lpd_diff_se']:.4f} over "
                  f"{n:,} held-out entries)")
    smaller = [k for k in ranks if k < best]
    if smaller:
        worst_gap = max(table.loc[k, "heldout_lpd_diff"] / max(table.loc[k, "heldout_lpd_diff_se"],
                                                               1e-300) for k in smaller)
        reason += (f"; every smaller rank is worse by more than one standard error "
                   f"(at least {-worst_gap:.1f} SE)")
    if top == max(ranks) and len(ranks) > 1:
        # The curve has not turned over: the true optimum may lie beyond the ranks tried.
        reason += (f"; the held-out density is highest at the largest rank tried ({top}), so "
                   "a larger rank may predict better still: extend `ranks` to check")
    stable = row["stability_min"]
    if np.isfinite(stable):
        reason += (f". Across restarts its parts have mean aligned cosine "
                   f"{row['stability']:.3f} (least stable part {stable:.3f}) and the sample "
                   f"clusters a cophenetic correlation of {row['cophenetic']:.3f}.")
    else:
        reason += "."
    return int(best), reason, table


# ----------------------------------------------------------------------------- the result
@dataclass
class RankSelection:
    """What :func:`select_rank` found.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per rank (index ``rank``), columns :data:`TABLE_COLUMNS`.
    best_rank : int
        The rank chosen by :func:`choose_rank`.
    reason : str
        Why, in words, with the figures.
    fits : dict rank -> Fit
        At each rank, the best restart (highest ELBO; log joint for MAP) fitted on all entries.
    settings : dict
        The options of the sweep.
    """

    table: pd.DataFrame
    best_rank: int
    reason: str
    fits: dict
    settings: dict = field(default_factory=dict)
    pointwise: dict = field(default_factory=dict, repr=False)
    ard: Fit | None = None

    @property
    def ard_rank_posterior(self) -> pd.Series | None:
        """With ``select_rank(..., ard=True)``: the ARD fit's posterior of the number of
        active components (:meth:`bnmf.Fit.rank_posterior`), else None."""
        return None if self.ard is None else self.ard.rank_posterior()

    def plot(self, figsize=(11, 7)):
        """Figure of held-out LPD (± SE), ELBO (± SD over restarts), stability and
        reconstruction error against rank, with the chosen rank marked."""
        import matplotlib.pyplot as plt

        t = self.table
        ranks = t.index.to_numpy()
        fig, axes = plt.subplots(2, 2, figsize=figsize, sharex=True)
        panels = [
            (axes[0, 0], "heldout_lpd", "heldout_lpd_se", "held-out log pred. density / entry"),
            (axes[0, 1], "elbo", "elbo_sd", "ELBO (mean ± sd over restarts)"),
        ]
        for ax, col, err, title in panels:
            ax.errorbar(ranks, t[col], yerr=t[err], marker="o", capsize=3)
            ax.set_title(title, fontsize=10)
        ax = axes[1, 0]
        ax.plot(ranks, t["cophenetic"], marker="o", label="cophenetic (samples)")
        ax.plot(ranks, t["stability"], marker="s", label="mean aligned cosine of W")
        ax.plot(ranks, t["stability_min"], marker="^", ls="--", label="least stable part")
        ax.set_title("stability across restarts", fontsize=10)
        ax.legend(fontsize=8)
        ax = axes[1, 1]
        ax.plot(ranks, t["reconstruction_error"], marker="o")
        ax.set_title("relative reconstruction error ‖X − WH‖/‖X‖", fontsize=10)
        for ax in axes.ravel():
            ax.axvline(self.best_rank, color="tab:red", ls=":", lw=1.5)
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("rank")
        fig.suptitle(f"rank selection: best rank {self.best_rank} (red)", fontsize=11)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return (f"<bnmf.RankSelection ranks={list(self.table.index)} best_rank={self.best_rank}>"
                f"\n{self.reason}")


# ------------------------------------------------------------------------------- checkpoint
def _fingerprint(data: Data) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(data.values).tobytes())
    digest.update(np.ascontiguousarray(data.mask).tobytes())
    return digest.hexdigest()


def _fit_path(checkpoint: Path, rank: int) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}_rank{rank}.nc")


def _load_checkpoint(checkpoint: Path, settings: dict):
    """Finished ranks of an earlier sweep: (rows, pointwise, fits); empty if no file."""
    if not checkpoint.exists():
        return {}, {}, {}
    with xr.open_dataset(checkpoint, engine="h5netcdf") as ds:
        ds = ds.load()
    saved = json.loads(ds.attrs["settings"])
    if saved != settings:
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise ValueError(
            f"checkpoint {checkpoint} was written by a sweep with other settings or data "
            f"(differs in {changed}); pass a new checkpoint path, or delete the file to start "
            "over."
        )
    rows, pointwise, fits = {}, {}, {}
    for k in ds["rank"].values.tolist():
        rows[k] = {c: float(ds[c].sel(rank=k)) for c in TABLE_COLUMNS}
        pointwise[k] = ds["pointwise"].sel(rank=k).values
        fits[k] = load(_fit_path(checkpoint, k))
    return rows, pointwise, fits


def _write_checkpoint(checkpoint: Path, settings: dict, rows: dict, pointwise: dict,
                      fits: dict, new_rank: int) -> None:
    """Write the finished ranks; replace the file atomically so an interruption mid-write
    leaves the previous checkpoint intact."""
    fits[new_rank].save(_fit_path(checkpoint, new_rank))
    ranks = sorted(rows)
    variables = {c: (("rank",), [rows[k][c] for k in ranks]) for c in TABLE_COLUMNS}
    variables["pointwise"] = (("rank", "entry"), np.stack([pointwise[k] for k in ranks]))
    ds = xr.Dataset(variables, coords={"rank": ranks},
                    attrs={"settings": json.dumps(settings), "version": _CHECKPOINT_VERSION})
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, checkpoint)


# ---------------------------------------------------------------------------- one rank
def _as_fit(batch, index, data: Data, train_mask: np.ndarray, rank, model, method, seed,
            dtype, num_draws, info) -> Fit:
    """One batch member as a :class:`Fit` whose data record what the member saw."""
    seen = dataclasses.replace(data, mask=train_mask,
                               values=np.where(train_mask, data.values, 0.0))
    problem = Problem(None, None, rank, model)
    raw = member_raw(batch, index, problem, seed=seed, num_draws=num_draws, info=info)
    meta = {"model": model.name, "model_params": dataclasses.asdict(model), "method": method,
            "seed": int(seed), "dtype": dtype}
    return Fit(build_idata(raw, seen, rank, meta))


def _relative_error(fit: Fit, data: Data) -> float:
    W, H = np.asarray(fit.W, dtype=np.float64), np.asarray(fit.H, dtype=np.float64)
    residual = np.where(data.mask, data.values - W @ H, 0.0)
    return float(np.linalg.norm(residual) / max(np.linalg.norm(data.values), 1e-300))


def _table_row(elbo, fold_means, reconstruction_error: float, cophenetic: float,
               stability: float, stability_min: float, converged: float,
               start_time: float) -> dict:
    """One rank's row of the table from its restarts' ELBOs (restarts,) and its folds' mean
    held-out densities (folds,); the paired differences are filled in by :func:`choose_rank`."""
    elbo, fold_means = np.asarray(elbo), np.asarray(fold_means)
    restarts, folds = elbo.size, fold_means.size
    return {
        "elbo": float(np.mean(elbo)),
        "elbo_sd": float(np.std(elbo, ddof=1)) if restarts > 1 else float("nan"),
        "heldout_lpd": float(fold_means.mean()),
        "heldout_lpd_se": (float(fold_means.std(ddof=1) / np.sqrt(folds)) if folds > 1
                           else float("nan")),
        "heldout_lpd_diff": float("nan"),
        "heldout_lpd_diff_se": float("nan"),
        "reconstruction_error": reconstruction_error,
        "cophenetic": cophenetic,
        "stability": stability,
        "stability_min": stability_min,
        "converged": converged,
        "seconds": time.perf_counter() - start_time,
    }


def fit_rank(data: Data, rank: int, model_obj, method: str, heldout: np.ndarray, restarts: int,
             seed: int, dtype: str, num_draws: int, options: dict):
    """Fit one rank: restarts × (all entries + every fold) in one batch; score and summarise.

    Returns (row dict, pointwise held-out LPD (n_heldout,), best full-data Fit).
    """
    start_time = time.perf_counter()
    model = model_obj.resolve(data, rank)
    folds = heldout.shape[0]
    train = np.concatenate([data.mask[None], data.mask[None] & ~heldout])  # (folds + 1, ...)
    group = np.repeat(np.arange(folds + 1), restarts)        # which mask each member uses
    restart = np.tile(np.arange(restarts), folds + 1)
    masks = train[group]
    inits = ["nndsvda" if r == 0 else "random" for r in restart]
    member_seeds = [seed * 100_003 + rank * 1_009 + 31 * g + r for g, r in zip(group, restart)]
    with numerics(dtype):
        X = jnp.asarray(data.values, dtype=dtype)
        W0, H0 = batch_starts(data.values, masks, rank, inits, member_seeds, dtype)
        if method == "svi":
            batch = fit_svi_batch(X, jnp.asarray(masks), rank, model, W0, H0,
                                  keys_for(member_seeds), **options)
            score = batch.elbo
        else:
            batch = fit_map_batch(X, jnp.asarray(masks), rank, model, W0, H0, **options)
            score = -batch.losses[:, -1]
        info = {"algorithm": f"{method}-batch", "restarts": restarts, "folds": folds}
        best = [int(np.flatnonzero(group == g)[np.nanargmax(score[group == g])])
                for g in range(folds + 1)]
        fits = {g: _as_fit(batch, best[g], data, train[g], rank, model, method,
                           member_seeds[best[g]], dtype, num_draws, info)
                for g in range(folds + 1)}
    pointwise, fold_means = [], []
    for f in range(folds):
        lpd = fits[f + 1].log_likelihood(data.values, mask=heldout[f])
        pointwise.append(lpd[heldout[f]])
        fold_means.append(pointwise[-1].mean())
    full = np.flatnonzero(group == 0)
    Ws, Hs = normalize(np.asarray(batch.values["W"])[full], np.asarray(batch.values["H"])[full])
    best_full = int(np.nanargmax(score[full]))
    stability, stability_min = restart_stability(Ws, best_full)
    cophenetic = (cophenetic_correlation(Hs.argmax(axis=1)) if restarts > 1 else float("nan"))
    elbo = score[full] if method == "svi" else np.full(restarts, np.nan)
    row = _table_row(elbo, fold_means, _relative_error(fits[0], data), cophenetic,
                     stability, stability_min, float(np.mean(batch.converged)), start_time)
    return row, np.concatenate(pointwise), fits[0]


def fit_rank_loop(data: Data, rank: int, model_obj, method: str, heldout: np.ndarray,
                  restarts: int, seed: int, dtype: str, num_draws: int, options: dict):
    """:func:`fit_rank` for methods without a batched program (NUTS, CAVI, Gibbs): one
    :func:`bnmf.fitting.fit_data` per restart and mask; held-out entries are scored by the log
    posterior predictive density from each fit's draws, restarts compared by their mean log
    predictive density of the training entries (the ELBO where the method has one)."""
    start_time = time.perf_counter()
    folds = heldout.shape[0]
    train = np.concatenate([data.mask[None], data.mask[None] & ~heldout])
    fits, scores, converged = {}, {}, []
    draws = {"num_draws": num_draws} if "num_draws" in _inference_options(method) else {}
    for g in range(folds + 1):
        seen = dataclasses.replace(data, mask=train[g],
                                   values=np.where(train[g], data.values, 0.0))
        members = []
        for r in range(restarts):
            member_seed = seed * 100_003 + rank * 1_009 + 31 * g + r
            fit = fit_data(seen, rank, model_obj, method, seed=member_seed, dtype=dtype,
                           init="nndsvda" if r == 0 else "random", progress=False,
                           **draws, **options)
            score = fit.elbo if fit.elbo is not None else float(
                np.nanmean(fit.log_likelihood()))
            members.append((score, fit))
            converged.append(float(fit.info.get("converged", np.nan)))
        scores[g] = np.array([s for s, _ in members])
        fits[g] = [f for _, f in members]
    best = {g: int(np.nanargmax(scores[g])) for g in scores}
    pointwise, fold_means = [], []
    for f in range(folds):
        lpd = fits[f + 1][best[f + 1]].log_likelihood(data.values, mask=heldout[f])
        pointwise.append(lpd[heldout[f]])
        fold_means.append(pointwise[-1].mean())
    Ws = np.stack([np.asarray(fit.W, dtype=np.float64) for fit in fits[0]])
    Hs = np.stack([np.asarray(fit.H, dtype=np.float64) for fit in fits[0]])
    stability, stability_min = restart_stability(Ws, best[0])
    cophenetic = cophenetic_correlation(Hs.argmax(axis=1)) if restarts > 1 else float("nan")
    has_elbo = fits[0][0].elbo is not None
    elbo = scores[0] if has_elbo else np.full(restarts, np.nan)
    converged = float(np.nanmean(converged)) if np.isfinite(converged).any() else 1.0
    row = _table_row(elbo, fold_means, _relative_error(fits[0][best[0]], data), cophenetic,
                     stability, stability_min, converged, start_time)
    return row, np.concatenate(pointwise), fits[0][best[0]]


def rank_method(method: str | None, model_obj, shape: tuple[int, int], rank: int,
                options: dict) -> str:
    """The method a rank is fitted with: ``method``, or for None the one ``bnmf.fit(X, rank)``
    would run (:func:`bnmf.fitting.default_method`)."""
    return method if method is not None else default_method(model_obj, shape, rank, options)[0]


# ------------------------------------------------------------------------------- public
def _check_ranks(ranks, shape) -> list[int]:
    if isinstance(ranks, (int, np.integer)) or isinstance(ranks, (str, bytes)):
        raise TypeError(
            f"ranks must be a sequence of integers such as range(2, 11), got {ranks!r}.")
    try:
        values = list(ranks)
    except TypeError as err:
        raise TypeError(
            f"ranks must be a sequence of integers such as range(2, 11), got {ranks!r}.") from err
    if not values:
        raise ValueError("ranks is empty; give at least one rank, e.g. range(2, 11).")
    checked = [check_rank(k, shape) for k in values]
    if len(set(checked)) != len(checked):
        raise ValueError(f"ranks has repeated values {sorted(checked)}; give each rank once.")
    return sorted(checked)


def _check_int(name: str, value, minimum: int) -> int:
    return check_integer(name, value, minimum)


def select_rank(X, ranks=range(2, 11), model="poisson", method: str | None = None,
                holdout: float = 0.1, folds: int = 3, restarts: int = 4, seed: int = 0,
                mask=None, *, missing: str = "error", dtype: str = "float32",
                num_draws: int = 1000, checkpoint=None, progress: bool | None = None,
                ard: bool | dict = False, **options) -> RankSelection:
    r"""Choose the rank of a Bayesian NMF from held-out predictive density, ELBO and stability.

    Parameters
    ----------
    X : array-like of shape (n_features, n_samples), DataFrame, SciPy sparse matrix or AnnData
        Non-negative data, features as rows (as :func:`bnmf.fit`).
    ranks : iterable of int
        Ranks to compare, each 1 ≤ k ≤ min(X.shape).
    model : {"poisson", "gaussian", "horseshoe"} or a model object
    method : {"map", "svi", "nuts", "cavi", "gibbs"}, optional
        Every method of :func:`bnmf.fit`. None (the default) runs at each rank the method
        ``bnmf.fit(X, rank)`` would run (:func:`bnmf.fitting.default_method`), so the rank is
        chosen with the posterior users then read intervals from; ``sel.table["method"]`` says
        which ran at each rank (near NUTS's size limit, small ranks may run NUTS and larger
        ones another method). Posterior methods score held-out entries by the log posterior
        predictive density (mean of the likelihood over the posterior draws); ``"map"`` by the
        plug-in density at the point estimate, and has no ELBO. ``"svi"`` and ``"map"`` run
        all restarts and folds of a rank as one batched program; the others as a loop of fits
        (options such as ``num_samples=`` or ``num_warmup=`` go to each).
    holdout : float in (0, 1)
        Fraction of observed entries held out in each fold (disjoint across folds, never a
        whole row or column; see :func:`heldout_masks`). Held-out entries enter no fit's
        likelihood: they are masked.
    folds : int
        Cross-validation folds; ``folds * holdout`` ≤ 1.
    restarts : int
        Fits per rank and per mask from different starts (the first NNDSVDa, the rest random).
    seed : int
        Same seed, same result.
    mask : bool array-like shaped like X, optional
        Observed entries (True); only these are fitted and held out.
    missing, dtype
        As :func:`bnmf.fit`.
    num_draws : int
        Posterior draws kept per fit (SVI) and used for the held-out density.
    checkpoint : str or path, optional
        A netCDF file written after every finished rank (each rank's fit goes next to it as
        ``<stem>_rank<k>.nc``). Calling again with the same file, data and settings skips the
        ranks it holds, so an interrupted sweep resumes without refitting them.
    progress : bool, optional
        Progress bar over ranks, with time left; None shows it when stderr is a terminal.
    ard : bool or dict
        Also fit ``model="ard"`` (Poisson counts) from ``max(ranks)`` components on all
        entries and put its answer beside the sweep's: ``sel.ard`` (the fit),
        ``sel.ard_rank_posterior`` and a sentence in ``sel.reason``. A dict gives that fit's
        options (``method=``, ``num_samples=``, ``max_rank=``, the model's ``a=``, ...); its
        default method is ``bnmf.fit``'s for the ARD model (Gibbs). Not checkpointed.
    **options
        Model hyperparameters (e.g. ``a=0.5``) and options of the batched inference
        (:func:`bnmf.inference.batch.fit_svi_batch`: ``max_steps``, ``min_steps``,
        ``learning_rate``, ...; :func:`~bnmf.inference.batch.fit_map_batch`: ``max_iter``,
        ``tol``).

    Returns
    -------
    RankSelection
        ``table`` (one row per rank), ``best_rank``, ``reason``, ``fits[rank]``, ``plot()``.

    Notes
    -----
    All ``restarts × (folds + 1)`` fits of a rank run as one ``jax.vmap``-ed program. The
    decision rule is :func:`choose_rank`.

    Examples
    --------
    >>> import numpy as np, bnmf
    >>> rng = np.random.default_rng(0)
    >>> X = rng.poisson(rng.gamma(1.0, 1.0, (30, 2)) @ rng.gamma(1.0, 20.0, (2, 40)))
    >>> sel = bnmf.select_rank(X, ranks=[1, 2, 3], method="map", restarts=2, folds=2)
    >>> sel.best_rank in (1, 2, 3)
    True
    """
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)} or None, got {method!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    check_seed(seed)
    ard_options = _ard_options(ard)
    model_options, inference_options = _split_options(model, options)
    inference_options = check_options(inference_options)
    model_obj = get_model(model, **model_options)
    data = prepare(X, mask=mask, missing=missing, counts=model_obj.needs_counts)
    ranks = _check_ranks(ranks, data.shape)
    restarts = _check_int("restarts", restarts, 1)
    folds = _check_int("folds", folds, 1)
    num_draws = _check_int("num_draws", num_draws, 1)
    _check_holdout(holdout, folds)
    heldout = heldout_masks(data.mask, holdout, folds, seed)
    methods = {k: rank_method(method, model_obj, data.shape, k, inference_options)
               for k in ranks}
    for name in sorted(set(methods.values())):
        _check_batch_options(name, inference_options)
    settings = {"model": repr(model_obj), "method": str(method), "holdout": float(holdout),
                "folds": folds, "restarts": restarts, "seed": int(seed), "dtype": dtype,
                "num_draws": num_draws, "options": repr(sorted(inference_options.items())),
                "data": _fingerprint(data)}
    rows, pointwise, fits = {}, {}, {}
    path = None
    if checkpoint is not None:
        path = Path(checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows, pointwise, fits = _load_checkpoint(path, settings)
    todo = [k for k in ranks if k not in rows]
    disable = not _stderr_is_terminal() if progress is None else not progress
    with tqdm(todo, desc="select_rank", unit="rank", disable=disable) as bar:
        for k in bar:
            bar.set_postfix(rank=k)
            if methods[k] in BATCHED_METHODS:
                rows[k], pointwise[k], fits[k] = fit_rank(
                    data, k, model_obj, methods[k], heldout, restarts, seed, dtype, num_draws,
                    inference_options)
            else:
                rows[k], pointwise[k], fits[k] = fit_rank_loop(
                    data, k, model_obj, methods[k], heldout, restarts, seed, dtype, num_draws,
                    inference_options)
            if path is not None:
                _write_checkpoint(path, settings, rows, pointwise, fits, k)
    table = pd.DataFrame([rows[k] for k in ranks], index=pd.Index(ranks, name="rank"),
                         columns=list(TABLE_COLUMNS))
    best, reason, table = choose_rank(table, {k: pointwise[k] for k in ranks})
    table["method"] = [methods[k] for k in ranks]  # what ran at each rank
    ard_fit = None
    if ard_options is not None:
        max_rank = ard_options.pop("max_rank", max(ranks))
        ard_fit = fit(X, max_rank, model="ard", seed=seed, mask=mask, missing=missing,
                      dtype=dtype, **ard_options)
        reason += " " + _ard_sentence(ard_fit, max_rank)
    return RankSelection(table=table, best_rank=best, reason=reason,
                         fits={k: fits[k] for k in ranks}, settings=settings,
                         pointwise={k: pointwise[k] for k in ranks}, ard=ard_fit)


def _ard_options(ard) -> dict | None:
    """select_rank's ``ard=`` as the ARD fit's options (None: no ARD fit)."""
    if ard is False or ard is None:
        return None
    if ard is True:
        return {}
    if isinstance(ard, dict):
        if "model" in ard:
            raise ValueError("ard= gives the options of the model='ard' fit; it takes no "
                             "'model' key.")
        return dict(ard)
    raise TypeError(f"ard must be True, False or a dict of the ARD fit's options, got {ard!r}.")


def _ard_sentence(ard_fit: Fit, max_rank: int) -> str:
    """The ARD fit's answer in words, for RankSelection.reason."""
    posterior = ard_fit.rank_posterior()
    mode = int(posterior.to_numpy().argmax())
    listed = ", ".join(f"{k}: {p:.2f}" for k, p in posterior.items() if p >= 0.05)
    return (f"Beside it, ARD (model='ard', method={ard_fit.method!r}, from {max_rank} "
            f"components) finds {mode} active components (posterior probability "
            f"{posterior[mode]:.2f}; P(rank) {listed}).")


def _check_batch_options(method: str, options: dict) -> None:
    import inspect

    if method not in BATCHED_METHODS:
        _check_inference_options(method, options)
        return
    function = fit_svi_batch if method == "svi" else fit_map_batch
    accepted = {name for name, p in inspect.signature(function).parameters.items()
                if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for select_rank with method={method!r}; it accepts "
            f"{sorted(accepted)} and the model's hyperparameters.")
