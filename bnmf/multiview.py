r"""Joint multi-view NMF: ``bnmf.fit({"rna": X1, "atac": X2}, rank, model={...})``.

Several data types measured on the same samples, ``X⁽ᵛ⁾ ≈ W⁽ᵛ⁾ H`` with one shared H
(:mod:`bnmf.models.multiview` has the generative model). :func:`fit_multiview` matches the
views' samples (by label for DataFrames and AnnData; a sample missing from a view is masked
there, not dropped), fits, and returns a :class:`MultiViewFit`.

Why a result type of its own rather than :class:`bnmf.Fit`: a Fit is one matrix, one
feature axis, one ``W`` whose columns sum to 1 with ``H`` carrying the scale, and most of its
methods (``log_likelihood``, ``posterior_predictive``, ``to_anndata``, ``dispersion_check``)
are built around that one X. Here there are V feature axes, V likelihoods and one H that no
single view's normalization can carry. ``MultiViewFit`` keeps the joint posterior (``W`` a
dict, ``H`` shared, a feature dim per view) and hands out each view as a plain :class:`Fit`
(:meth:`MultiViewFit.view_fit`) for everything a one-matrix fit already does, so nothing of
Fit is rewritten or bent.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .data import Data, check_rank, prepare, to_device
from .inference import METHODS, Problem, RawPosterior
from .inference.common import numerics
from .inference.multiview import fit_multiview_map
from .models import MODELS, get_model
from .models.base import check_method, site_dims
from .models.multiview import MultiView, check_view_name, view_family
from .options import check_number, check_options, check_prob, check_seed
from .posterior import (
    DRAW_DIMS,
    MCMC_METHODS,
    BnmfWarning,
    Fit,
    PosteriorMetadata,
    _bnmf_version,
    _jsonable,
    align_draws,
    arviz_group,
    build_idata,
    register_result_kind,
    to_arviz,
    write_netcdf,
)

__all__ = ["MULTIVIEW_METHODS", "MultiViewFit", "fit_multiview"]

MULTIVIEW_METHODS = {"map": fit_multiview_map, "svi": METHODS["svi"], "nuts": METHODS["nuts"]}
# method=None runs NUTS up to these sizes (as bnmf.fit for one matrix), else SVI
NUTS_MAX_LATENT = 1_000
NUTS_MAX_ENTRIES = 25_000
DTYPES = ("float32", "float64")


# ------------------------------------------------------------------------- input checks
def _view_models(X: Mapping, model) -> dict:
    """{view: unresolved single-view model} from ``model``: one name or model object for
    every view, or a dict with exactly the views of ``X``."""
    if isinstance(model, Mapping):
        missing = [v for v in X if v not in model]
        extra = [v for v in model if v not in X]
        if missing or extra:
            raise ValueError(
                f"model= names a model per view: views {list(X)}; "
                + (f"no model for {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"models for views not in X: {extra}" if extra else "") + ".")
        chosen = {v: model[v] for v in X}
    else:
        chosen = {v: model for v in X}
    models = {}
    for view, spec in chosen.items():
        try:
            sub = get_model(spec)
        except (TypeError, ValueError) as err:
            raise type(err)(f"view {view!r}: {err}") from err
        try:
            view_family(sub)
        except ValueError as err:
            raise ValueError(f"view {view!r}: {err}") from err
        models[view] = sub
    return models


def _view_masks(X: Mapping, mask) -> dict:
    if mask is None:
        return {v: None for v in X}
    if not isinstance(mask, Mapping):
        raise TypeError("with several views, mask= is a dict {view: mask} (views may be left "
                        f"out), got {type(mask).__name__}.")
    extra = [v for v in mask if v not in X]
    if extra:
        raise ValueError(f"mask= names views not in X: {extra} (views: {list(X)}).")
    return {v: mask.get(v) for v in X}


def _union(names: list) -> pd.Index:
    """Every sample label of the views, in order of first appearance."""
    seen = {}
    for index in names:
        for label in index:
            seen.setdefault(label, None)
    return pd.Index(list(seen))


def align_views(views: dict) -> dict:
    """Put every view's :class:`Data` on one sample axis.

    Labelled views (DataFrame, AnnData) are matched by sample label: the axis is the union
    of their labels, and a view's samples it lacks are unobserved there (masked, never
    dropped). Unlabelled views (arrays) must have the same number of samples, taken in order.
    Raises a ValueError naming the views for a mix of the two, differing sample counts of
    arrays, repeated labels, or a view that shares no sample with the others."""
    names = list(views)
    labelled = [v for v in names if views[v].has_labels]
    if labelled and len(labelled) < len(names):
        plain = [v for v in names if v not in labelled]
        raise ValueError(
            f"views {labelled} have sample labels (DataFrame/AnnData) and {plain} do not "
            "(arrays); give every view labelled, to match samples by label, or every view as "
            "an array with the same samples in the same order.")
    if not labelled:
        counts = {v: views[v].shape[1] for v in names}
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"the views have different numbers of samples {counts}; arrays are matched "
                "by position, so give DataFrames (or AnnData) labelled by sample to match them "
                "by label (a sample missing from a view is then masked there).")
        return dict(views)
    for v in names:
        index = views[v].observation_names
        if index.has_duplicates:
            raise ValueError(f"view {v!r} repeats sample labels "
                             f"{list(index[index.duplicated()][:3])}; make them unique.")
    for v in names:
        others = _union([views[o].observation_names for o in names if o != v])
        if not views[v].observation_names.isin(others).any():
            raise ValueError(
                f"view {v!r} shares no sample label with the other views (its first labels "
                f"{list(views[v].observation_names[:3])}, theirs {list(others[:3])}); the "
                "views must be measured on the same samples.")
    axis = _union([views[v].observation_names for v in names])
    return {v: _reindexed(views[v], axis) for v in names}


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _reindexed(data: Data, axis: pd.Index) -> Data:
    """``data`` on the sample axis ``axis``: its samples in their places, the others
    unobserved (value 0, mask False)."""
    if data.observation_names.equals(axis):
        return data
    position = axis.get_indexer(data.observation_names)
    values = np.zeros((data.shape[0], len(axis)), data.values.dtype)
    mask = np.zeros((data.shape[0], len(axis)), bool)
    values[:, position] = data.values
    mask[:, position] = data.mask
    return dataclasses.replace(data, values=_frozen(values), mask=_frozen(mask),
                               observation_names=axis, sparse=None, hidden=None)


# --------------------------------------------------------------------------------- fit
def _default_method(views: dict, rank: int, options: dict) -> tuple[str, str]:
    n_samples = next(iter(views.values())).shape[1]
    latent = rank * (n_samples + sum(d.shape[0] for d in views.values()))
    entries = sum(d.shape[0] * d.shape[1] for d in views.values())
    accepts = set(options) <= _accepted("nuts")
    if latent <= NUTS_MAX_LATENT and entries <= NUTS_MAX_ENTRIES and accepts:
        return "nuts", (f"nuts: small problem ({latent} latent entries, {entries} data "
                        "entries); the reference posterior")
    return "svi", (f"svi: {latent} latent entries, {entries} data entries: too large for "
                   "NUTS by default; variational posterior, intervals narrower than "
                   "calibrated (experiments/results/calibration.md)")


def _accepted(method: str) -> set:
    return set(inspect.signature(MULTIVIEW_METHODS[method]).parameters) - {"problem", "seed"}


def fit_multiview(X: Mapping, rank: int, model="poisson", method: str | None = None,
                  seed: int = 0, mask=None, *, missing: str = "error", dtype: str = "float32",
                  h_shape: float = 1.0, **options) -> MultiViewFit:
    r"""Fit a joint multi-view NMF :math:`X^{(v)} \approx W^{(v)} H` with H shared.

    Called by :func:`bnmf.fit` when ``X`` is a dict.

    Parameters
    ----------
    X : dict {view: matrix}
        At least two views, each (n_features_v, n_samples) as :func:`bnmf.fit` takes it
        (array, DataFrame, AnnData). Labelled views are matched by sample label (the union
        of the labels; a sample missing from a view is unobserved there); arrays must have the
        same samples in the same order. View names are letters, digits and ``_``.
    rank : int
    model : str, model object, or dict {view: str or model object}
        ``"poisson"``, ``"negbin"`` or ``"gaussian"`` (or such a model object, e.g.
        ``NegativeBinomial(dispersion="shared")``) per view; one value applies to every view.
    method : {"map", "svi", "nuts"}, optional
        None: NUTS on small problems, else SVI (``fit.info["method_choice"]``).
    mask : dict {view: bool mask}, optional
        True where observed, per view (views may be left out).
    missing, dtype, seed
        As for :func:`bnmf.fit`.
    h_shape : float
        Shape (and rate) of H's gamma prior, mean 1.
    **options
        Options of the inference method (``max_iter``, ``tol``, ``init`` for MAP;
        ``max_steps``, ``num_draws``, ``guide`` for SVI; ``num_samples``, ``num_chains``
        for NUTS).

    Returns
    -------
    MultiViewFit
    """
    if not isinstance(X, Mapping) or len(X) < 2:
        raise ValueError("a multi-view fit needs a dict of at least two views {name: matrix}; "
                         "pass one matrix itself for a single view.")
    for view in X:
        check_view_name(view)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    seed = check_seed(seed)
    h_shape = check_number("h_shape", h_shape, 0.0, low_open=True)
    subs = _view_models(X, model)
    masks = _view_masks(X, mask)
    views = {}
    for view in X:
        try:
            views[view] = prepare(X[view], mask=masks[view], missing=missing,
                                  counts=subs[view].needs_counts)
        except (TypeError, ValueError) as err:
            raise type(err)(f"view {view!r}: {err}") from err
    views = align_views(views)
    shape = (sum(d.shape[0] for d in views.values()), next(iter(views.values())).shape[1])
    rank = check_rank(rank, shape)
    mv = MultiView(tuple(subs.items()), h_shape=h_shape)
    choice = None
    if method is None:
        method, choice = _default_method(views, rank, options)
    if method not in MULTIVIEW_METHODS:
        check_method(mv, method)  # a method of bnmf.fit the model lacks: names what it has
        raise ValueError(f"method must be one of {sorted(MULTIVIEW_METHODS)} or None for a "
                         f"multi-view fit, got {method!r}.")
    check_method(mv, method)
    unknown = sorted(set(options) - _accepted(method))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method={method!r} of a multi-view "
                        f"fit; it accepts {sorted(_accepted(method))} and h_shape.")
    options = check_options(options)
    resolved = mv.resolve(views, rank)
    with numerics(dtype):
        problem = Problem(
            X={v: to_device(d.values, dtype) for v, d in views.items()},
            mask={v: to_device(d.mask, bool) for v, d in views.items()},
            rank=rank, model=resolved)
        raw = MULTIVIEW_METHODS[method](problem, seed=int(seed), **options)
    if choice is not None:
        raw = raw._replace(info={**(raw.info or {}), "method_choice": choice})
    meta = {"method": method, "seed": int(seed), "dtype": dtype}
    return MultiViewFit(build_multiview_idata(raw, views, resolved, rank, meta))


# ----------------------------------------------------------------------- draws to idata
def normalize_views(draws: dict, views: tuple) -> dict:
    """Per draw, every component of H rescaled to mean 1 over the samples (its prior mean)
    and each view's W by the inverse, so every W⁽ᵛ⁾ H is unchanged."""
    draws = dict(draws)
    H = np.asarray(draws["H"])
    scale = H.mean(axis=-1, keepdims=True)  # (chain, draw, rank, 1)
    scale = np.where(scale > 0, scale, 1.0)
    draws["H"] = H / scale
    for view in views:
        draws[f"W_{view}"] = np.asarray(draws[f"W_{view}"]) * np.swapaxes(scale, -1, -2)
    return draws


