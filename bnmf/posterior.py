"""Posterior results: normalization, alignment, summaries, ArviZ conversion, save and load.

This is the only module that knows which ArviZ major version is installed: ArviZ 0.x keeps
groups in an ``InferenceData``, ArviZ ≥ 1 in an ``xarray.DataTree``. Everything else builds
plain ``xarray.Dataset`` groups and hands them to :func:`to_arviz`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib.metadata import PackageNotFoundError, version

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
from numpyro import handlers
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from .data import Data, prepare
from .inference import RawPosterior
from .inference.common import numerics
from .models import MODELS
from .models.base import site_dims, to_numpyro_layout
from .options import check_prob

__all__ = ["ARVIZ_MAJOR", "BnmfWarning", "Fit", "PosteriorMetadata", "align_permutation", "compare",
           "convergence_diagnostics", "dispersion_statistic", "load", "normalize", "read_anndata",
           "to_arviz"]

ARVIZ_MAJOR = int(az.__version__.split(".")[0])
DRAW_DIMS = ("chain", "draw")

# Dims of W and H after the (chain, draw) dims; every other site's dims come from its model's
# ``sites()`` (:class:`bnmf.models.base.Site`), so a new model's sites need no entry here.
SITE_DIMS = {"W": ("feature", "component"), "H": ("component", "observation")}


def model_site_dims(model_name: str, model_params: dict) -> dict:
    """{site: dims} of the fitted model (its class from :data:`bnmf.models.MODELS`)."""
    model = MODELS[model_name](**model_params)
    if not hasattr(model, "sites"):
        return dict(_UNDECLARED_SITE_DIMS)
    return {**SITE_DIMS, **site_dims(model)}


# Dims of the sites of models that do not declare sites() yet (after the chain, draw dims).
_UNDECLARED_SITE_DIMS = {
    "W": ("feature", "component"),
    "H": ("component", "observation"),
    "sigma": (),
    "tau_W": ("component",),
    "c2_W": ("component",),
    "lambda_W": ("feature", "component"),
    "tau_H": ("component",),
    "c2_H": ("component",),
    "lambda_H": ("observation", "component"),
    # learned per-component gamma shapes and rates (HierarchicalPoissonGamma)
    "a_W": ("component",),
    "b_W": ("component",),
    "a_H": ("component",),
    "b_H": ("component",),
    "relevance": ("component",),
}


@lru_cache(maxsize=1)  # a metadata lookup costs milliseconds; the version does not change
def _bnmf_version() -> str:
    try:
        return version("bnmf")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- ArviZ boundary
def to_arviz(groups: dict[str, xr.Dataset]):
    """Wrap named groups in the installed ArviZ's container (InferenceData or DataTree)."""
    if ARVIZ_MAJOR >= 1:
        return xr.DataTree.from_dict(groups)
    return az.InferenceData(**groups)


def arviz_group(idata, name: str) -> xr.Dataset:
    """The named group of an ArviZ container as an ``xarray.Dataset``."""
    if ARVIZ_MAJOR >= 1:
        return idata[name].to_dataset()
    return getattr(idata, name)


def arviz_group_names(idata) -> list[str]:
    if ARVIZ_MAJOR >= 1:
        return list(idata.children)
    return list(idata.groups())


def write_netcdf(idata, path) -> None:
    """Write an ArviZ container to a netCDF-4 file."""
    if ARVIZ_MAJOR >= 1:
        idata.to_netcdf(path, engine="h5netcdf")
    else:
        idata.to_netcdf(str(path), engine="h5netcdf")


def read_netcdf(path):
    """Read a container written by :func:`write_netcdf`, fully into memory."""
    if ARVIZ_MAJOR >= 1:
        tree = xr.open_datatree(path, engine="h5netcdf")
        loaded = tree.load()
        tree.close()
        return loaded
    groups = {}
    for name in _netcdf_groups(path):
        with xr.open_dataset(path, group=name, engine="h5netcdf") as ds:
            groups[name] = ds.load()
    return to_arviz(groups)


def _netcdf_groups(path) -> list[str]:
    import h5netcdf

    with h5netcdf.File(path, "r") as handle:
        return list(handle.groups)


