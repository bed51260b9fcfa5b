"""``bnmf.fit``: validate, build the model, run inference, wrap the result in a :class:`Fit`."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping

import jax.numpy as jnp

from .data import Data, check_rank, prepare
from .inference import METHODS, Problem
from .inference import ard as _ard  # noqa: F401  (registers the ARD Gibbs sampler)
from .inference.common import numerics, to_device
from .models import MODELS, get_model
from .models.base import capability, check_method, has_capability, supported_methods
from .models.counts import SparseCounts, sparse_counts
from .multiview import fit_multiview
from .options import check_options, check_seed
from .posterior import Fit, build_idata

__all__ = ["default_method", "fit", "fit_data", "run_inference"]

DTYPES = ("float32", "float64")
# NUTS is the only inference whose 90% intervals cover 85-95% of the truth on data simulated
# from the model (experiments/results/calibration.md: 0.86-0.93; SVI 0.39-0.71, CAVI 0.40-0.58),
# so method=None runs it wherever it takes about a minute on 2 cores: up to this many latent
# entries of W and H and this many entries of X.
NUTS_MAX_LATENT = 1_000
NUTS_MAX_ENTRIES = 25_000
# Methods that take SciPy sparse counts in O(nnz) form where the model has "sparse_counts".
SPARSE_METHODS = ("map", "cavi")


# The count model ``model=None`` fits, and the one it falls back to where a method needs a
# fixed-shape conjugate prior (MAP: the learned shapes have no joint mode; CAVI: no closed
# form). Learned shapes and rates per component cover 0.90 of W and H on sparse Dirichlet(0.1)
# parts where shape 1 covered 0.57 of W (experiments/results/calibration_gibbs.md).
DEFAULT_MODEL = "poisson-hierarchical"
CONJUGATE_MODEL = "poisson"
CONJUGATE_METHODS = ("map", "cavi")


def default_model(method: str | None, options: dict) -> tuple[str, str]:
    """The model ``model=None`` fits, and why (recorded in ``fit.info["model_choice"]``):
    :data:`DEFAULT_MODEL` (``"poisson-hierarchical"``), except the conjugate ``"poisson"``
    model where ``method`` is ``"map"`` or ``"cavi"``, where ``method=None`` comes with options
    only CAVI or MAP accept (e.g. ``batch_size``), or where the ``"poisson"`` model's own
    hyperparameters (``a``, ``rate_W``, ``rate_H``) are given."""
    fields = {f.name for f in dataclasses.fields(MODELS[CONJUGATE_MODEL])}
    given = sorted(set(options) & fields)
    if given:
        return CONJUGATE_MODEL, f"poisson: its hyperparameters {given} were given"
    if method in CONJUGATE_METHODS:
        return CONJUGATE_MODEL, (f"poisson: method={method!r} needs the fixed-shape conjugate "
                                 "prior (the learned shapes have no MAP mode and no CAVI)")
    samplers = ("nuts", "gibbs", "svi")
    if method is None and not any(_accepts_model_options(m, options) for m in samplers):
        return CONJUGATE_MODEL, "poisson: the options given are accepted only by MAP or CAVI"
    return DEFAULT_MODEL, ("poisson-hierarchical: shapes and rates learned per component, so "
                           "sparse or flat parts and skewed or flat exposures get their own "
                           "prior (experiments/results/calibration_gibbs.md)")


def _accepts_model_options(method: str, options: dict) -> bool:
    """Whether ``method`` on the default model accepts ``options`` (its hyperparameters aside)."""
    model_fields = {f.name for f in dataclasses.fields(MODELS[DEFAULT_MODEL])}
    rest = {k: v for k, v in options.items() if k not in model_fields}
    return set(rest) <= _inference_options(method, MODELS[DEFAULT_MODEL]())


def _split_options(model, options: dict):
    """Split ``**options`` into model hyperparameters and inference options."""
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}.")
        model_class = MODELS[model]
    elif dataclasses.is_dataclass(model) and not isinstance(model, type):
        model_class = type(model)  # get_model refuses options given with an object
    else:
        return {}, options
    model_fields = {f.name for f in dataclasses.fields(model_class)}
    model_options = {k: v for k, v in options.items() if k in model_fields}
    return model_options, {k: v for k, v in options.items() if k not in model_fields}


def _inference(method: str, model=None):
    """The inference function of ``method`` for ``model``: a Gibbs sampler is the model's own
    ``gibbs_sweep`` capability (e.g. :func:`bnmf.inference.ard.fit_ard_gibbs`)."""
    if method == "gibbs" and model is not None and has_capability(model, "gibbs_sweep"):
        return capability(model, "gibbs_sweep")
    return METHODS[method]


def _inference_options(method: str, model=None) -> set:
    """The keyword options ``METHODS[method]`` accepts (beyond the problem and the seed)."""
    return set(inspect.signature(_inference(method, model)).parameters) - {"problem", "seed"}


def _check_inference_options(method: str, options: dict, model=None) -> None:
    accepted = _inference_options(method, model)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method={method!r}; it accepts {sorted(accepted)} "
            "and the model's hyperparameters."
        )


def _problem_values(data: Data, model, method: str, dtype: str):
    """X for the Problem: SciPy sparse input goes to the O(nnz) paths (``map`` and ``cavi`` of
    a model with the ``"sparse_counts"`` capability, ``gibbs`` of a model with a Gibbs
    sampler) as SparseCounts, everything else as a dense array."""
    if data.sparse is not None and (
            (method in SPARSE_METHODS and has_capability(model, "sparse_counts"))
            or (method == "gibbs" and "gibbs" in supported_methods(model))):
        return sparse_counts(data.sparse, dtype=dtype, hidden=data.hidden)
    return to_device(data.values, dtype)


def _accepts(method: str, options: dict) -> bool:
    return set(options) <= _inference_options(method)


def default_method(model, shape: tuple[int, int], rank: int, options: dict,
                   fixed_W: bool = False) -> tuple[str, str]:
    """The inference ``method=None`` runs, and why (recorded in ``fit.info["method_choice"]``).

    NUTS (calibrated intervals) where the problem is small enough for it: at most
    ``NUTS_MAX_LATENT`` latent entries ((n_features + n_samples) · rank, or rank · n_samples
    with W fixed) and ``NUTS_MAX_ENTRIES`` entries of X, for models whose NUTS calibration was
    measured (``nuts_calibrated``: ``poisson``, ``gaussian``, ``poisson-hierarchical``). Above
    that, the exact Gibbs sampler where the model has one (``poisson``,
    ``poisson-hierarchical``: :func:`bnmf.inference.gibbs.fit_gibbs`; ``gaussian``:
    :func:`bnmf.inference.gibbs_gaussian.fit_gaussian_gibbs`; ``negbin``, at every size since
    its NUTS calibration was not measured: :func:`bnmf.inference.gibbs_negbin.fit_negbin_gibbs`;
    ``ard``, ``refit``); otherwise the fastest
    variational posterior: closed-form CAVI where the model has it (the conjugate ``poisson``
    model; when options only CAVI accepts are given, e.g. ``batch_size``), SVI for the others;
    their intervals are narrower than calibrated.
    Options meant for one method (e.g. ``max_steps`` for SVI) pick a method that accepts them.
    """
    n_features, n_samples = shape
    latent = rank * n_samples + (0 if fixed_W else rank * n_features)
    name = getattr(model, "name", None)
    calibrated = getattr(model, "nuts_calibrated", False)
    if (calibrated and latent <= NUTS_MAX_LATENT
            and n_features * n_samples <= NUTS_MAX_ENTRIES and _accepts("nuts", options)):
        return "nuts", (f"nuts: small problem ({latent} latent entries, {n_features * n_samples} "
                        "data entries), calibrated intervals")
    why = (f"{latent} latent entries, {n_features * n_samples} data entries: too large for NUTS "
           "by default" if calibrated else f"model {name!r}")
    if "gibbs" in supported_methods(model) and _accepts("gibbs", options):
        return "gibbs", (f"gibbs: {why}; exact Gibbs sampler of the model's posterior "
                         "(experiments/results/calibration_gibbs.md); R-hat and ESS in fit.info")
    if "cavi" in supported_methods(model) and _accepts("cavi", options):
        return "cavi", (f"cavi: {why}; closed-form variational posterior, intervals narrower "
                        "than calibrated (experiments/results/calibration.md)")
    return "svi", (f"svi: {why}; variational posterior, intervals narrower than calibrated "
                   "(experiments/results/calibration.md)")


def run_inference(data: Data, rank: int, model, method: str | None = None, seed: int = 0,
                  dtype: str = "float32", W_fixed=None, **options):
    """Validate the options, resolve ``model`` on ``data`` and run ``method``'s inference
    (``None``: the model's preferred method, else :func:`default_method`'s choice).

    Returns ``(raw, resolved, method)``: the :class:`~bnmf.inference.common.RawPosterior`
    (``info["method_choice"]`` says why when the method was chosen), the resolved model and the
    method that ran. :func:`fit_data` wraps it in a :class:`Fit`; :func:`bnmf.refit` reads the
    raw draws of its own model."""
    choice = None
    if method is None and getattr(model, "preferred_method", None):
        method, choice = model.preferred_method       # the model's own calibrated choice
    if method is None:
        method, choice = default_method(model, data.shape, rank, options, W_fixed is not None)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)} or None, got {method!r}.")
    seed = check_seed(seed)
    check_method(model, method)
    _check_inference_options(method, options, model)
    options = check_options(options)
    resolved = model.resolve(data, rank)
    with numerics(dtype):
        values = _problem_values(data, resolved, method, dtype)
        problem = Problem(
            X=values,
            mask=None if isinstance(values, SparseCounts) else to_device(data.mask, bool),
            rank=rank,
            model=resolved,
            W_fixed=None if W_fixed is None else jnp.asarray(W_fixed, dtype=dtype),
        )
        raw = _inference(method, resolved)(problem, seed=int(seed), **options)
    if choice is not None:
        raw = raw._replace(info={**(raw.info or {}), "method_choice": choice})
    return raw, resolved, method


def fit_data(data: Data, rank: int, model, method: str | None = None, seed: int = 0,
             dtype: str = "float32", W_fixed=None, model_choice: str | None = None,
             **options) -> Fit:
    """Fit a validated :class:`~bnmf.data.Data` (the engine behind :func:`fit`).

    ``model`` is a model object (unresolved); ``W_fixed`` (n_features, rank) keeps W fixed;
    ``method=None`` runs :func:`default_method`'s choice; ``model_choice`` (why the model was
    chosen, when it was) goes to ``fit.info["model_choice"]``.
    """
    raw, resolved, method = run_inference(data, rank, model, method, seed=seed, dtype=dtype,
                                          W_fixed=W_fixed, **options)
    if model_choice is not None:
        raw = raw._replace(info={**(raw.info or {}), "model_choice": model_choice})
    meta = {"model": resolved.name, "model_params": dataclasses.asdict(resolved),
            "method": method, "seed": int(check_seed(seed)), "dtype": dtype}
    return Fit(build_idata(raw, data, rank, meta))


def fit(X, rank: int, model=None, method: str | None = None, seed: int = 0, mask=None, *,
        missing: str = "error", dtype: str = "float32", **options) -> Fit:
    r"""Fit a Bayesian NMF ``X ≈ W H`` and return its posterior.

    Parameters
    ----------
    X : array-like of shape (n_features, n_samples), DataFrame, SciPy sparse matrix or AnnData
        Non-negative data, features as rows (AnnData, cells × genes, is transposed). Labels of a
        DataFrame or AnnData become the coordinates of the result.
    rank : int
        Number of components, 1 ≤ rank ≤ min(n_features, n_samples).
    model : str, a model object or None
        A name of ``bnmf.models.MODELS``: ``"poisson-hierarchical"``
        (:class:`~bnmf.models.HierarchicalPoissonGamma`, counts, shapes and rates learned per
        component), ``"poisson"`` (:class:`~bnmf.models.PoissonGamma`, counts, fixed shape),
        ``"gaussian"`` (:class:`~bnmf.models.GaussianHalfNormal`), ``"horseshoe"``
        (:class:`~bnmf.models.Horseshoe`, sparse parts; ``likelihood="poisson"|"gaussian"``),
        ``"negbin"``, ``"ard"``, ... None (default): ``"poisson-hierarchical"``, or
        ``"poisson"`` for ``method="map"``/``"cavi"`` and where its hyperparameters are given
        (:func:`default_model`; ``fit.info["model_choice"]`` says which and why).
    method : {"map", "svi", "nuts", "cavi", "gibbs"}, optional
        Point estimate, variational posterior (SVI; mean-field or low-rank guide), NUTS (the
        reference posterior, small problems), CAVI (closed-form variational posterior of the
        ``poisson`` model; ``batch_size=`` for minibatches) or Gibbs (exact latent-count
        sampler of the ``poisson`` and ``poisson-hierarchical`` models; ``num_chains``,
        ``num_warmup``, ``num_samples``, ``thin``). None picks the fastest calibrated
        choice: NUTS on small problems of the ``poisson`` and ``gaussian`` models, Gibbs on
        larger ``poisson`` problems, else SVI, whose intervals are narrower than calibrated; see
        :func:`default_method` and ``fit.info["method_choice"]``.
    seed : int
        Same seed, same result.
    mask : array-like of bool, shape like X, optional
        True where observed; unobserved entries never enter the likelihood.
    missing : {"error", "mask"}
        With ``"mask"``, NaN in X marks unobserved entries.
    dtype : {"float32", "float64"}
    **options
        Model hyperparameters (e.g. ``a=0.5`` for ``"poisson"``, ``likelihood="gaussian"`` for
        ``"horseshoe"``) and options of the inference function (e.g. ``max_steps``,
        ``num_draws``, ``guide="lowrank"`` for SVI; ``num_samples``, ``num_chains`` for NUTS;
        ``batch_size``, ``epochs`` for minibatch CAVI; ``devices`` to shard samples over
        devices (MAP, CAVI); ``warmup`` for the Poisson MAP's least-squares warm-up (0 turns
        it off); ``max_iter``, ``init`` for all).

    Returns
    -------
    Fit
        ``fit.W`` (n_features, rank), ``fit.H`` (rank, n_samples), ``fit.idata``, ...

    Examples
    --------
    >>> import numpy as np, bnmf
    >>> X = np.random.default_rng(0).poisson(5.0, size=(30, 40))
    >>> result = bnmf.fit(X, rank=2, method="map")
    >>> result.W.shape, result.H.shape
    ((30, 2), (2, 40))
    """
    if isinstance(X, Mapping):  # several views sharing the sample axis: joint multi-view NMF
        model = "poisson" if model is None else model   # the joint model's own default
        return fit_multiview(X, rank, model=model, method=method, seed=seed, mask=mask,
                             missing=missing, dtype=dtype, **options)
    model_choice = None
    if model is None:
        model, model_choice = default_model(method, options)
    model_options, inference_options = _split_options(model, options)
    model_obj = get_model(model, **model_options)
    data = prepare(X, mask=mask, missing=missing, counts=model_obj.needs_counts)
    rank = check_rank(rank, data.shape)
    return fit_data(data, rank, model_obj, method, seed=seed, dtype=dtype,
                    model_choice=model_choice, **inference_options)