def align_views_draws(draws: dict, model: MultiView, dims: dict) -> dict:
    """Components of every chain and draw aligned to the first chain's mean (Hungarian on
    cosine), matched on the views' parts stacked, each view's columns normalized to sum 1
    first so that no view's units dominate."""
    stacked = np.concatenate(
        [W / np.maximum(W.sum(axis=-2, keepdims=True), 1e-300)
         for W in (np.asarray(draws[f"W_{v}"]) for v in model.view_names)], axis=-2)
    aligned = align_draws({"W": stacked, **draws}, {"W": ("stacked", "component"), **dims})
    aligned.pop("W")
    return aligned


def _rhat_summary(posterior: xr.Dataset, sites: list) -> dict:
    import arviz as az

    rhat = az.rhat(posterior[sites])
    return {f"rhat_max_{name}": float(np.nanmax(rhat[name].values)) for name in sites}


def build_multiview_idata(raw: RawPosterior, views: dict, model: MultiView, rank: int,
                          meta: dict):
    """ArviZ container: aligned posterior draws of H (chain, draw, component, observation),
    ``W_<view>`` (chain, draw, feature_<view>, component) and the views' scales; each view's
    X (NaN where unobserved) and mask; the loss trace."""
    dims = site_dims(model)
    draws = normalize_views({k: np.asarray(v) for k, v in raw.draws.items()}, model.view_names)
    if meta["method"] != "map":
        draws = align_views_draws(draws, model, dims)
    first = next(iter(views.values()))
    n_chains, n_draws = draws["H"].shape[:2]
    coords = {"chain": np.arange(n_chains), "draw": np.arange(n_draws),
              "component": np.arange(rank),
              "observation": first.observation_names.to_numpy()}
    coords.update({f"feature_{v}": d.feature_names.to_numpy() for v, d in views.items()})
    attrs = {
        "result_kind": "multiview",
        "model": "multiview",
        "views": json.dumps([[v, sub.name, dataclasses.asdict(sub)] for v, sub in model.views]),
        "h_shape": float(model.h_shape),
        "method": meta["method"],
        "seed": meta["seed"],
        "rank": int(rank),
        "dtype": meta["dtype"],
        "inference_info": json.dumps(_jsonable(raw.info or {})),
        "elbo": float(raw.elbo) if raw.elbo is not None else float("nan"),
        "has_labels": int(first.has_labels),
        "bnmf_version": _bnmf_version(),
        "inference_library": "numpyro",
    }
    posterior = xr.Dataset({name: (DRAW_DIMS + dims[name], value)
                            for name, value in draws.items()}, coords=coords, attrs=attrs)
    if meta["method"] in MCMC_METHODS and n_chains >= 2 and n_draws >= 4:
        info = json.loads(attrs["inference_info"])
        info["diagnostics"] = _rhat_summary(posterior, ["H"] + [f"W_{v}" for v in views])
        posterior.attrs["inference_info"] = json.dumps(info)
    observed = xr.Dataset(
        {f"X_{v}": ((f"feature_{v}", "observation"), np.where(d.mask, d.values, np.nan))
         for v, d in views.items()}, coords={k: c for k, c in coords.items()
                                              if k.startswith("feature_") or k == "observation"})
    constant = xr.Dataset({f"mask_{v}": ((f"feature_{v}", "observation"), d.mask)
                           for v, d in views.items()}, coords=observed.coords)
    stats = xr.Dataset({"loss": (("iteration",), np.asarray(raw.losses, np.float64))})
    return to_arviz({"posterior": posterior, "observed_data": observed,
                     "constant_data": constant, "sample_stats": stats})


