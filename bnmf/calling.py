r"""Calling known parts: refitting with presence probabilities, matching, decomposition,
and per-program summaries of a fit on single cells.

``refit`` keeps reference parts (e.g. COSMIC mutational signatures) fixed and infers each
sample's exposures under a cohort-level hierarchical prior:

.. math::

    \pi_k \sim \mathrm{Gamma}(0.1, 0.1 K), \quad
    a_k \sim \mathrm{Gamma}(2, 8), \quad
    H_{kj} \sim \mathrm{Gamma}\!\big(a_k,\; a_k / (\pi_k N_j)\big), \quad
    X_{ij} \sim \mathrm{Poisson}\big((W H)_{ij}\big)

with :math:`N_j` the sample's observed total and :math:`W` the reference (columns normalised to
sum to 1, so :math:`H` is in counts). :math:`\pi_k` is signature *k*'s typical share of a sample
and :math:`a_k` how evenly it is spread over samples; both are learned across the cohort, so a
signature no sample needs shrinks towards zero everywhere while one that is common keeps its
weight. Exposures are sampled non-centred, :math:`H_{kj} = g_{kj}\,\pi_k N_j / a_k` with
:math:`g_{kj} \sim \mathrm{Gamma}(a_k, 1)`, which removes the funnel between :math:`\pi_k` and
the exposures that a centred parameterisation gives NUTS.

Two stages (``refine=True``, the default): the fit over every reference part gives the presence
probabilities; the exposures and their intervals come from a second fit of each sample without
the parts it clearly lacks (share below 1% with posterior probability above 1/2), which stops a
flat signature leaking counts into dozens of absent ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value
from scipy.optimize import linear_sum_assignment, nnls

from .data import Data, prepare
from .inference.common import numerics
from .posterior import Fit, cosine_matrix

__all__ = [
    "REFIT_METHODS",
    "Calls",
    "decompose",
    "match",
    "program_summary",
    "program_usage",
    "refit",
]

REFIT_METHODS = ("nuts", "svi")
DEFAULT_REFIT_METHOD = "nuts"
# Cohort-level priors. Sparser than the first choice (share Gamma(0.5, K/2), shape Gamma(2, 4)):
# on PCAWG-like catalogues a flat signature (SBS5) leaks ~12% of the counts into dozens of
# absent ones, which pulls the active exposures below their intervals; these priors leak less
# (experiments/results/calling.md).
SHARE_SHAPE, SHAPE_SHAPE, SHAPE_RATE = 0.1, 2.0, 8.0


# ------------------------------------------------------------------------ validation helpers
def _as_reference(signatures, data: Data, name: str = "signatures") -> pd.DataFrame:
    """Validate a reference (n_features, K) and align its rows to ``data``'s features.

    Returns a DataFrame indexed like ``data.feature_names`` whose columns sum to 1.
    """
    if isinstance(signatures, Fit):
        signatures = signatures.W
    if isinstance(signatures, pd.DataFrame):
        bad = [c for c, dtype in signatures.dtypes.items()
               if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)]
        if bad:
            raise TypeError(f"{name} has non-numeric columns {bad[:5]}; pass only the numeric "
                            "matrix (features as rows, one column per reference part).")
        frame = signatures.astype(np.float64)
        if data.has_labels:
            frame = _align_rows(frame, data.feature_names, name)
        elif frame.shape[0] != data.shape[0]:
            raise ValueError(f"{name} has {frame.shape[0]} rows but X has {data.shape[0]} "
                             "features; give one row per feature of X.")
        else:
            frame = frame.set_axis(data.feature_names, axis=0)
    else:
        if isinstance(signatures, (str, bytes)) or not hasattr(signatures, "__array__") \
                and not isinstance(signatures, list):
            raise TypeError(f"{name} must be a DataFrame or 2-D array (features × parts), got "
                            f"{type(signatures).__name__}.")
        arr = np.asarray(signatures)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) \
                or np.iscomplexobj(arr):
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (features × parts), got shape {arr.shape}.")
        if arr.shape[0] != data.shape[0]:
            raise ValueError(f"{name} has {arr.shape[0]} rows but X has {data.shape[0]} "
                             "features; give one row per feature of X.")
        frame = pd.DataFrame(arr.astype(np.float64), index=data.feature_names)
    values = frame.to_numpy()
    if frame.shape[1] == 0:
        raise ValueError(f"{name} has no columns; give at least one reference part.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values; reference parts must be "
                         "finite.")
    if (values < 0).any():
        raise ValueError(f"{name} contains negative values (min {values.min():g}); reference "
                         "parts must be non-negative.")
    totals = values.sum(axis=0)
    if (totals <= 0).any():
        empty = list(frame.columns[totals <= 0][:5])
        raise ValueError(f"{name} has all-zero columns {empty}; drop them.")
    if frame.columns.has_duplicates:
        raise ValueError(f"{name} has duplicate column names "
                         f"{list(frame.columns[frame.columns.duplicated()][:5])}; make them unique.")
    return frame / totals


def _align_rows(frame: pd.DataFrame, features: pd.Index, name: str) -> pd.DataFrame:
    """Reorder ``frame``'s rows to ``features``; refuse a mismatch with the labels that differ."""
    index = frame.index.astype(str)
    wanted = pd.Index(features).astype(str)
    if index.has_duplicates:
        raise ValueError(f"{name} has duplicate row labels {list(index[index.duplicated()][:5])}.")
    missing = wanted.difference(index)
    extra = index.difference(wanted)
    if len(missing) or len(extra):
        raise ValueError(
            f"{name}'s rows do not match X's features: {len(missing)} of X's features are "
            f"missing from {name} (e.g. {list(missing[:3])}) and {len(extra)} rows of {name} are "
            f"not features of X (e.g. {list(extra[:3])}). Give {name} one row per feature of X, "
            "labelled the same way (any order); for SBS96 data, bnmf.datasets.to_sbs96 puts "
            "both in the canonical channel order."
        )
    return frame.set_axis(index, axis=0).loc[wanted].set_axis(features, axis=0)