# --------------------------------------------------------------- normalization and alignment
def normalize(W, H):
    """Rescale so every column of W sums to 1 and H carries the scale; W @ H is unchanged.

    Works on any leading (e.g. chain, draw) dims: W (..., n_features, rank), H (..., rank, n).
    A column of W that is all zero is left as it is.
    """
    scale = W.sum(axis=-2, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    return W / scale, H * np.swapaxes(scale, -1, -2)


def cosine_matrix(A, B):
    """Cosine similarity of the columns of A (n, k) against those of B (n, m): (k, m)."""
    A = A / np.maximum(np.linalg.norm(A, axis=-2, keepdims=True), 1e-300)
    B = B / np.maximum(np.linalg.norm(B, axis=-2, keepdims=True), 1e-300)
    return np.swapaxes(A, -1, -2) @ B


def align_permutation(W, W_ref) -> np.ndarray:
    """Permutation ``p`` of W's columns so that ``W[:, p]`` best matches ``W_ref`` (Hungarian
    matching on cosine similarity); both are (n_features, rank)."""
    rows, cols = linear_sum_assignment(-cosine_matrix(W_ref, W))
    return cols[np.argsort(rows)]


def align_draws(draws: dict, dims: dict | None = None) -> dict:
    """Align the components of every chain and draw to the mean of the first chain.

    Each chain's mean is matched first (chains may have settled on different labellings), then
    each draw to the aligned reference. Sites with a component axis (``dims``: site → dims
    after chain, draw; default W and H) are permuted together.
    """
    dims_of = SITE_DIMS if dims is None else dims
    W = draws["W"]
    n_chains, n_draws = W.shape[:2]
    reference = W[0].mean(axis=0)
    perms = np.empty((n_chains, n_draws, W.shape[-1]), dtype=int)
    for c in range(n_chains):
        chain_perm = align_permutation(W[c].mean(axis=0), reference)
        for d in range(n_draws):
            perms[c, d] = chain_perm[align_permutation(W[c, d][:, chain_perm], reference)]
    if (perms == np.arange(W.shape[-1])).all():
        # nothing to permute (the rule for a variational posterior, which has one labelling);
        # permuting would copy every draw
        return dict(draws)
    aligned = {}
    for name, value in draws.items():
        dims = dims_of.get(name, ())
        if "component" not in dims:
            aligned[name] = value
            continue
        axis = 2 + dims.index("component")
        index = perms.reshape(perms.shape + (1,) * (value.ndim - 3))
        index = np.moveaxis(index, 2, axis) if axis != 2 else index
        aligned[name] = np.take_along_axis(value, np.broadcast_to(
            index, value.shape[:axis] + (perms.shape[-1],) + value.shape[axis + 1:]), axis=axis)
    return aligned


# ------------------------------------------------------------------ MCMC convergence checks
class BnmfWarning(UserWarning):
    """A result bnmf computed but does not trust (e.g. chains that have not converged)."""


# Sampling methods whose chains are checked; thresholds of Vehtari et al. (2021).
MCMC_METHODS = ("nuts", "gibbs")
RHAT_MAX = 1.01
ESS_MIN = 100
# Share of entries allowed past a threshold before a BnmfWarning.
DIAGNOSTIC_TOLERANCE = 0.01


def convergence_diagnostics(draws: dict) -> xr.Dataset:
    """Rank-normalized split R-hat and bulk and tail ESS (ArviZ) of every entry of the
    normalized, aligned draws of W (feature, component) and H (component, observation):
    variables ``rhat_W``, ``ess_bulk_W``, ``ess_tail_W`` and the same for H."""
    posterior = xr.Dataset({name: (DRAW_DIMS + SITE_DIMS[name], np.asarray(draws[name]))
                            for name in ("W", "H")})
    rhat = az.rhat(posterior)
    bulk = az.ess(posterior, method="bulk")
    tail = az.ess(posterior, method="tail")
    return xr.Dataset({f"{stat}_{name}": source[name] for name in ("W", "H")
                       for stat, source in (("rhat", rhat), ("ess_bulk", bulk),
                                            ("ess_tail", tail))})


def diagnostics_summary(diagnostics: xr.Dataset) -> dict:
    """What fit.info reports: worst R-hat and ESS, and the share of entries past the
    thresholds, for W and H."""
    summary = {}
    for name in ("W", "H"):
        rhat = diagnostics[f"rhat_{name}"].values
        ess = np.minimum(diagnostics[f"ess_bulk_{name}"].values,
                         diagnostics[f"ess_tail_{name}"].values)
        summary[f"rhat_max_{name}"] = float(np.nanmax(rhat))
        summary[f"rhat_above_{RHAT_MAX}_{name}"] = float(np.mean(~(rhat <= RHAT_MAX)))
        summary[f"ess_min_{name}"] = float(np.nanmin(ess))
        summary[f"ess_below_{ESS_MIN}_{name}"] = float(np.mean(~(ess >= ESS_MIN)))
    return summary


def warn_if_unconverged(summary: dict, method: str) -> None:
    """A BnmfWarning naming what to do when more than 1% of the entries of W or H have R-hat
    above 1.01 or bulk/tail ESS below 100."""
    bad = [f"{name}: {summary[f'rhat_above_{RHAT_MAX}_{name}']:.1%} of entries with R-hat > "
           f"{RHAT_MAX}, {summary[f'ess_below_{ESS_MIN}_{name}']:.1%} with ESS < {ESS_MIN}"
           for name in ("W", "H")
           if max(summary[f"rhat_above_{RHAT_MAX}_{name}"],
                  summary[f"ess_below_{ESS_MIN}_{name}"]) > DIAGNOSTIC_TOLERANCE]
    if bad:
        warnings.warn(
            f"method={method!r}: the chains may not have converged ({'; '.join(bad)}). Run "
            "longer (num_warmup=, num_samples=), more chains (num_chains=), or thin=; see "
            "fit.info and fit.idata.sample_stats.", BnmfWarning, stacklevel=4)


# -------------------------------------------------------------------------------- the Fit
def _component_coords(rank: int) -> np.ndarray:
    return np.arange(rank)


def _posterior_dataset(draws: dict, data: Data, rank: int, attrs: dict,
                       dims: dict) -> xr.Dataset:
    coords = {
        "chain": np.arange(draws["W"].shape[0]),
        "draw": np.arange(draws["W"].shape[1]),
        "feature": data.feature_names.to_numpy(),
        "component": _component_coords(rank),
        "observation": data.observation_names.to_numpy(),
    }
    variables = {name: (DRAW_DIMS + dims[name], value) for name, value in draws.items()}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def build_idata(raw: RawPosterior, data: Data, rank: int, meta: dict):
    """ArviZ container of a fit: normalized, aligned posterior draws plus data and traces."""
    draws = dict(raw.draws)
    draws["W"], draws["H"] = normalize(np.asarray(draws["W"]), np.asarray(draws["H"]))
    dims = model_site_dims(meta["model"], meta["model_params"])
    if meta["method"] != "map":
        draws = align_draws(draws, dims)
    attrs = {
        "model": meta["model"],
        "model_params": json.dumps(meta["model_params"], default=_json_array),
        "method": meta["method"],
        "seed": int(meta["seed"]),
        "rank": int(rank),
        "dtype": meta["dtype"],
        "inference_info": json.dumps(_jsonable(raw.info or {})),
        "elbo": float(raw.elbo) if raw.elbo is not None else float("nan"),
        "has_labels": int(data.has_labels),
        "bnmf_version": _bnmf_version(),
        "inference_library": "numpyro",
    }
    posterior = _posterior_dataset(draws, data, rank, attrs, dims)
    dims = ("feature", "observation")
    coords = {"feature": posterior["feature"].values,
              "observation": posterior["observation"].values}
    if data.sparse is not None:  # sparse input stays O(nnz): its entries, not a dense copy
        observed, constant = _sparse_groups(data, coords)
    else:
        # Data.values is bnmf's own copy, so a fully observed X is stored without another
        # (a 5,000 x 5,000 float64 copy took 0.3 s, more than a tenth of a MAP fit)
        values = data.values if data.fully_observed else np.where(data.mask, data.values, np.nan)
        observed = xr.Dataset({"X": (dims, values)}, coords=coords)
        constant = xr.Dataset({"mask": (dims, data.mask)}, coords=coords)
    stats = xr.Dataset({"loss": (("iteration",), np.asarray(raw.losses, dtype=np.float64))})
    n_chains, n_draws = draws["W"].shape[:2]
    if meta["method"] in MCMC_METHODS and n_chains >= 2 and n_draws >= 4:
        diagnostics = convergence_diagnostics(draws).assign_coords(
            {dim: posterior[dim].values for dim in ("feature", "component", "observation")})
        stats = xr.merge([stats, diagnostics])
        summary = diagnostics_summary(diagnostics)
        posterior.attrs["inference_info"] = json.dumps(
            {**json.loads(posterior.attrs["inference_info"]), "diagnostics": summary})
        warn_if_unconverged(summary, meta["method"])
    return to_arviz({"posterior": posterior, "observed_data": observed,
                     "constant_data": constant, "sample_stats": stats})


def _sparse_groups(data: Data, coords: dict):
    """observed_data and constant_data of sparse input in coordinate form: the observed
    non-zero entries (``X_row``, ``X_col``, ``X_value``) and the unobserved ones
    (``hidden_row``, ``hidden_col``); every other entry is an observed zero."""
    observed = xr.Dataset({"X_row": ("entry", data.sparse.row.astype(np.int64)),
                           "X_col": ("entry", data.sparse.col.astype(np.int64)),
                           "X_value": ("entry", data.sparse.data)}, coords=coords)
    constant = xr.Dataset({"hidden_row": ("hidden", data.hidden[0]),
                           "hidden_col": ("hidden", data.hidden[1])}, coords=coords)
    return observed, constant


def _training_data(idata):
    """The fitted X (NaN where unobserved) and mask, dense, from either storage form."""
    observed = arviz_group(idata, "observed_data")
    constant = arviz_group(idata, "constant_data")
    if "X" in observed:
        return observed["X"].values, constant["mask"].values.astype(bool)
    shape = (observed["feature"].size, observed["observation"].size)
    X = sp.coo_matrix((observed["X_value"].values,
                       (observed["X_row"].values, observed["X_col"].values)), shape=shape).toarray()
    mask = np.ones(shape, bool)
    mask[constant["hidden_row"].values, constant["hidden_col"].values] = False
    return np.where(mask, X, np.nan), mask


def _json_array(value):
    """Arrays among a model's parameters (e.g. a spatial model's edge list) as JSON lists."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _jsonable(info: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in info.items()}


class PosteriorMetadata:
    """What every bnmf fit object reads from the attributes of its ``idata``'s posterior group
    (method, rank, seed, what the inference reported, its loss trace); :class:`Fit`,
    :class:`bnmf.NetworkFit` and :class:`bnmf.MultiViewFit` share it."""

    idata: object

    @property
    def _posterior(self) -> xr.Dataset:
        return arviz_group(self.idata, "posterior")

    @property
    def _attrs(self) -> dict:
        return self._posterior.attrs

    @property
    def method(self) -> str:
        return self._attrs["method"]

    @property
    def rank(self) -> int:
        return int(self._attrs["rank"])

    @property
    def seed(self) -> int:
        return int(self._attrs["seed"])

    @property
    def info(self) -> dict:
        """What the inference reported: algorithm, iterations, convergence, ..."""
        return json.loads(self._attrs["inference_info"])

    @property
    def losses(self) -> np.ndarray:
        """Optimisation trace: negative log joint (MAP), negative ELBO (SVI), potential energy
        (NUTS), negative log joint per draw (Gibbs)."""
        return arviz_group(self.idata, "sample_stats")["loss"].values


@dataclass(frozen=True)
class Fit(PosteriorMetadata):
    """A fitted Bayesian NMF: posterior draws of W and H and what is computed from them.

    Build one with :func:`bnmf.fit`; reload one with :func:`bnmf.load`.

    Attributes
    ----------
    idata : arviz.InferenceData (ArviZ 0.x) or xarray.DataTree (ArviZ ≥ 1)
        ``posterior`` holds ``W`` (chain, draw, feature, component), ``H`` (chain, draw,
        component, observation) and the model's other sites; every draw is normalized (columns
        of W sum to 1, H carries the scale) and components are aligned across chains and draws.
        ``observed_data`` holds X (NaN where unobserved), ``constant_data`` the mask, and
        ``sample_stats`` the optimisation trace ``loss``. Attributes of ``posterior`` name the
        model, its hyperparameters, the method, seed, rank, dtype and bnmf version.
    """

    idata: object

    # ---- metadata (method, rank, seed, info, losses: PosteriorMetadata)
    @property
    def model(self):
        """The model object with its resolved (data-driven) hyperparameters."""
        return MODELS[self._attrs["model"]](**json.loads(self._attrs["model_params"]))

    @property
    def elbo(self) -> float | None:
        """Final ELBO estimate (SVI), else None."""
        value = float(self._attrs["elbo"])
        return None if np.isnan(value) else value

    # ---- draws and summaries
    def _draws(self, name: str) -> np.ndarray:
        return arviz_group(self.idata, "posterior")[name].values

    def _labelled(self, value: np.ndarray, name: str):
        posterior = arviz_group(self.idata, "posterior")
        if not int(self._attrs["has_labels"]):
            return value
        row_dim, col_dim = SITE_DIMS[name]
        return pd.DataFrame(value, index=pd.Index(posterior[row_dim].values),
                            columns=pd.Index(posterior[col_dim].values))

    @property
    def W(self):
        """Posterior mean of W (n_features, rank); columns sum to 1. DataFrame if X had labels."""
        return self._labelled(self._draws("W").mean(axis=(0, 1)), "W")

    @property
    def H(self):
        """Posterior mean of H (rank, n_samples), carrying the scale. DataFrame if X had labels."""
        return self._labelled(self._draws("H").mean(axis=(0, 1)), "H")

    @property
    def num_draws(self) -> int:
        shape = self._draws("W").shape
        return shape[0] * shape[1]

    def rank_posterior(self, min_share: float = 0.01) -> pd.Series:
        """Posterior distribution of the number of active components.

        A component is *active* in a draw when it carries at least ``min_share`` of the
        expected total count, Σ_i W_ik Σ_j H_kj / Σ_ij (WH)_ij (for ``model="ard"`` fitted from
        ``max_rank`` components, the others have been shrunk away by their relevance). Returns
        the share of draws with each number of active components, indexed 0..rank; for a MAP
        fit, one draw. Nothing is pruned from the draws themselves.
        """
        if not 0 < min_share < 1:
            raise ValueError(f"min_share must lie in (0, 1), got {min_share!r}.")
        W, H = self._draws("W"), self._draws("H")
        mass = W.sum(axis=-2) * H.sum(axis=-1)  # (chain, draw, component)
        share = mass / np.maximum(mass.sum(axis=-1, keepdims=True), 1e-300)
        n_active = (share >= min_share).sum(axis=-1).ravel()
        counts = np.bincount(n_active, minlength=self.rank + 1)
        return pd.Series(counts / n_active.size, index=pd.RangeIndex(self.rank + 1,
                         name="active_components"), name="probability")

    def effective_rank(self, min_share: float = 0.01) -> int:
        """The posterior mode of the number of active components (see :meth:`rank_posterior`)."""
        return int(self.rank_posterior(min_share).to_numpy().argmax())

    def active_components(self, min_share: float = 0.01, prob: float = 0.5) -> list:
        """Components active (share of the expected count ≥ ``min_share``) in at least
        ``prob`` of the draws: index ``fit.W`` and ``fit.H`` with them to prune the summaries."""
        W, H = self._draws("W"), self._draws("H")
        mass = W.sum(axis=-2) * H.sum(axis=-1)
        share = mass / np.maximum(mass.sum(axis=-1, keepdims=True), 1e-300)
        frequency = (share >= min_share).mean(axis=(0, 1))
        return [int(k) for k in np.nonzero(frequency >= prob)[0]]

    def interval(self, prob: float = 0.9) -> dict:
        """Equal-tailed credible intervals: ``{"W": (lower, upper), "H": (lower, upper)}``.

        Each bound has the shape of :attr:`W` or :attr:`H`. Raises for a MAP fit, which has no
        posterior spread.
        """
        prob = check_prob(prob)
        if self.num_draws < 2:
            raise ValueError(
                f"a fit with method={self.method!r} is a point estimate and has no credible "
                "interval; fit with method='svi' or 'nuts'."
            )
        tails = [(1 - prob) / 2, (1 + prob) / 2]
        result = {}
        for name in ("W", "H"):
            draws = self._draws(name)
            flat = draws.reshape((-1,) + draws.shape[2:])
            lower, upper = np.quantile(flat, tails, axis=0)
            result[name] = (self._labelled(lower, name), self._labelled(upper, name))
        return result

    def log_likelihood(self, X_new=None, mask=None, max_chunk_entries: int = 2**24) -> np.ndarray:
        """Per-entry log posterior predictive density, shape (n_features, n_samples).

        ``log (1/S) Σ_s p(X_ij | θ_s)`` over the S posterior draws θ_s (for a MAP fit, the
        plug-in density at the point estimate). ``X_new`` (default: the training data) must have
        the fitted features and observations, e.g. the same matrix with held-out entries filled
        in; entries outside ``mask`` (default: every entry of ``X_new`` that is not NaN) are NaN.
        """
        if X_new is None:
            X_new, training_mask = _training_data(self.idata)
            mask = training_mask if mask is None else mask
        model = self.model
        data = prepare(X_new, mask=mask, missing="mask", counts=model.needs_counts, scoring=True)
        expected = (self._draws("W").shape[2], self._draws("H").shape[3])
        if data.shape != expected:
            raise ValueError(
                f"X_new has shape {data.shape} but the fit has {expected[0]} features and "
                f"{expected[1]} observations; score held-out entries of the fitted matrix."
            )
        posterior = arviz_group(self.idata, "posterior")
        flat = {name: posterior[name].values.reshape((-1,) + posterior[name].shape[2:])
                for name in posterior.data_vars}
        n_draws = flat["W"].shape[0]
        X = jnp.asarray(data.values, dtype=jax.dtypes.canonicalize_dtype(flat["W"].dtype))
        chunk = max(1, max_chunk_entries // X.size)
        total = np.full(data.shape, -np.inf)
        with numerics():  # W H in full precision on every backend, as in the fit
            for start in range(0, n_draws, chunk):
                sites = {name: jnp.asarray(value[start:start + chunk])
                         for name, value in flat.items()}
                ll = np.asarray(_log_likelihood_per_draw(model, X, sites), dtype=np.float64)
                total = np.logaddexp(total, logsumexp(ll, axis=0))
        lpd = total - np.log(n_draws)
        return np.where(data.mask, lpd, np.nan)

    # ---- posterior predictive checks and ArviZ's model comparison
    def _flat_sites(self) -> dict:
        """Every posterior site with the (chain, draw) dims stacked: name → (draws, ...)."""
        posterior = arviz_group(self.idata, "posterior")
        return {name: posterior[name].values.reshape((-1,) + posterior[name].shape[2:])
                for name in posterior.data_vars}

    def posterior_predictive(self, num_draws: int = 100, seed: int = 0,
                             max_chunk_entries: int = 2**24) -> Fit:
        """This fit with replicated data: X drawn from the model's own likelihood at posterior
        draws, in an ArviZ ``posterior_predictive`` group beside ``observed_data``.

        Each replicate takes one posterior draw θ (the ``num_draws`` draws evenly spaced over
        the fit's; drawn with replacement when it has fewer, e.g. the single draw of a MAP
        fit) and samples every entry of X (unobserved ones too) from the model's likelihood
        p(X | θ). The likelihood is the one of the model's NumPyro program (its observed site
        ``X``), so every model, present or future, is checked by its own sampling
        distribution. The group holds ``X`` (chain, draw, feature, observation) dense:
        ``num_draws × n_features × n_samples`` values. It is kept by :meth:`save`; a
        :func:`bnmf.plotting.plot_ppc` and :func:`bnmf.plotting.plot_dispersion` draw it, and
        :meth:`dispersion_check` tabulates it.

        Returns
        -------
        Fit
            A new Fit whose ``idata`` has every group of this one plus
            ``posterior_predictive`` (replacing an earlier one); ``attrs["seed"]`` records
            ``seed``.
        """
        if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) \
                or num_draws < 1:
            raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}.")
        sites = self._flat_sites()
        available = sites["W"].shape[0]
        rng = np.random.default_rng(seed)
        if num_draws <= available:
            chosen = np.linspace(0, available - 1, num_draws).round().astype(int)
        else:
            chosen = np.sort(rng.choice(available, num_draws, replace=True))
        model = self.model
        n_features, n_samples = sites["W"].shape[1], sites["H"].shape[2]
        shape = (n_features, n_samples)
        X = jnp.zeros(shape, dtype=jax.dtypes.canonicalize_dtype(sites["W"].dtype))
        keys = jax.random.split(jax.random.PRNGKey(int(seed)), num_draws)
        chunk = max(1, max_chunk_entries // (n_features * n_samples))
        blocks = []
        with numerics():
            for start in range(0, num_draws, chunk):
                picked = {name: jnp.asarray(value[chosen[start:start + chunk]])
                          for name, value in sites.items()}
                blocks.append(np.asarray(_replicate(model, X, picked, keys[start:start + chunk],
                                                    self.rank)))
        replicated = np.concatenate(blocks)[None]
        posterior = arviz_group(self.idata, "posterior")
        group = xr.Dataset(
            {"X": (DRAW_DIMS + ("feature", "observation"), replicated)},
            coords={"chain": [0], "draw": np.arange(num_draws),
                    "feature": posterior["feature"].values,
                    "observation": posterior["observation"].values},
            attrs={"seed": int(seed), "posterior_draws": json.dumps(chosen.tolist())})
        return Fit(_with_group(self.idata, "posterior_predictive", group))

    def replicated_data(self) -> np.ndarray:
        """The replicated X of :meth:`posterior_predictive`: (num_draws, n_features, n_samples)."""
        if "posterior_predictive" not in arviz_group_names(self.idata):
            raise ValueError("this fit has no posterior_predictive group; make one with "
                             "fit = fit.posterior_predictive(num_draws, seed).")
        X = arviz_group(self.idata, "posterior_predictive")["X"].values
        return X.reshape((-1,) + X.shape[2:])

    def dispersion_check(self, prob: float = 0.9) -> pd.DataFrame:
        """Observed against replicated dispersion (variance / mean over the observed samples)
        of each feature: does the likelihood allow for the spread of the data?

        For Poisson counts the ratio of the variance to the mean across samples is the
        model's own prediction only after the activities' differences are taken into account,
        so the statistic is compared with its distribution over replicated data sets (a
        posterior predictive check), not with 1. Observed ratios above their predictive
        interval in many features mean overdispersion: a negative binomial likelihood fits
        such counts.

        Returns
        -------
        DataFrame, one row per feature
            ``mean`` (observed), ``observed`` (variance / mean), ``lower``, ``median``,
            ``upper`` (the ``prob`` interval of the replicated ratio), ``p_value``
            (P(replicated ≥ observed)) and ``above`` (observed > upper). Features with no
            observed count have NaN ratios. ``attrs["fraction_above"]`` is the share of
            features above their interval (about ``(1 - prob) / 2`` when the model fits).
        """
        prob = check_prob(prob)
        replicated = self.replicated_data()
        X, mask = _training_data(self.idata)
        observed_mean, observed = dispersion_statistic(X, mask)
        _, draws = dispersion_statistic(replicated.astype(np.float64), mask)
        with warnings.catch_warnings():    # features without counts: all-NaN columns
            warnings.simplefilter("ignore", RuntimeWarning)
            lower, median, upper = np.nanquantile(
                draws, [(1 - prob) / 2, 0.5, (1 + prob) / 2], axis=0)
        p_value = np.mean(draws >= observed, axis=0)
        defined = np.isfinite(observed)
        table = pd.DataFrame(
            {"mean": observed_mean, "observed": observed, "lower": lower, "median": median,
             "upper": upper, "p_value": np.where(defined, p_value, np.nan),
             "above": defined & (observed > upper)},
            index=pd.Index(arviz_group(self.idata, "posterior")["feature"].values,
                           name="feature"))
        table.attrs["fraction_above"] = float(table["above"].sum() / max(defined.sum(), 1))
        table.attrs["prob"] = float(prob)
        return table

    def pointwise_log_likelihood(self, max_chunk_entries: int = 2**24) -> np.ndarray:
        """log p(X_ij | θ_s) of every posterior draw and training entry: (chain, draw,
        n_features, n_samples), float64, NaN where unobserved. Its log-mean-exp over draws is
        :meth:`log_likelihood`."""
        X_train, mask = _training_data(self.idata)
        data = prepare(X_train, mask=mask, missing="mask", counts=self.model.needs_counts,
                       scoring=True)
        sites = self._flat_sites()
        X = jnp.asarray(data.values, dtype=jax.dtypes.canonicalize_dtype(sites["W"].dtype))
        n_draws = sites["W"].shape[0]
        chunk = max(1, max_chunk_entries // X.size)
        blocks = []
        with numerics():
            for start in range(0, n_draws, chunk):
                picked = {name: jnp.asarray(value[start:start + chunk])
                          for name, value in sites.items()}
                blocks.append(np.asarray(_log_likelihood_per_draw(self.model, X, picked),
                                         dtype=np.float64))
        ll = np.where(data.mask, np.concatenate(blocks), np.nan)
        chains, draws = self._draws("W").shape[:2]
        return ll.reshape((chains, draws) + ll.shape[1:])

    def with_log_likelihood(self) -> Fit:
        """This fit with an ArviZ ``log_likelihood`` group, so ``arviz.loo(fit.idata)`` and
        ``arviz.compare`` work on it (:meth:`loo`, :func:`compare` call them).

        The group holds ``X``: log p(X_ij | θ_s) per draw (:meth:`pointwise_log_likelihood`),
        dims (chain, draw, feature, observation), or (chain, draw, entry) over the observed
        entries when some are unobserved (coordinates ``entry_feature`` and
        ``entry_observation`` name each entry). Its size is draws × entries (float64).
        """
        ll = self.pointwise_log_likelihood()
        posterior = arviz_group(self.idata, "posterior")
        features, observations = posterior["feature"].values, posterior["observation"].values
        _, mask = _training_data(self.idata)
        coords = {"chain": posterior["chain"].values, "draw": posterior["draw"].values}
        if mask.all():
            group = xr.Dataset({"X": (DRAW_DIMS + ("feature", "observation"), ll)},
                               coords={**coords, "feature": features,
                                       "observation": observations})
        else:
            rows, cols = np.nonzero(mask)
            group = xr.Dataset({"X": (DRAW_DIMS + ("entry",), ll[:, :, rows, cols])},
                               coords={**coords, "entry": np.arange(rows.size),
                                       "entry_feature": ("entry", features[rows]),
                                       "entry_observation": ("entry", observations[cols])})
        return Fit(_with_group(self.idata, "log_likelihood", group))

    def loo(self, pointwise: bool = False):
        """PSIS leave-one-out cross-validation of every observed entry, by the installed
        ArviZ (``arviz.loo``; ArviZ ≥ 1 takes it from ``arviz_stats``). Returns ArviZ's
        ``ELPDData``. Needs posterior draws (not a MAP fit)."""
        if self.num_draws < 2:
            raise ValueError(f"loo needs posterior draws; a fit with method={self.method!r} "
                             "is a point estimate.")
        fit = self if "log_likelihood" in arviz_group_names(self.idata) \
            else self.with_log_likelihood()
        return az.loo(fit.idata, pointwise=pointwise, var_name="X")

    # ---- AnnData (scanpy)
    def to_anndata(self, adata=None, key: str = "bnmf", prob: float = 0.9):
        """Write the parts and activities, with intervals, into an AnnData (cells × genes).

        bnmf's observations are AnnData's cells (``obs``), its features the genes (``var``), as
        when the fit was made from that AnnData. Written (``K`` = rank, the same layout as
        scanpy's ``pca``):

        * ``obsm["X_<key>"]`` (n_obs, K): posterior mean activities ``H.T`` (data units), so
          ``scanpy.pl.embedding(adata, basis="<key>")`` draws programs against each other;
          ``obsm["X_<key>_lower"]`` / ``["X_<key>_upper"]``: their ``prob`` credible interval;
        * ``obs["<key>_<k>"]`` for each program k: its share of the cell's total activity (from
          the posterior mean; the shares of a cell sum to 1). These are the columns scanpy
          colours by: ``scanpy.pl.embedding(adata, basis="umap", color=["bnmf_0", "bnmf_1"])``;
        * ``varm["<key>_W"]`` (n_vars, K): posterior mean programs (columns sum to 1), with
          ``varm["<key>_W_lower"]`` / ``["<key>_W_upper"]``;
        * ``uns["<key>"]``: the fit's metadata (model, its hyperparameters as JSON, method,
          rank, seed, prob, ELBO, bnmf version, obs column names) and ``summary``, a table with
          one row per program (total activity, mean share, top features).

        A MAP fit has no interval: only the means are written and ``uns[key]["prob"]`` is
        absent. :func:`read_anndata` reads everything back exactly (also after ``write_h5ad``).

        Parameters
        ----------
        adata : AnnData, optional
            Cells × genes matching the fit: with labelled input the fit's observation and
            feature names must be ``obs_names`` and ``var_names`` (any order; values are
            written in ``adata``'s order), else the shape must agree. Left out, a new AnnData
            of the fitted data (NaN where unobserved) is made.
        key : str
            Prefix of every key written (existing keys of that name are replaced).
        prob : float in (0, 1)

        Returns
        -------
        AnnData
            ``adata`` itself, changed in place, or the new one.

        Raises
        ------
        ImportError
            When ``anndata`` is not installed.
        ValueError
            When the cells or genes do not match the fit (naming which), or ``key`` is empty.
        """
        anndata = _import_anndata()
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}.")
        prob = check_prob(prob)
        posterior = arviz_group(self.idata, "posterior")
        features = pd.Index(posterior["feature"].values)
        observations = pd.Index(posterior["observation"].values)
        if adata is None:
            X, _ = _training_data(self.idata)
            adata = anndata.AnnData(
                X=X.T, obs=pd.DataFrame(index=observations.astype(str)),
                var=pd.DataFrame(index=features.astype(str)))
            cells, genes = np.arange(len(observations)), np.arange(len(features))
        else:
            if not isinstance(adata, anndata.AnnData):
                raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
            labelled = bool(int(self._attrs["has_labels"]))
            cells = _positions(adata.obs_names, observations, labelled, "obs_names (cells)",
                               "observations")
            genes = _positions(adata.var_names, features, labelled, "var_names (genes)",
                               "features")
        W, H = self._draws("W").mean(axis=(0, 1)), self._draws("H").mean(axis=(0, 1))
        H = H[:, cells]
        adata.obsm[f"X_{key}"] = np.ascontiguousarray(H.T)
        adata.varm[f"{key}_W"] = np.ascontiguousarray(W[genes])
        meta = {"model": self._attrs["model"], "model_params": self._attrs["model_params"],
                "method": self.method, "rank": self.rank, "seed": self.seed,
                "bnmf_version": str(self._attrs["bnmf_version"])}
        if self.elbo is not None:
            meta["elbo"] = self.elbo
        if self.num_draws > 1:
            bounds = self.interval(prob)
            low, high = (np.asarray(b) for b in bounds["H"])
            adata.obsm[f"X_{key}_lower"] = np.ascontiguousarray(low[:, cells].T)
            adata.obsm[f"X_{key}_upper"] = np.ascontiguousarray(high[:, cells].T)
            low, high = (np.asarray(b) for b in bounds["W"])
            adata.varm[f"{key}_W_lower"] = np.ascontiguousarray(low[genes])
            adata.varm[f"{key}_W_upper"] = np.ascontiguousarray(high[genes])
            meta["prob"] = float(prob)
        else:
            for name in (f"X_{key}_lower", f"X_{key}_upper"):
                adata.obsm.pop(name, None)
            for name in (f"{key}_W_lower", f"{key}_W_upper"):
                adata.varm.pop(name, None)
        columns = [f"{key}_{k}" for k in range(self.rank)]
        totals = H.sum(axis=0, keepdims=True)
        shares = H / np.where(totals > 0, totals, 1.0)
        for k, column in enumerate(columns):
            adata.obs[column] = shares[k]
        meta["obs_columns"] = np.asarray(columns)
        meta["summary"] = _program_table(W, H, shares, features, columns)
        adata.uns[key] = meta
        return adata

    # ---- persistence
    def save(self, path) -> None:
        """Write the fit to a netCDF-4 file; :func:`bnmf.load` reads it back exactly."""
        write_netcdf(self.idata, path)

    def __repr__(self) -> str:
        W = self._draws("W")
        return (f"<bnmf.Fit model={self._attrs['model']!r} method={self.method!r} "
                f"rank={self.rank} features={W.shape[2]} observations={self._draws('H').shape[3]} "
                f"draws={self.num_draws}>")


@jax.jit
def _log_likelihood_per_draw(model, X, sites: dict):
    """log p(X_ij | θ_s) of each draw, shape (draws, n_features, n_samples), for the stacked
    draws ``sites`` (name → (draws, ...)). Compiled once per kind of model and shapes: the
    model is a pytree of its hyperparameters (:func:`bnmf.models.base.hyperparameter_pytree`),
    so fits of other data, whose scales differ, reuse the program."""
    return jax.vmap(lambda site: model.log_likelihood(X, site["W"], site["H"], site))(sites)


@partial(jax.jit, static_argnames=("rank",))
def _replicate(model, X, sites: dict, keys, rank: int):
    """One replicated X (n_features, n_samples) per draw of ``sites`` (name → (draws, ...))
    and key: the distribution of the observed site ``X`` of the model's own NumPyro program,
    with every latent site fixed at the draw, sampled with the key."""
    mask = jnp.ones(X.shape, dtype=bool)

    def one(site, key):
        values = to_numpyro_layout(model, dict(site))   # the sites the model samples transposed
        program = handlers.substitute(handlers.seed(model.numpyro_model, 0), data=values)
        trace = handlers.trace(program).get_trace(X, mask, rank)
        return trace["X"]["fn"].sample(key).T

    return jax.vmap(one)(sites, keys)


def dispersion_statistic(X, mask):
    """Mean and variance / mean over the observed samples of each feature.

    X is (..., n_features, n_samples) (leading dims, e.g. replicated draws, are kept), mask
    (n_features, n_samples). Returns (mean, ratio), each (..., n_features); NaN where a
    feature has no positive observed mean or fewer than two observed samples.
    """
    X = np.where(mask, X, 0.0)
    n = mask.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = X.sum(axis=-1) / n
        variance = (np.where(mask, X - mean[..., None], 0.0) ** 2).sum(axis=-1) / (n - 1)
        ratio = np.where((mean > 0) & (n > 1), variance / mean, np.nan)
    return mean, ratio


def _with_group(idata, name: str, group: xr.Dataset):
    """A new ArviZ container with every group of ``idata`` and ``group`` under ``name``."""
    groups = {g: arviz_group(idata, g) for g in arviz_group_names(idata) if g != name}
    groups[name] = group
    return to_arviz(groups)


def compare(fits: dict, **options) -> pd.DataFrame:
    """Rank fits of the same data by PSIS-LOO expected log predictive density, with the
    installed ArviZ's ``compare`` (``options`` are passed to it, e.g. ``method``).

    Parameters
    ----------
    fits : dict
        name → Fit (each with posterior draws), all of the same X and mask.

    Returns
    -------
    DataFrame
        ArviZ's comparison table, best fit first.
    """
    if not isinstance(fits, dict) or len(fits) < 2:
        raise ValueError("compare needs a dict of at least two fits, name → Fit.")
    shapes = {name: _training_data(fit.idata)[0].shape for name, fit in fits.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"the fits are of data of different shapes {shapes}; compare fits "
                         "of the same X.")
    idatas = {}
    for name, fit in fits.items():
        if fit.num_draws < 2:
            raise ValueError(f"fit {name!r} is a point estimate (method={fit.method!r}); "
                             "compare needs posterior draws.")
        idatas[name] = fit.with_log_likelihood().idata
    return az.compare(idatas, var_name="X", **options)


def _import_anndata():
    try:
        import anndata
    except ImportError as err:
        raise ImportError("Fit.to_anndata and read_anndata need the anndata package: "
                          "pip install anndata") from err
    return anndata


def _positions(names, fitted: pd.Index, labelled: bool, what: str, fitted_what: str):
    """Positions in ``fitted`` of each of AnnData's ``names`` (so values come out in AnnData's
    order); by label when the fit had labels, else by position after checking the length."""
    names = pd.Index(names)
    if len(names) != len(fitted):
        raise ValueError(f"adata has {len(names)} {what} but the fit has {len(fitted)} "
                         f"{fitted_what}; AnnData is cells × genes, bnmf's X features × "
                         "samples (pass the AnnData the fit was made from).")
    if not labelled:
        return np.arange(len(fitted))
    if names.has_duplicates:
        raise ValueError(f"adata's {what} repeat {list(names[names.duplicated()][:3])}; "
                         "make them unique (adata.obs_names_make_unique()).")
    fitted = fitted.astype(str)
    position = fitted.get_indexer(names.astype(str))
    if (position < 0).any():
        unknown = list(names[position < 0][:3])
        missing = list(fitted.difference(names.astype(str))[:3])
        raise ValueError(f"adata's {what} do not match the fit's {fitted_what}: {unknown} are "
                         f"not in the fit and {missing} are not in adata.")
    return position


def _program_table(W, H, shares, features: pd.Index, columns, top: int = 10) -> pd.DataFrame:
    """One row per program: obs column, total activity, mean share, top features by loading."""
    return pd.DataFrame({
        "component": np.arange(W.shape[1]),
        "obs_column": columns,
        "total_activity": H.sum(axis=1).astype(np.float64),
        "mean_share": shares.mean(axis=1).astype(np.float64),
        "top_features": [", ".join(str(f) for f in features[np.argsort(-W[:, k])[:top]])
                         for k in range(W.shape[1])],
    }).set_index(pd.Index([str(c) for c in columns], name="program"))


def read_anndata(adata, key: str = "bnmf") -> dict:
    """What :meth:`Fit.to_anndata` wrote under ``key``, as bnmf's tables.

    Returns
    -------
    dict
        ``W`` (DataFrame genes × K), ``H`` (DataFrame K × cells), ``interval`` (``{"W": (lower,
        upper), "H": (lower, upper)}`` shaped like them, or None for a MAP fit), ``shares``
        (DataFrame K × cells, the obs columns), ``summary`` (the program table) and ``info``
        (the rest of ``uns[key]``: model, method, rank, ...).

    Raises
    ------
    ValueError
        When ``adata`` holds no bnmf result under ``key``.
    """
    if key not in adata.uns or f"X_{key}" not in adata.obsm or f"{key}_W" not in adata.varm:
        raise ValueError(f"adata holds no bnmf result under key {key!r} (uns[{key!r}], "
                         f"obsm['X_{key}'], varm['{key}_W']); write one with fit.to_anndata.")
    meta = dict(adata.uns[key])
    components = pd.RangeIndex(int(meta["rank"]))
    cells, genes = pd.Index(adata.obs_names), pd.Index(adata.var_names)

    def frames(obsm_name, varm_name):
        return (pd.DataFrame(np.asarray(adata.varm[varm_name]), index=genes, columns=components),
                pd.DataFrame(np.asarray(adata.obsm[obsm_name]).T, index=components,
                             columns=cells))

    W, H = frames(f"X_{key}", f"{key}_W")
    interval = None
    if f"X_{key}_lower" in adata.obsm:
        (W_low, H_low), (W_high, H_high) = (frames(f"X_{key}_{b}", f"{key}_W_{b}")
                                            for b in ("lower", "upper"))
        interval = {"W": (W_low, W_high), "H": (H_low, H_high)}
    columns = [str(c) for c in meta.pop("obs_columns")]
    shares = pd.DataFrame(adata.obs[columns].to_numpy().T, index=components, columns=cells)
    summary = meta.pop("summary")
    return {"W": W, "H": H, "interval": interval, "shares": shares, "summary": summary,
            "info": meta}


# result classes of other model families (e.g. bnmf.network.NetworkFit), by the "result_kind"
# attribute of their posterior group; a file without it holds a Fit
_RESULT_KINDS: dict = {}


def register_result_kind(kind: str, cls) -> None:
    """Let :func:`load` return ``cls(idata)`` for files whose posterior has
    ``attrs["result_kind"] == kind``."""
    _RESULT_KINDS[kind] = cls


def load(path):
    """Read a fit written by :meth:`Fit.save` (or by another result's ``save``)."""
    idata = read_netcdf(path)
    kind = arviz_group(idata, "posterior").attrs.get("result_kind")
    return _RESULT_KINDS[kind](idata) if kind in _RESULT_KINDS else Fit(idata)