# ------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class MultiViewFit(PosteriorMetadata):
    """A fitted joint multi-view NMF (build with ``bnmf.fit({view: X, ...}, rank)``; reload
    with :func:`bnmf.load`).

    Scale convention: every component of H has mean 1 over the samples in every draw, and each
    view's W⁽ᵛ⁾ carries that view's units (``W[view] @ H`` is the view's fitted mean).

    Attributes
    ----------
    idata : arviz.InferenceData (ArviZ 0.x) or xarray.DataTree (ArviZ ≥ 1)
        ``posterior``: ``H`` (chain, draw, component, observation), ``W_<view>`` (chain,
        draw, feature_<view>, component), ``phi_<view>`` / ``sigma_<view>``; components
        aligned across draws. ``observed_data``: ``X_<view>`` (NaN where unobserved);
        ``constant_data``: ``mask_<view>``; ``sample_stats``: ``loss``.
    """

    idata: object

    @property
    def elbo(self) -> float | None:
        value = float(self._attrs["elbo"])
        return None if np.isnan(value) else value

    @property
    def model(self) -> MultiView:
        """The multi-view model with its resolved (data-driven) hyperparameters."""
        views = tuple((v, MODELS[name](**params))
                      for v, name, params in json.loads(self._attrs["views"]))
        return MultiView(views, h_shape=float(self._attrs["h_shape"]))

    @property
    def views(self) -> list:
        return [v for v, _, _ in json.loads(self._attrs["views"])]

    @property
    def num_draws(self) -> int:
        shape = self._posterior["H"].shape
        return shape[0] * shape[1]

    def _flat(self, name: str) -> np.ndarray:
        value = self._posterior[name].values
        return value.reshape((-1,) + value.shape[2:])

    def _check_view(self, view: str) -> str:
        if view not in self.views:
            raise ValueError(f"unknown view {view!r}; this fit has views {self.views}.")
        return view

    def _labelled(self, value: np.ndarray, name: str):
        if not int(self._attrs["has_labels"]):
            return value
        rows, cols = self._posterior[name].dims[2:]
        return pd.DataFrame(value, index=pd.Index(self._posterior[rows].values),
                            columns=pd.Index(self._posterior[cols].values))

    # ---- summaries
    @property
    def W(self) -> dict:
        """{view: posterior mean W⁽ᵛ⁾ (n_features_v, rank)} in the view's units (DataFrames
        when the input had labels)."""
        return {v: self._labelled(self._flat(f"W_{v}").mean(axis=0), f"W_{v}")
                for v in self.views}

    @property
    def H(self):
        """Posterior mean of the shared H (rank, n_samples); each component has mean 1."""
        return self._labelled(self._flat("H").mean(axis=0), "H")

    def posterior_mean(self, site: str):
        """Posterior mean of any site (e.g. ``"phi_atac"``), as a NumPy array."""
        if site not in self._posterior.data_vars:
            raise ValueError(f"unknown site {site!r}; sites: {list(self._posterior.data_vars)}.")
        return self._flat(site).mean(axis=0)

    def interval(self, prob: float = 0.9) -> dict:
        """Equal-tailed credible intervals: ``{"W": {view: (lower, upper)}, "H": (lower,
        upper)}``, each bound shaped like :attr:`W` [view] or :attr:`H`."""
        prob = check_prob(prob)
        if self.num_draws < 2:
            raise ValueError(f"a fit with method={self.method!r} is a point estimate and has "
                             "no credible interval; fit with method='svi' or 'nuts'.")
        tails = [(1 - prob) / 2, (1 + prob) / 2]

        def bounds(name):
            lower, upper = np.quantile(self._flat(name), tails, axis=0)
            return self._labelled(lower, name), self._labelled(upper, name)

        return {"W": {v: bounds(f"W_{v}") for v in self.views}, "H": bounds("H")}

    # ---- one view as a plain Fit
    def view_fit(self, view: str) -> Fit:
        """View ``view`` as a single-matrix :class:`~bnmf.Fit` of its own model: its W⁽ᵛ⁾
        (columns normalized to sum 1, as every Fit's) with H carrying that view's scale, its
        scale sites, X and mask, on the shared sample axis. Every Fit method then works on the
        view: ``log_likelihood``, ``posterior_predictive``, ``dispersion_check``,
        ``to_anndata``."""
        self._check_view(view)
        sub = self.model.view(view)
        family_sites = [site for site, _ in view_family(sub).extras(sub, view)]
        draws = {"W": self._posterior[f"W_{view}"].values, "H": self._posterior["H"].values}
        draws.update({site.split("_", 1)[0]: self._posterior[site].values
                      for site in family_sites})
        observed = arviz_group(self.idata, "observed_data")[f"X_{view}"]
        mask = arviz_group(self.idata, "constant_data")[f"mask_{view}"].values.astype(bool)
        X = np.where(mask, observed.values, 0.0)
        data = Data(values=_frozen(X), mask=_frozen(mask),
                    feature_names=pd.Index(observed[f"feature_{view}"].values),
                    observation_names=pd.Index(observed["observation"].values),
                    has_labels=bool(int(self._attrs["has_labels"])),
                    is_counts=bool(np.all(X == np.round(X))))
        raw = RawPosterior(draws=draws, losses=self.losses, elbo=self.elbo, info=self.info)
        meta = {"model": sub.name, "model_params": dataclasses.asdict(sub),
                "method": self.method, "seed": self.seed, "dtype": self._attrs["dtype"]}
        with warnings.catch_warnings():  # the joint fit reports its own chain diagnostics
            warnings.simplefilter("ignore", BnmfWarning)
            idata = build_idata(raw, data, self.rank, meta)
        return Fit(idata)

    def log_likelihood(self, view: str | None = None, X_new=None, mask=None):
        """Per-entry log posterior predictive density of one view, (n_features_v,
        n_samples), NaN where unobserved (see :meth:`bnmf.Fit.log_likelihood`; ``X_new``
        must be that view on the fit's sample axis). ``view=None``: a dict over the views
        (with the training data only)."""
        if view is None:
            if X_new is not None or mask is not None:
                raise ValueError("X_new= and mask= score one view: give view=.")
            return {v: self.view_fit(v).log_likelihood() for v in self.views}
        return self.view_fit(view).log_likelihood(X_new, mask)

    def save(self, path) -> None:
        """Write the fit to a netCDF-4 file; :func:`bnmf.load` reads it back exactly."""
        write_netcdf(self.idata, path)

    def __repr__(self) -> str:
        sizes = {v: self._posterior[f"W_{v}"].shape[2] for v in self.views}
        return (f"<bnmf.MultiViewFit views={sizes} method={self.method!r} rank={self.rank} "
                f"observations={self._posterior['H'].shape[3]} draws={self.num_draws}>")


register_result_kind("multiview", MultiViewFit)