def _check_prob(prob, name="prob") -> float:
    if isinstance(prob, bool) or not isinstance(prob, (int, float, np.floating)) \
            or not 0 < prob < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {prob!r}.")
    return float(prob)


# ------------------------------------------------------------------------------ the model
def refit_model(X, mask, W, totals, support=None, share_shape=SHARE_SHAPE,
                shape_shape=SHAPE_SHAPE, shape_rate=SHAPE_RATE):
    """NumPyro model of X (n_features, n_samples) given fixed W (n_features, K).

    Sites: ``share`` (K,), ``shape`` (K,), ``g`` (n_samples, K) and the deterministic ``H``
    (n_samples, K) in counts; see the module docstring for the priors. ``support``
    (n_samples, K) of bool, optional, holds exposures outside it at exactly zero.
    """
    n_samples = X.shape[1]
    K = W.shape[1]
    with numpyro.plate("component", K, dim=-1):
        share = numpyro.sample("share", dist.Gamma(share_shape, share_shape * K))
        shape = numpyro.sample("shape", dist.Gamma(shape_shape, shape_rate))
    with numpyro.plate("observation", n_samples, dim=-1):
        g = numpyro.sample("g", dist.Gamma(shape, 1.0).expand([n_samples, K]).to_event(1))
        H_T = g * share * totals[:, None] / shape
        if support is not None:
            H_T = jnp.where(support, H_T, 0.0)
        H_T = numpyro.deterministic("H", H_T)
        rate = jnp.maximum(H_T @ W.T, jnp.finfo(H_T.dtype).tiny)
        numpyro.sample("X", dist.Poisson(rate).mask(mask.T).to_event(1), obs=X.T)


def _start(X, mask, W, totals, n_iter: int = 300):
    """Starting values: exposures from KL multiplicative updates with W fixed, floored."""
    Mf = mask.astype(X.dtype)

    def step(H, _):
        rate = jnp.maximum(W @ H, jnp.finfo(H.dtype).tiny)
        return H * (W.T @ (Mf * X / rate)) / jnp.maximum(W.T @ Mf, jnp.finfo(H.dtype).tiny), None

    K = W.shape[1]
    H0 = jnp.broadcast_to(totals / K, (K, X.shape[1])).astype(X.dtype)
    H, _ = jax.lax.scan(step, H0, None, length=n_iter)
    H = jnp.maximum(H, 1e-3 * totals / K)          # NUTS cannot start at an exact zero
    share = jnp.mean(H / totals, axis=1)
    shape = jnp.full((K,), 0.5, X.dtype)
    g = (H * shape[:, None] / (share[:, None] * totals)).T
    return {"share": share, "shape": shape, "g": g}


# ------------------------------------------------------------------------------ the calls
@dataclass(frozen=True)
class Calls:
    """Exposures of known parts with their posterior, from :func:`refit`.

    Attributes
    ----------
    draws : ndarray of shape (n_draws, K, n_samples)
        Posterior draws of the exposures, in counts (of the refined fit: see :func:`refit`).
    screening_draws : ndarray of shape (n_draws, K, n_samples)
        Draws of the screening fit over every part, which give the presence probabilities.
    signatures : pandas.Index
        Names of the K reference parts.
    observation_names : pandas.Index
    has_labels : bool
        Whether outputs are DataFrames (X or the reference carried labels).
    info : dict
        Method, run time, divergences (NUTS) and the learned cohort shares.
    """

    draws: np.ndarray
    screening_draws: np.ndarray
    signatures: pd.Index
    observation_names: pd.Index
    has_labels: bool = True
    info: dict = field(default_factory=dict)

    def _frame(self, value):
        if not self.has_labels:
            return value
        return pd.DataFrame(value, index=self.signatures, columns=self.observation_names)

    @property
    def exposures(self):
        """Posterior mean exposures (K, n_samples), in counts."""
        return self._frame(self.draws.mean(axis=0))

    @property
    def fractions(self):
        """Posterior mean share of each sample's counts due to each part (K, n_samples)."""
        return self._frame(self._fraction_draws().mean(axis=0))

    def _fraction_draws(self, draws=None) -> np.ndarray:
        draws = self.draws if draws is None else draws
        total = draws.sum(axis=1, keepdims=True)
        return draws / np.maximum(total, np.finfo(draws.dtype).tiny)

    def interval(self, prob: float = 0.9):
        """Equal-tailed ``prob`` credible interval of the exposures: (lower, upper), each
        shaped like :attr:`exposures`."""
        prob = _check_prob(prob)
        lower, upper = np.quantile(self.draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return self._frame(lower), self._frame(upper)

    def probability(self, min_fraction: float = 0.05):
        """Posterior probability that each part accounts for at least ``min_fraction`` of the
        sample's counts (K, n_samples)."""
        min_fraction = _check_prob(min_fraction, "min_fraction")
        shares = self._fraction_draws(self.screening_draws)
        return self._frame((shares >= min_fraction).mean(axis=0))

    def active(self, min_fraction: float = 0.05, prob: float = 0.95):
        """True where P(part's share of the sample ≥ ``min_fraction``) ≥ ``prob`` (K, n_samples).

        The probability itself is :meth:`probability`; :meth:`table` has both.
        """
        prob = _check_prob(prob)
        return self.probability(min_fraction) >= prob

    def table(self, prob: float = 0.9, min_fraction: float = 0.05,
              active_prob: float = 0.95) -> pd.DataFrame:
        """One row per (observation, part): exposure, interval, share, presence probability,
        call."""
        lower, upper = self.interval(prob)
        columns = {"exposure": self.exposures, "lower": lower, "upper": upper,
                   "fraction": self.fractions, "probability": self.probability(min_fraction)}
        long = {name: pd.DataFrame(np.asarray(value), index=self.signatures,
                                   columns=self.observation_names).T.stack()
                for name, value in columns.items()}
        out = pd.DataFrame(long)
        out.index.names = ["observation", "signature"]
        out["active"] = out["probability"] >= _check_prob(active_prob, "active_prob")
        return out.reset_index()

    def __repr__(self) -> str:
        return (f"<bnmf.Calls method={self.info.get('method')!r} signatures={len(self.signatures)}"
                f" observations={len(self.observation_names)} draws={self.draws.shape[0]}>")


def refit(X, signatures, model: str = "poisson", method: str | None = None, seed: int = 0,
          mask=None, *, missing: str = "error", num_warmup: int = 300, num_samples: int = 300,
          num_chains: int = 1, target_accept: float = 0.95, max_tree_depth: int = 7,
          svi_steps: int = 3000, learning_rate: float = 0.02, refine: bool = True,
          refine_fraction: float = 0.01, dtype: str = "float32", progress: bool = False
          ) -> Calls:
    r"""Infer exposures of fixed reference parts, with a presence probability for each.

    Parameters
    ----------
    X : array-like of shape (n_features, n_samples), DataFrame, sparse matrix or AnnData
        Counts, features as rows (e.g. 96 SBS channels × tumours).
    signatures : DataFrame or array of shape (n_features, K), or a Fit
        The reference parts, kept fixed. A DataFrame's index must hold exactly X's feature
        labels, in any order (they are matched by label); an array must have X's row order.
        Columns are rescaled to sum to 1, so exposures are in counts.
    model : {"poisson"}
        Likelihood; refitting is implemented for counts.
    method : {"nuts", "svi"}, optional
        ``"nuts"`` (default): NUTS on the hierarchical model, the calibrated choice.
        ``"svi"``: mean-field (log-normal) variational approximation of the same model; faster,
        with intervals that are too narrow (see ``experiments/results/calling.md``).
    seed : int
    mask : array-like of bool, optional
        True where X is observed.
    num_warmup, num_samples, num_chains, target_accept, max_tree_depth
        NUTS settings (chains run one after another).
    svi_steps, learning_rate
        SVI settings (Adam); 1,000 draws are taken from the fitted guide.
    refine : bool
        Two stages (default). The *screening* fit over every part gives the presence
        probabilities. Each sample's exposures and intervals then come from a second fit in
        which the parts with P(share ≥ ``refine_fraction``) < 1/2 are held at zero (plus, always,
        the sample's most probable part). Without it a flat signature (SBS5) leaks ~10% of the
        counts into dozens of similar absent ones, and the active exposures fall below their
        intervals: 90% coverage 0.75 with one stage, 0.85 with two on PCAWG-like catalogues,
        with ~1 NUTS divergence instead of ~80 (``experiments/results/calling.md``).
    refine_fraction : float
        Share below which a part is dropped from a sample's refined fit (when it is below it
        with posterior probability above 1/2).
    dtype : {"float32", "float64"}

    Returns
    -------
    Calls
        ``exposures`` (K, n_samples), ``interval(prob)``, ``probability(min_fraction)``,
        ``active(min_fraction, prob)``, ``table()``.

    Examples
    --------
    >>> import numpy as np, bnmf
    >>> rng = np.random.default_rng(0)
    >>> W = rng.dirichlet(np.ones(20), 3).T               # 20 features × 3 parts
    >>> X = rng.poisson(W @ np.array([[300.0] * 8, [100.0] * 8, [0.0] * 8]))
    >>> calls = bnmf.refit(X, W, num_warmup=100, num_samples=100)
    >>> calls.exposures.shape
    (3, 8)
    """
    if model != "poisson":
        raise ValueError(f"refit supports model='poisson' (counts), got {model!r}.")
    method = DEFAULT_REFIT_METHOD if method is None else method
    if method not in REFIT_METHODS:
        raise ValueError(f"method must be one of {REFIT_METHODS} or None, got {method!r}.")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    for name, value in (("num_warmup", num_warmup), ("num_samples", num_samples),
                        ("num_chains", num_chains), ("svi_steps", svi_steps),
                        ("max_tree_depth", max_tree_depth)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    _check_prob(target_accept, "target_accept")
    refine_fraction = _check_prob(refine_fraction, "refine_fraction")
    if not isinstance(refine, (bool, np.bool_)):
        raise TypeError(f"refine must be True or False, got {refine!r}.")
    data = prepare(X, mask=mask, missing=missing, counts=True)
    reference = _as_reference(signatures, data)
    has_labels = data.has_labels or isinstance(signatures, pd.DataFrame)
    start = time.perf_counter()
    with numerics(dtype):
        X_j = jnp.asarray(data.values, dtype=dtype)
        mask_j = jnp.asarray(data.mask)
        W_j = jnp.asarray(reference.to_numpy(), dtype=dtype)
        totals = jnp.maximum(jnp.sum(X_j, axis=0), 1.0)   # an all-zero sample still has a scale
        init = _start(X_j, mask_j, W_j, totals)
        key_screen, key_refine = jax.random.split(jax.random.PRNGKey(int(seed)))

        def run(args, init, key):
            if method == "nuts":
                return _run_nuts(args, init, key, num_warmup, num_samples, num_chains,
                                 target_accept, max_tree_depth, progress)
            return _run_svi(args, init, key, svi_steps, learning_rate, progress)

        args = (X_j, mask_j, W_j, totals)
        screen, info = run(args, init, key_screen)
        draws = screen
        if refine:
            support = _refined_support(screen["H"], refine_fraction)
            init = {name: jnp.median(screen[name], axis=0) for name in init}
            draws, refined = run(args + (jnp.asarray(support),), init, key_refine)
            info = {**refined, "screening": info, "refine_fraction": refine_fraction,
                    "mean_support": float(support.sum(axis=1).mean())}
    info.update(method=method, refine=bool(refine), seconds=time.perf_counter() - start)
    as_numpy = lambda d: np.swapaxes(np.asarray(d["H"], dtype=np.float64), -1, -2)
    return Calls(draws=as_numpy(draws), screening_draws=as_numpy(screen),
                 signatures=pd.Index(reference.columns),
                 observation_names=data.observation_names, has_labels=has_labels,
                 info=_with_shares(info, draws, reference.columns))


def _refined_support(H_draws, min_fraction: float) -> np.ndarray:
    """(n_samples, K) True where P(share ≥ ``min_fraction``) ≥ 1/2, plus each sample's most
    probable part so that no sample is left empty. ``H_draws`` is (n_draws, n_samples, K)."""
    H = np.asarray(H_draws)
    share = H / np.maximum(H.sum(axis=-1, keepdims=True), np.finfo(H.dtype).tiny)
    probability = (share >= min_fraction).mean(axis=0)
    support = probability >= 0.5
    support[np.arange(support.shape[0]), probability.argmax(axis=1)] = True
    return support


def _with_shares(info: dict, draws: dict, names) -> dict:
    info["cohort_share"] = dict(zip(map(str, names),
                                    np.asarray(draws["share"]).mean(axis=0).tolist()))
    return info


def _run_nuts(args, init, key, num_warmup, num_samples, num_chains, target_accept,
              max_tree_depth, progress):
    kernel = NUTS(refit_model, init_strategy=init_to_value(values=init),
                  target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="sequential", progress_bar=bool(progress))
    mcmc.run(key, *args, extra_fields=("diverging", "num_steps"))
    samples = mcmc.get_samples()
    extra = mcmc.get_extra_fields()
    info = {"divergences": int(np.asarray(extra["diverging"]).sum()),
            "mean_leapfrog_steps": float(np.asarray(extra["num_steps"]).mean()),
            "num_chains": num_chains}
    return samples, info


def _run_svi(args, init, key, steps, learning_rate, progress):
    import optax

    guide = AutoNormal(refit_model, init_loc_fn=init_to_value(values=init), init_scale=0.05)
    optimizer = optax.adam(optax.exponential_decay(learning_rate, steps, 0.1))
    svi = SVI(refit_model, guide, optimizer, Trace_ELBO())
    key_fit, key_draw = jax.random.split(key)
    result = svi.run(key_fit, steps, *args, progress_bar=bool(progress))
    draws = guide.sample_posterior(key_draw, result.params, *args, sample_shape=(1000,))
    H = draws["g"] * draws["share"][:, None, :] * args[3][None, :, None] / draws["shape"][:, None, :]
    if len(args) > 4:                                  # the refined fit's support
        H = jnp.where(args[4], H, 0.0)
    losses = np.asarray(result.losses)
    return {**draws, "H": H}, {"final_loss": float(losses[-100:].mean())}


# ------------------------------------------------------------------------------ matching
def _as_matrix(W, name: str) -> pd.DataFrame:
    if isinstance(W, Fit):
        W = W.W
    if isinstance(W, pd.DataFrame):
        return W.astype(np.float64)
    arr = np.asarray(W, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (features × parts), got shape {arr.shape}.")
    return pd.DataFrame(arr)


def _common_rows(W: pd.DataFrame, W_ref: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices on the same rows: by label when both are labelled, else by position."""
    labelled = not isinstance(W.index, pd.RangeIndex) and not isinstance(W_ref.index,
                                                                          pd.RangeIndex)
    if labelled:
        W_ref = _align_rows(W_ref, W.index, "W_ref")
    elif W.shape[0] != W_ref.shape[0]:
        raise ValueError(f"W has {W.shape[0]} features but W_ref has {W_ref.shape[0]}; "
                         "they must describe the same features.")
    for name, frame in (("W", W), ("W_ref", W_ref)):
        values = frame.to_numpy()
        if not np.all(np.isfinite(values)) or (values < 0).any():
            raise ValueError(f"{name} must be finite and non-negative.")
    return W.to_numpy(), W_ref.to_numpy()


def match(W, W_ref) -> pd.DataFrame:
    """One-to-one matching of parts to reference parts by cosine similarity (Hungarian).

    Parameters
    ----------
    W : DataFrame, array of shape (n_features, k), or a Fit
        Parts to name, e.g. de novo signatures (``fit.W``).
    W_ref : DataFrame or array of shape (n_features, m)
        Reference parts. When both are DataFrames their rows are matched by label.

    Returns
    -------
    DataFrame
        One row per matched part (min(k, m) rows), sorted by component: ``component``,
        ``reference``, ``cosine``.
    """
    W, W_ref = _as_matrix(W, "W"), _as_matrix(W_ref, "W_ref")
    A, B = _common_rows(W, W_ref)
    cos = cosine_matrix(A, B)
    rows, cols = linear_sum_assignment(-cos)
    return pd.DataFrame({"component": W.columns[rows], "reference": W_ref.columns[cols],
                         "cosine": cos[rows, cols]})


def decompose(part, W_ref, tolerance: float = 0.01, max_parts: int | None = None
              ) -> pd.DataFrame:
    """Write a part as a sparse non-negative mix of reference parts.

    Non-negative least squares on all references, then backward elimination: the reference
    whose removal lowers the cosine of the reconstruction least is dropped while the cosine
    stays within ``tolerance`` of the full fit (and while more than ``max_parts`` remain).

    Parameters
    ----------
    part : Series or array of shape (n_features,)
    W_ref : DataFrame or array of shape (n_features, m)
    tolerance : float
        Cosine the sparse mix may lose against the NNLS fit on every reference.
    max_parts : int, optional

    Returns
    -------
    DataFrame
        One row per reference kept, by decreasing weight: ``reference``, ``weight`` (summing to
        1); ``attrs["cosine"]`` holds the cosine of the mix with the part.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must lie in [0, 1), got {tolerance!r}.")
    W_ref = _as_matrix(W_ref, "W_ref")
    vector = part.to_frame() if isinstance(part, pd.Series) else pd.DataFrame(
        np.asarray(part, dtype=np.float64).reshape(-1, 1))
    v, B = _common_rows(vector, W_ref)
    v = v[:, 0]
    if not (v > 0).any():
        raise ValueError("part has no positive entry; there is nothing to decompose.")
    B = B / B.sum(axis=0)

    def fit(columns):
        weights, _ = nnls(B[:, columns], v)
        recon = B[:, columns] @ weights
        return weights, float(recon @ v / max(np.linalg.norm(recon) * np.linalg.norm(v),
                                              1e-300))

    kept = list(range(B.shape[1]))
    weights, full = fit(kept)
    kept = [c for c, w in zip(kept, weights) if w > 0]
    while len(kept) > 1:
        cosine, drop = max((fit([c for c in kept if c != d])[1], d) for d in kept)
        too_many = max_parts is not None and len(kept) > max_parts
        if cosine < full - tolerance and not too_many:
            break
        kept.remove(drop)
    weights, cosine = fit(kept)
    order = np.argsort(-weights)
    out = pd.DataFrame({"reference": W_ref.columns[np.asarray(kept)[order]],
                        "weight": weights[order] / weights.sum()})
    out = out[out["weight"] > 0].reset_index(drop=True)
    out.attrs["cosine"] = cosine
    return out


# ------------------------------------------------------------------ programs in single cells
def program_summary(fit: Fit, top: int = 20, threshold: float | None = None) -> pd.DataFrame:
    """Top features of each program with the posterior probability that each loading exceeds
    ``threshold``.

    Parameters
    ----------
    fit : Fit
        A fit with posterior draws (``method="svi"`` or ``"nuts"``), e.g. genes × cells.
    top : int
        Features per program, by posterior mean loading.
    threshold : float, optional
        Loading (columns of W sum to 1) to exceed; default ``1 / n_features``, the loading of a
        program spread evenly over all features.

    Returns
    -------
    DataFrame
        One row per (component, feature): ``component``, ``rank`` (1 = largest), ``feature``,
        ``loading`` (posterior mean), ``lower``, ``upper`` (90% interval) and ``probability``
        (P(loading > threshold)).
    """
    if fit.num_draws < 2:
        raise ValueError("program_summary needs posterior draws; fit with method='svi' or "
                         "'nuts' rather than 'map'.")
    W = fit._draws("W").reshape((-1,) + fit._draws("W").shape[2:])   # (draws, features, K)
    features = _feature_names(fit)
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}.")
    threshold = 1.0 / W.shape[1] if threshold is None else float(threshold)
    if not threshold >= 0:
        raise ValueError(f"threshold must be non-negative, got {threshold!r}.")
    mean = W.mean(axis=0)
    lower, upper = np.quantile(W, [0.05, 0.95], axis=0)
    probability = (W > threshold).mean(axis=0)
    rows = []
    for k in range(W.shape[2]):
        for rank, i in enumerate(np.argsort(-mean[:, k])[:top], start=1):
            rows.append((k, rank, features[i], mean[i, k], lower[i, k], upper[i, k],
                         probability[i, k]))
    out = pd.DataFrame(rows, columns=["component", "rank", "feature", "loading", "lower", "upper",
                                      "probability"])
    out.attrs["threshold"] = threshold
    return out


def program_usage(fit: Fit, prob: float = 0.9, normalize: bool = True):
    """Per-sample (per-cell) usage of each program with its credible interval.

    Parameters
    ----------
    fit : Fit
    prob : float
        Interval probability.
    normalize : bool
        Usage as each program's share of the cell's total (columns of the mean sum to 1); else
        in the data's units (H).

    Returns
    -------
    (mean, lower, upper) : DataFrames of shape (rank, n_samples)
    """
    prob = _check_prob(prob)
    if fit.num_draws < 2:
        raise ValueError("program_usage needs posterior draws; fit with method='svi' or 'nuts'.")
    H = fit._draws("H").reshape((-1,) + fit._draws("H").shape[2:])   # (draws, K, n)
    if normalize:
        H = H / np.maximum(H.sum(axis=1, keepdims=True), np.finfo(H.dtype).tiny)
    lower, upper = np.quantile(H, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    index = pd.RangeIndex(H.shape[1], name="component")
    columns = _observation_names(fit)
    return tuple(pd.DataFrame(v, index=index, columns=columns) for v in (H.mean(axis=0),
                                                                          lower, upper))


def _feature_names(fit: Fit) -> np.ndarray:
    from .posterior import arviz_group

    return np.asarray(arviz_group(fit.idata, "posterior")["feature"].values)


def _observation_names(fit: Fit) -> pd.Index:
    from .posterior import arviz_group

    return pd.Index(arviz_group(fit.idata, "posterior")["observation"].values)
